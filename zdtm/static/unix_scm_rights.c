/*
 * unix_scm_rights: fds in flight. A stream socket pair holds, unread, a message carrying
 * the write end of a pipe (closed in the task; its read end, with data in the pipe, is
 * kept), then one carrying an eventfd (counter 5, closed in the task), then plain data.
 * A datagram pair holds a message carrying one end of another socket pair (closed in
 * the task; the other end is kept) and one carrying the pipe's read end again (the same
 * open file description as the task's own fd). After restore the messages come in
 * order with their fds: the pipe write end feeds the kept read end after its old data,
 * the eventfd reads 5, the socket in flight is connected to the kept end, and the
 * second read end shares its status flags with the task's.
 */
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "zdtmtst.h"

static int send_fd(int s, const char *data, int fd)
{
	char ctl[CMSG_SPACE(sizeof(int))] = { 0 };
	struct iovec iov = { .iov_base = (void *)data, .iov_len = strlen(data) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
			     .msg_controllen = sizeof(ctl) };
	struct cmsghdr *ch = CMSG_FIRSTHDR(&mh);

	ch->cmsg_level = SOL_SOCKET;
	ch->cmsg_type = SCM_RIGHTS;
	ch->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(ch), &fd, sizeof(int));
	return sendmsg(s, &mh, 0) == (ssize_t)strlen(data) ? 0 : -1;
}

/* receive `want` with one fd (returned), or without (fd_wanted 0: returns 0) */
static int recv_fd(int s, const char *want, bool fd_wanted, const char *what)
{
	char buf[64], ctl[CMSG_SPACE(4 * sizeof(int))];
	struct iovec iov = { .iov_base = buf, .iov_len = strlen(want) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
			     .msg_controllen = sizeof(ctl) };
	struct cmsghdr *ch;
	ssize_t n = recvmsg(s, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	int fd;

	if (n != (ssize_t)strlen(want) || memcmp(buf, want, n))
		return fail("%s: received %zd bytes, expected \"%s\"", what, n, want), -1;
	ch = CMSG_FIRSTHDR(&mh);
	if (!fd_wanted)
		return ch ? fail("%s: came with fds", what), -1 : 0;
	if (!ch || ch->cmsg_type != SCM_RIGHTS || ch->cmsg_len != CMSG_LEN(sizeof(int)))
		return fail("%s: did not come with exactly one fd", what), -1;
	memcpy(&fd, CMSG_DATA(ch), sizeof(int));
	return fd;
}

int main(int argc, char **argv)
{
	int sp[2], dg[2], pipefd[2], pair[2], efd, w, e, x, r2;
	uint64_t cnt;
	char buf[32], c;

	test_init(argc, argv);

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) || socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, pair) || pipe(pipefd) ||
	    (efd = eventfd(5, 0)) < 0) {
		pr_perror("setup");
		return 1;
	}
	if (write(pipefd[1], "in pipe", 7) != 7 || send_fd(sp[0], "p", pipefd[1]) ||
	    send_fd(sp[0], "e", efd) || send(sp[0], "plain", 5, 0) != 5 ||
	    send_fd(dg[0], "s", pair[0]) || send_fd(dg[0], "two", pipefd[0])) {
		pr_perror("sending fds");
		return 1;
	}
	close(pipefd[1]);
	close(efd);
	close(pair[0]);

	test_daemon();
	test_waitsig();

	if ((w = recv_fd(sp[1], "p", true, "pipe write end")) < 0 ||
	    (e = recv_fd(sp[1], "e", true, "eventfd")) < 0 ||
	    recv_fd(sp[1], "plain", false, "plain data") < 0 ||
	    (x = recv_fd(dg[1], "s", true, "socket")) < 0 ||
	    (r2 = recv_fd(dg[1], "two", true, "pipe read end")) < 0)
		return 1;
	if (recv(sp[1], &c, 1, MSG_DONTWAIT) != -1 || recv(dg[1], &c, 1, MSG_DONTWAIT) != -1)
		return fail("more queued than was sent");
	if (write(w, " more", 5) != 5 || read(pipefd[0], buf, sizeof(buf)) != 12 ||
	    memcmp(buf, "in pipe more", 12))
		return fail("the pipe write end in flight does not feed the kept read end");
	if (read(e, &cnt, sizeof(cnt)) != sizeof(cnt) || cnt != 5)
		return fail("the eventfd in flight reads %llu, not 5", (unsigned long long)cnt);
	if (send(x, "q", 1, 0) != 1 || recv(pair[1], &c, 1, MSG_DONTWAIT) != 1 || c != 'q')
		return fail("the socket in flight is not connected to the kept end");
	if (fcntl(r2, F_SETFL, O_NONBLOCK) || !(fcntl(pipefd[0], F_GETFL) & O_NONBLOCK))
		return fail("the read end in flight is not the task's own open file");
	return pass();
}
