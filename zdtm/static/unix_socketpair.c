/*
 * unix_socketpair: three connected unix socket pairs with data queued in them — a stream
 * pair with bytes waiting in both directions, a datagram pair and a seqpacket pair with
 * several messages of different lengths queued, and a stream pair whose one end was shut
 * down for writing. One end of the stream pair is non-blocking. A fifth stream pair has a
 * send buffer of 1 MiB (more than the default) with up to 600000 bytes (what that buffer
 * holds here) queued through it. After restore every byte is there once, message
 * boundaries hold, the pairs are still connected to each other, and the shut-down pair
 * still reads end-of-file.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "zdtmtst.h"

static const char *msgs[] = { "one", "second message", "3" };
#define NR_MSGS 3

static int recv_is(int fd, const char *want, const char *what)
{
	char buf[64];
	ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

	if (n != (ssize_t)strlen(want) || memcmp(buf, want, n))
		return fail("%s: received %zd bytes, expected \"%s\"", what, n, want);
	return 0;
}

static int queue_msgs(int fd)
{
	for (int i = 0; i < NR_MSGS; i++)
		if (send(fd, msgs[i], strlen(msgs[i]), 0) != (ssize_t)strlen(msgs[i]))
			return -1;
	return 0;
}

static int check_pair_alive(int a, int b, const char *what)
{
	char c;

	if (send(a, "z", 1, 0) != 1 || recv(b, &c, 1, MSG_DONTWAIT) != 1 || c != 'z')
		return fail("%s: the two ends are not connected any more", what);
	return 0;
}

#define BIG (600 * 1000)
static size_t big = BIG; /* what fits the send buffer this kernel gives */

/*
 * queue up to BIG bytes of datagen data from a[0] to a[1] through a 1 MiB send buffer
 * (SO_SNDBUF alone stops at twice net.core.wmem_max: 416 KiB by default)
 */
static int big_pair(int a[2])
{
	int size = 1 << 20, got;
	socklen_t len = sizeof(got);
	char *buf = malloc(BIG);
	size_t sent = 0;

	if (!buf || socketpair(AF_UNIX, SOCK_STREAM, 0, a) ||
	    (setsockopt(a[0], SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) &&
	     setsockopt(a[0], SOL_SOCKET, SO_SNDBUF, &size, sizeof(size))) ||
	    getsockopt(a[0], SOL_SOCKET, SO_SNDBUF, &got, &len))
		return -1;
	if ((size_t)got / 2 < big)
		big = got / 2;
	datafill(buf, big, 77);
	while (sent < big) {
		ssize_t n = send(a[0], buf + sent, big - sent, MSG_DONTWAIT);

		if (n <= 0)
			return -1;
		sent += n;
	}
	free(buf);
	return 0;
}

static int big_check(int a[2])
{
	char *buf = malloc(big + 1);
	size_t got = 0;
	ssize_t n;

	while (buf && got <= big && (n = recv(a[1], buf + got, big + 1 - got, MSG_DONTWAIT)) > 0)
		got += n;
	if (!buf || got != big || datacmp(buf, big, 77) >= 0)
		return fail("big pair: %zu bytes of %zu came back, or other bytes", got, big);
	free(buf);
	return 0;
}

int main(int argc, char **argv)
{
	int st[2], dg[2], sp[2], sh[2], big[2];
	char c;

	test_init(argc, argv);

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, st) || socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp) || socketpair(AF_UNIX, SOCK_STREAM, 0, sh)) {
		pr_perror("socketpair");
		return 1;
	}
	if (fcntl(st[1], F_SETFL, O_NONBLOCK) ||
	    send(st[0], "hello", 5, 0) != 5 || send(st[1], "world!", 6, 0) != 6 ||
	    queue_msgs(dg[0]) || queue_msgs(sp[1]) ||
	    send(sh[0], "bye", 3, 0) != 3 || shutdown(sh[0], SHUT_WR) || big_pair(big)) {
		pr_perror("setup");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (!(fcntl(st[1], F_GETFL) & O_NONBLOCK))
		fail("stream end lost O_NONBLOCK");
	if (recv_is(st[1], "hello", "stream 0->1") || recv_is(st[0], "world!", "stream 1->0"))
		return 1;
	for (int i = 0; i < NR_MSGS; i++)
		if (recv_is(dg[1], msgs[i], "dgram") || recv_is(sp[0], msgs[i], "seqpacket"))
			return 1;
	if (recv(dg[1], &c, 1, MSG_DONTWAIT) != -1 || recv(sp[0], &c, 1, MSG_DONTWAIT) != -1)
		return fail("more messages queued than were sent");
	if (check_pair_alive(st[0], st[1], "stream") || check_pair_alive(dg[1], dg[0], "dgram") ||
	    check_pair_alive(sp[0], sp[1], "seqpacket"))
		return 1;
	if (recv_is(sh[1], "bye", "shut-down stream"))
		return 1;
	if (recv(sh[1], &c, 1, MSG_DONTWAIT) != 0)
		return fail("the shut-down stream does not read end-of-file");
	if (send(sh[0], "x", 1, MSG_NOSIGNAL) != -1 || errno != EPIPE)
		return fail("the shut-down end can still send");
	if (big_check(big))
		return 1;
	return pass();
}
