/*
 * epoll: two epoll instances watching a pipe's read end and an eventfd with different
 * events and user data, one of them also watching the other epoll; the pipe is watched by
 * both. After restore each epoll reports exactly its ready fds with its own data, and a
 * watch can still be modified and deleted by its fd number (the kernel keys an epoll entry
 * by file and fd number).
 */
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "zdtmtst.h"

#define DATA_PIPE 0x1111222233334444ULL
#define DATA_EFD 0x5555ULL
#define DATA_INNER 0x77ULL
#define DATA_PIPE2 0x9999ULL

static int add(int ep, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event ev = { .events = events, .data.u64 = data };

	return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

/* Wait without blocking; returns the number of events, fills data[] in order. */
static int ready(int ep, uint64_t *data, int max)
{
	struct epoll_event evs[8];
	int n = epoll_wait(ep, evs, max, 0);

	for (int i = 0; i < n; i++)
		data[i] = evs[i].data.u64;
	return n;
}

static int has(const uint64_t *data, int n, uint64_t want)
{
	for (int i = 0; i < n; i++)
		if (data[i] == want)
			return 1;
	return 0;
}

int main(int argc, char **argv)
{
	uint64_t got[8], one = 1;
	int p[2], efd, outer, inner, n;

	test_init(argc, argv);

	efd = eventfd(0, EFD_NONBLOCK);
	outer = epoll_create1(0);
	inner = epoll_create1(EPOLL_CLOEXEC);
	if (pipe(p) || efd < 0 || outer < 0 || inner < 0) {
		pr_perror("setup");
		return 1;
	}
	if (add(outer, p[0], EPOLLIN, DATA_PIPE) || add(outer, efd, EPOLLIN | EPOLLET, DATA_EFD) ||
	    add(outer, inner, EPOLLIN, DATA_INNER) || add(inner, p[0], EPOLLIN | EPOLLRDHUP,
							  DATA_PIPE2)) {
		pr_perror("epoll_ctl add");
		return 1;
	}
	if (write(p[1], "x", 1) != 1) {
		pr_perror("write");
		return 1;
	}

	test_daemon();
	test_waitsig();

	n = ready(inner, got, 8);
	if (n != 1 || got[0] != DATA_PIPE2)
		return fail("inner epoll: %d ready, expected only the pipe with its data", n);
	n = ready(outer, got, 8);
	if (n != 2 || !has(got, n, DATA_PIPE) || !has(got, n, DATA_INNER))
		return fail("outer epoll: %d ready, expected the pipe and the inner epoll", n);
	if (write(efd, &one, sizeof(one)) != sizeof(one))
		return fail_perror("write eventfd");
	n = ready(outer, got, 8);
	if (n != 3 || !has(got, n, DATA_EFD))
		return fail("outer epoll: the eventfd watch is gone (%d ready)", n);
	if (epoll_ctl(outer, EPOLL_CTL_DEL, efd, NULL))
		return fail_perror("EPOLL_CTL_DEL of the eventfd by its fd number");
	if (epoll_ctl(inner, EPOLL_CTL_DEL, p[0], NULL))
		return fail_perror("EPOLL_CTL_DEL of the pipe by its fd number");
	n = ready(inner, got, 8);
	if (n != 0)
		return fail("inner epoll still reports %d fds after EPOLL_CTL_DEL", n);
	return pass();
}
