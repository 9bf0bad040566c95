/*
 * pidfd: the test holds a pidfd of itself (and a dup of it) and a non-blocking pidfd of its
 * child, watched by an epoll. After restore each refers to the same process: the fdinfo
 * pid is right, the child's pidfd is not readable while the child lives, signals sent
 * through it reach the child, and its exit makes the pidfd (and the epoll) readable and
 * is reaped through it (waitid P_PIDFD).
 */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtmtst.h"

#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#define EPOLL_DATA 0x5eed

static int pidfd_open(pid_t pid, unsigned int flags)
{
	return syscall(SYS_pidfd_open, pid, flags);
}

static int pidfd_send_signal(int fd, int sig)
{
	return syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0);
}

/* The Pid: line of fd's fdinfo, or -2. */
static int fdinfo_pid(int fd)
{
	char path[64], line[256];
	int pid = -2;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "r");
	if (!f)
		return -2;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Pid: %d", &pid) == 1)
			break;
	fclose(f);
	return pid;
}

int main(int argc, char **argv)
{
	struct pollfd p = { .events = POLLIN };
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = EPOLL_DATA };
	int self, self_dup, child_fd, ep;
	siginfo_t si;
	pid_t child;

	test_init(argc, argv);
	child = fork();
	if (child < 0) {
		pr_perror("fork");
		return 1;
	}
	if (child == 0) {
		for (;;)
			pause();
	}
	self = pidfd_open(getpid(), 0);
	child_fd = pidfd_open(child, PIDFD_NONBLOCK);
	self_dup = dup(self);
	ep = epoll_create1(0);
	if (self < 0 || child_fd < 0 || self_dup < 0 || ep < 0 ||
	    epoll_ctl(ep, EPOLL_CTL_ADD, child_fd, &ev)) {
		pr_perror("pidfds");
		test_kill_child(child);
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (fdinfo_pid(self) != getpid() || fdinfo_pid(self_dup) != getpid() ||
	    fdinfo_pid(child_fd) != child) {
		test_kill_child(child);
		return fail("pidfds refer to %d/%d/%d, expected %d and %d", fdinfo_pid(self),
			    fdinfo_pid(self_dup), fdinfo_pid(child_fd), getpid(), child);
	}
	if (!(fcntl(child_fd, F_GETFL) & O_NONBLOCK) || pidfd_send_signal(self, 0)) {
		test_kill_child(child);
		return fail("PIDFD_NONBLOCK lost, or no signal through our own pidfd");
	}
	p.fd = child_fd;
	if (poll(&p, 1, 0) != 0) {
		test_kill_child(child);
		return fail("the child's pidfd is readable while the child lives");
	}
	if (pidfd_send_signal(child_fd, SIGKILL))
		return fail_perror("pidfd_send_signal");
	if (epoll_wait(ep, &ev, 1, 5000) != 1 || ev.data.u64 != EPOLL_DATA)
		return fail("the epoll does not report the child's exit");
	if (poll(&p, 1, 0) != 1 || !(p.revents & POLLIN))
		return fail("the child's pidfd is not readable after its exit");
	memset(&si, 0, sizeof(si));
	if (waitid(P_PIDFD, child_fd, &si, WEXITED) || si.si_pid != child ||
	    si.si_code != CLD_KILLED || si.si_status != SIGKILL)
		return fail_perror("waitid(P_PIDFD) gave pid %d code %d status %d", si.si_pid,
				   si.si_code, si.si_status);
	return pass();
}
