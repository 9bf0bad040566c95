/*
 * unix_named: unix sockets with names. A stream listener bound to a relative path with a
 * connection accepted from it (the client bound to an abstract name), data waiting both
 * ways and the client shut down for writing; a seqpacket listener on an abstract name with
 * one accepted connection and messages waiting; a datagram socket bound to an absolute
 * path with datagrams queued from a named sender connected to it one way and from an
 * unnamed sender since closed; a stream pair whose one end is shut down for reading.
 * After restore: names (getsockname/getpeername) as bound, the data once and in order with
 * its senders, the shutdown states, and each listener still accepts new connections.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "zdtmtst.h"

struct name {
	struct sockaddr_un a;
	socklen_t len;
};

static void set_name(struct name *n, const char *path, bool abstract)
{
	memset(n, 0, sizeof(*n));
	n->a.sun_family = AF_UNIX;
	strncpy(n->a.sun_path + abstract, path, sizeof(n->a.sun_path) - 2);
	/* the kernel counts a path name's terminating NUL in its length, whatever was bound */
	n->len = offsetof(struct sockaddr_un, sun_path) + abstract + strlen(path) + !abstract;
}

static int sock_at(int type, const struct name *n)
{
	int s = socket(AF_UNIX, type, 0);

	if (s < 0 || (n && bind(s, (const struct sockaddr *)&n->a, n->len)))
		return -1;
	return s;
}

/* the socket's own (peer 0) or its peer's (peer 1) name is n */
static int name_is(int s, int peer, const struct name *n, const char *what)
{
	struct sockaddr_un a;
	socklen_t len = sizeof(a);
	int r = peer ? getpeername(s, (struct sockaddr *)&a, &len) :
		       getsockname(s, (struct sockaddr *)&a, &len);

	if (r || len != n->len || memcmp(&a, &n->a, len))
		return fail("%s: %s name differs (len %u, want %u)", what, peer ? "peer" : "own",
			    len, n->len);
	return 0;
}

static int recv_is(int fd, const char *want, const struct name *from, const char *what)
{
	char buf[64];
	struct sockaddr_un a;
	socklen_t alen = sizeof(a);
	ssize_t n = recvfrom(fd, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&a, &alen);

	if (n != (ssize_t)strlen(want) || memcmp(buf, want, n))
		return fail("%s: received %zd bytes, expected \"%s\"", what, n, want);
	if (from && (alen != from->len || memcmp(&a, &from->a, alen)))
		return fail("%s: sender address differs (len %u)", what, alen);
	if (!from && alen > offsetof(struct sockaddr_un, sun_path))
		return fail("%s: an unnamed sender has a name now (len %u)", what, alen);
	return 0;
}

static int accepts_new(int lsn, int type, const struct name *n, const char *what)
{
	int c = socket(AF_UNIX, type, 0), a;
	char ch;

	if (c < 0 || connect(c, (const struct sockaddr *)&n->a, n->len))
		return fail("%s: cannot connect to it any more", what);
	a = accept(lsn, NULL, NULL);
	if (a < 0 || send(c, "n", 1, 0) != 1 || recv(a, &ch, 1, 0) != 1 || ch != 'n')
		return fail("%s: a new connection does not work", what);
	close(a);
	close(c);
	return 0;
}

int main(int argc, char **argv)
{
	struct name path, abs_path, client, seq, dg_sender;
	int lsn, cli, acc, slsn, scli, sacc, dg, dgs, tmp, sh[2];
	char cwd[96], buf[128], c;
	struct stat st;

	test_init(argc, argv);

	if (!getcwd(cwd, sizeof(cwd)) || strlen(cwd) > 80) {
		pr_perror("work dir too long for a socket name");
		return 1;
	}
	set_name(&path, "unix_named.stream", false);
	snprintf(buf, sizeof(buf), "%s/unix_named.dgram", cwd);
	set_name(&abs_path, buf, false);
	snprintf(buf, sizeof(buf), "unix_named-%d-client", getpid());
	set_name(&client, buf, true);
	snprintf(buf, sizeof(buf), "unix_named-%d-seq", getpid());
	set_name(&seq, buf, true);
	snprintf(buf, sizeof(buf), "unix_named-%d-sender", getpid());
	set_name(&dg_sender, buf, true);

	lsn = sock_at(SOCK_STREAM, &path);
	cli = sock_at(SOCK_STREAM, &client);
	slsn = sock_at(SOCK_SEQPACKET, &seq);
	scli = sock_at(SOCK_SEQPACKET, NULL);
	dg = sock_at(SOCK_DGRAM, &abs_path);
	dgs = sock_at(SOCK_DGRAM, &dg_sender);
	tmp = sock_at(SOCK_DGRAM, NULL);
	if (lsn < 0 || cli < 0 || slsn < 0 || scli < 0 || dg < 0 || dgs < 0 || tmp < 0 ||
	    chmod("unix_named.stream", 0640) || listen(lsn, 4) || listen(slsn, 2) ||
	    connect(cli, (struct sockaddr *)&path.a, path.len) ||
	    (acc = accept(lsn, NULL, NULL)) < 0 ||
	    connect(scli, (struct sockaddr *)&seq.a, seq.len) ||
	    (sacc = accept(slsn, NULL, NULL)) < 0 ||
	    connect(dgs, (struct sockaddr *)&abs_path.a, abs_path.len) ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, sh)) {
		pr_perror("setup");
		return 1;
	}
	if (send(cli, "to server", 9, 0) != 9 || send(acc, "to client", 9, 0) != 9 ||
	    shutdown(cli, SHUT_WR) || send(scli, "s1", 2, 0) != 2 || send(scli, "s22", 3, 0) != 3 ||
	    send(sacc, "back", 4, 0) != 4 || send(dgs, "from sender", 11, 0) != 11 ||
	    sendto(tmp, "anonymous", 9, 0, (struct sockaddr *)&abs_path.a, abs_path.len) != 9 ||
	    send(sh[1], "kept", 4, 0) != 4 || shutdown(sh[0], SHUT_RD)) {
		pr_perror("queueing data");
		return 1;
	}
	close(tmp);

	test_daemon();
	test_waitsig();

	if (name_is(lsn, 0, &path, "stream listener") || name_is(acc, 0, &path, "accepted") ||
	    name_is(cli, 0, &client, "client") || name_is(cli, 1, &path, "client") ||
	    name_is(acc, 1, &client, "accepted") || name_is(slsn, 0, &seq, "seqpacket listener") ||
	    name_is(sacc, 0, &seq, "seqpacket accepted") || name_is(scli, 1, &seq, "seq client") ||
	    name_is(dg, 0, &abs_path, "dgram") || name_is(dgs, 1, &abs_path, "dgram sender"))
		return 1;
	if (stat("unix_named.stream", &st) || !S_ISSOCK(st.st_mode) || (st.st_mode & 0777) != 0640)
		return fail("the socket file is not a socket of mode 0640");
	if (recv_is(acc, "to server", &client, "accepted") || recv(acc, &c, 1, MSG_DONTWAIT) != 0)
		return fail("the accepted end does not read the data then end-of-file");
	if (recv_is(cli, "to client", &path, "client"))
		return 1;
	if (send(cli, "x", 1, MSG_NOSIGNAL) != -1 || errno != EPIPE)
		return fail("the client shut down for writing can send");
	if (recv_is(sacc, "s1", NULL, "seqpacket") || recv_is(sacc, "s22", NULL, "seqpacket") ||
	    recv_is(scli, "back", &seq, "seqpacket client"))
		return 1;
	if (recv_is(dg, "from sender", &dg_sender, "dgram") ||
	    recv_is(dg, "anonymous", NULL, "dgram"))
		return 1;
	if (recv(dg, &c, 1, MSG_DONTWAIT) != -1)
		return fail("more datagrams queued than were sent");
	if (send(dgs, "again", 5, 0) != 5 || recv_is(dg, "again", &dg_sender, "dgram again"))
		return 1;
	if (recv_is(sh[0], "kept", NULL, "shut-read end") || recv(sh[0], &c, 1, MSG_DONTWAIT) != 0)
		return fail("the end shut down for reading does not read end-of-file");
	if (accepts_new(lsn, SOCK_STREAM, &path, "stream listener") ||
	    accepts_new(slsn, SOCK_SEQPACKET, &seq, "seqpacket listener"))
		return 1;
	return pass();
}
