/*
 * unix_listen_pending: listening unix sockets with connections not yet accepted. A stream
 * listener on a relative path has two connections waiting: the first from a client bound
 * to an abstract name, the second from an unnamed client that shut down for writing; a
 * seqpacket listener on an abstract name has one waiting; a third listener has none.
 * After restore each listener accepts its waiting connections in the order they came
 * (told apart by the client's name), the connections carry data both ways, the
 * shut-down one reads end-of-file, and nothing more is waiting.
 */
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "zdtmtst.h"

static socklen_t set_name(struct sockaddr_un *a, const char *name, bool abstract)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	strncpy(a->sun_path + abstract, name, sizeof(a->sun_path) - 2);
	return offsetof(struct sockaddr_un, sun_path) + abstract + strlen(name) + !abstract;
}

static int listener(int type, const struct sockaddr_un *a, socklen_t len, int backlog)
{
	int s = socket(AF_UNIX, type, 0);

	if (s < 0 || bind(s, (const struct sockaddr *)a, len) || listen(s, backlog))
		return -1;
	return s;
}

static int connected(int type, const struct sockaddr_un *to, socklen_t len,
		     const struct sockaddr_un *own, socklen_t own_len)
{
	int s = socket(AF_UNIX, type, 0);

	if (s < 0 || (own && bind(s, (const struct sockaddr *)own, own_len)) ||
	    connect(s, (const struct sockaddr *)to, len))
		return -1;
	return s;
}

/* accept the next waiting connection; its peer is named `own` (NULL: unnamed) */
static int accept_from(int lsn, const struct sockaddr_un *own, socklen_t own_len, const char *what)
{
	struct sockaddr_un a;
	socklen_t len = sizeof(a);
	int s = accept4(lsn, (struct sockaddr *)&a, &len, SOCK_NONBLOCK);

	if (s < 0)
		return fail("%s: no connection waiting", what), -1;
	if (own ? len != own_len || memcmp(&a, own, len) : len > offsetof(struct sockaddr_un, sun_path))
		return fail("%s: accepted a connection from another client (name len %u)", what, len),
		       -1;
	return s;
}

static int talk(int a, int b, const char *what)
{
	char c;

	if (send(a, "x", 1, 0) != 1 || recv(b, &c, 1, MSG_DONTWAIT) != 1 || c != 'x' ||
	    send(b, "y", 1, 0) != 1 || recv(a, &c, 1, MSG_DONTWAIT) != 1 || c != 'y')
		return fail("%s: the connection does not carry data both ways", what);
	return 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_un path, seq, idle, named;
	socklen_t path_len, seq_len, idle_len, named_len;
	int lsn, slsn, ilsn, c1, c2, c3, a1, a2, a3;
	char buf[64], c;

	test_init(argc, argv);

	path_len = set_name(&path, "unix_listen_pending.sock", false);
	snprintf(buf, sizeof(buf), "unix_listen_pending-%d-seq", getpid());
	seq_len = set_name(&seq, buf, true);
	snprintf(buf, sizeof(buf), "unix_listen_pending-%d-idle", getpid());
	idle_len = set_name(&idle, buf, true);
	snprintf(buf, sizeof(buf), "unix_listen_pending-%d-client", getpid());
	named_len = set_name(&named, buf, true);

	lsn = listener(SOCK_STREAM, &path, path_len, 3);
	slsn = listener(SOCK_SEQPACKET, &seq, seq_len, 1);
	ilsn = listener(SOCK_STREAM, &idle, idle_len, 7);
	c1 = connected(SOCK_STREAM, &path, path_len, &named, named_len);
	c2 = connected(SOCK_STREAM, &path, path_len, NULL, 0);
	c3 = connected(SOCK_SEQPACKET, &seq, seq_len, NULL, 0);
	if (lsn < 0 || slsn < 0 || ilsn < 0 || c1 < 0 || c2 < 0 || c3 < 0 || shutdown(c2, SHUT_WR) ||
	    fcntl(lsn, F_SETFL, O_NONBLOCK) || fcntl(slsn, F_SETFL, O_NONBLOCK) ||
	    fcntl(ilsn, F_SETFL, O_NONBLOCK)) {
		pr_perror("setup");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if ((a1 = accept_from(lsn, &named, named_len, "stream, first")) < 0 ||
	    (a2 = accept_from(lsn, NULL, 0, "stream, second")) < 0 ||
	    (a3 = accept_from(slsn, NULL, 0, "seqpacket")) < 0)
		return 1;
	if (accept(lsn, NULL, NULL) >= 0 || accept(slsn, NULL, NULL) >= 0 ||
	    accept(ilsn, NULL, NULL) >= 0)
		return fail("more connections waiting than were made");
	if (talk(c1, a1, "stream, first") || talk(c3, a3, "seqpacket"))
		return 1;
	if (recv(a2, &c, 1, MSG_DONTWAIT) != 0)
		return fail("the client shut down for writing: no end-of-file");
	if (send(a2, "z", 1, 0) != 1 || recv(c2, &c, 1, MSG_DONTWAIT) != 1 || c != 'z')
		return fail("the half-closed connection does not carry data the other way");
	return pass();
}
