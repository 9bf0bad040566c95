/*
 * socket_stream (transition): a child streams numbered records to the parent without pause
 * over two connected stream sockets, a unix socketpair and a TCP connection on loopback, so
 * the dump catches data in flight in both directions' queues (the parent reads slower than
 * the child writes: the send and receive queues are full, and the child is often blocked).
 *
 * Every record is (sequence number, CRC of it), numbered per socket. After SIGTERM the
 * parent tells the child to stop; the child writes an end record on each socket holding how
 * many records it wrote there. The parent reads both streams up to their end records:
 * nothing in flight may be lost, duplicated, reordered or changed by C/R.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "zdtmtst.h"

#define END_MARK 0xffffffffu
#define NSOCK 2

struct rec {
	uint64_t seq;
	uint32_t crc;	/* of seq; END_MARK in the end record, whose seq is the total */
	uint32_t pad;
};

struct child_args {
	int unix_fd;	/* the child's end of the socketpair */
	int parent_fds[2];	/* the parent's end and its listener: closed in the child */
	uint16_t port;	/* the parent's TCP listener */
};

static int child_main(int unused, void *arg)
{
	struct child_args *a = arg;
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(a->port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct rec r[NSOCK] = { { 0 } };
	int fds[NSOCK] = { a->unix_fd, socket(AF_INET, SOCK_STREAM, 0) };

	(void)unused;
	close(a->parent_fds[0]);
	close(a->parent_fds[1]);
	if (fds[1] < 0 || connect(fds[1], (struct sockaddr *)&sin, sizeof(sin))) {
		test_msg("child: TCP connect: %m");
		return 1;
	}
	while (test_go()) {
		for (int i = 0; i < NSOCK; i++) {
			r[i].seq++;
			r[i].crc = crc32_update(0, &r[i].seq, sizeof(r[i].seq));
			if (test_write_full(fds[i], &r[i], sizeof(r[i]))) {
				test_msg("child: write on socket %d: %m", i);
				return 1;
			}
		}
	}
	for (int i = 0; i < NSOCK; i++) {
		r[i].crc = END_MARK;
		if (test_write_full(fds[i], &r[i], sizeof(r[i])))
			return 1;
	}
	return 0;
}

static const char *const names[NSOCK] = { "unix", "tcp" };

/* Check the next record of stream i: 0 data, 1 its end record, -1 a failure (logged). */
static int next_rec(int fd, int i, uint64_t *expect)
{
	struct rec r;

	if (test_read_full(fd, &r, sizeof(r))) {
		test_msg("%s: the stream ended early at record %llu", names[i],
			 (unsigned long long)*expect);
		return -1;
	}
	if (r.crc == END_MARK) {
		if (r.seq == *expect - 1)
			return 1;
		test_msg("%s: the child wrote %llu records, the parent read %llu", names[i],
			 (unsigned long long)r.seq, (unsigned long long)*expect - 1);
		return -1;
	}
	if (r.seq != *expect || r.crc != crc32_update(0, &r.seq, sizeof(r.seq))) {
		test_msg("%s: record %llu (crc %#x) where %llu was expected", names[i],
			 (unsigned long long)r.seq, r.crc, (unsigned long long)*expect);
		return -1;
	}
	(*expect)++;
	return 0;
}

static int tcp_listener(uint16_t *port)
{
	struct sockaddr_in sin;
	int fd = test_loopback_socket(SOCK_STREAM, &sin);

	if (fd < 0 || listen(fd, 1))
		return -1;
	*port = ntohs(sin.sin_port);
	return fd;
}

int main(int argc, char **argv)
{
	uint64_t expect[NSOCK] = { 1, 1 };
	struct child_args a;
	int sv[2], lfd, fds[NSOCK], done = 0;
	pid_t child;

	test_init(argc, argv);

	lfd = tcp_listener(&a.port);
	if (lfd < 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		return fail_perror("TCP listener / socketpair");
	a.unix_fd = sv[1];
	a.parent_fds[0] = sv[0];
	a.parent_fds[1] = lfd;
	child = test_fork_child(TEST_NO_PIPE, NULL, child_main, &a);
	if (child < 0)
		return 1;
	close(sv[1]);
	fds[0] = sv[0];
	fds[1] = accept(lfd, NULL, NULL);
	if (fds[1] < 0)
		return fail_perror("accept");
	close(lfd);

	test_daemon();

	/* Read slower than the child writes, so that the queues are usually full. */
	for (uint64_t n = 1; test_go(); n++) {
		for (int i = 0; i < NSOCK; i++)
			if (next_rec(fds[i], i, &expect[i]))
				return fail("stream %s broken (see above)", names[i]);
		if (n % 16 == 0)
			usleep(1000);
	}

	kill(child, SIGTERM);
	while (done != (1 << NSOCK) - 1) {
		struct pollfd p[NSOCK];
		int k = 0;

		for (int i = 0; i < NSOCK; i++)
			p[i] = (struct pollfd){ .fd = done & (1 << i) ? -1 : fds[i],
						.events = POLLIN };
		if (poll(p, NSOCK, 10000) <= 0)
			return fail("no end record within 10 s (%s)", done & 1 ? "tcp" : "unix");
		for (int i = 0; i < NSOCK; i++) {
			if (!p[i].revents)
				continue;
			k = next_rec(fds[i], i, &expect[i]);
			if (k < 0)
				return fail("stream %s broken (see above)", names[i]);
			if (k)
				done |= 1 << i;
		}
	}
	if (wait_child_verdict(child, 10000))
		return 1;
	test_msg("%llu unix and %llu tcp records streamed", (unsigned long long)expect[0] - 1,
		 (unsigned long long)expect[1] - 1);
	return pass();
}
