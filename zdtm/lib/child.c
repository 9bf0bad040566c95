/*
 * child.c - the test's child processes: fork one that runs a function (optionally with a
 * pipe to it), stop it, collect its verdict, clean up after it. Every wait has a deadline,
 * and a child that misses it is killed and reaped, so that no test leaves one behind.
 */
#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtmtst.h"
#include "zdtmtst_int.h"

/* How long a SIGKILLed child may take to become reapable. */
#define KILL_REAP_MS 5000

pid_t test_fork_child(enum test_pipe dir, int *parent_fd, int (*fn)(int fd, void *arg),
		      void *arg)
{
	int p[2] = { -1, -1 }, child_end, parent_end;
	pid_t pid;

	if (dir != TEST_NO_PIPE && pipe2(p, O_CLOEXEC)) {
		pr_perror("pipe");
		return -1;
	}
	/* p[0] is the read end: the child reads what the parent writes, or the other way. */
	child_end = dir == TEST_PIPE_TO_CHILD ? p[0] : p[1];
	parent_end = dir == TEST_PIPE_TO_CHILD ? p[1] : p[0];
	pid = fork();
	if (pid < 0) {
		pr_perror("fork");
		if (dir != TEST_NO_PIPE) {
			close(p[0]);
			close(p[1]);
		}
		return -1;
	}
	if (pid == 0) {
		/* Each process holds only its own end, so that EOF means the other one is gone. */
		if (dir != TEST_NO_PIPE)
			close(parent_end);
		_exit(fn(dir == TEST_NO_PIPE ? -1 : child_end, arg));
	}
	if (dir != TEST_NO_PIPE)
		close(child_end);
	if (parent_fd)
		*parent_fd = dir == TEST_NO_PIPE ? -1 : parent_end;
	return pid;
}

int test_read_timeout(int fd, void *buf, size_t len, int timeout_ms)
{
	struct timespec end;
	size_t got = 0;

	test_deadline(CLOCK_MONOTONIC, timeout_ms, &end);
	while (got < len) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		long left = test_ms_left(CLOCK_MONOTONIC, &end);
		ssize_t n;

		if (left <= 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		if (poll(&pfd, 1, (int)left) < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (!pfd.revents)
			continue; /* timed out: the deadline check above says so */
		n = read(fd, (char *)buf + got, len - got);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0)
			return -1;
		if (n == 0) {
			errno = EPIPE; /* the writer is gone before it wrote it all */
			return -1;
		}
		got += (size_t)n;
	}
	return 0;
}

int test_read_full(int fd, void *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = read(fd, (char *)buf + got, len - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0) {
			errno = EPIPE;
			return -1;
		}
		got += (size_t)n;
	}
	return 0;
}

int test_write_full(int fd, const void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = write(fd, (const char *)buf + done, len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		done += (size_t)n;
	}
	return 0;
}

void test_kill_child(pid_t pid)
{
	kill(pid, SIGKILL);
	test_waitpid(pid, NULL, KILL_REAP_MS);
}

int test_wait_child(pid_t pid, int *status, int timeout_ms)
{
	int err;

	if (!test_waitpid(pid, status, timeout_ms))
		return 0;
	err = errno;
	test_kill_child(pid);
	errno = err;
	return -1;
}

int test_stop_child(pid_t pid, int *status, int timeout_ms)
{
	if (kill(pid, SIGTERM))
		return -1;
	return test_wait_child(pid, status, timeout_ms);
}

int test_child_verdict(const char *file, int line, pid_t pid, bool stop, int timeout_ms)
{
	int status;

	if (stop && kill(pid, SIGTERM))
		return test_fail(file, line, errno, "child %d is gone", pid);
	if (test_wait_child(pid, &status, timeout_ms))
		return test_fail(file, line, errno, "child %d did not exit", pid);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		return test_fail(file, line, 0, "child %d failed (status %#x), see above", pid,
				 status);
	return 0;
}
