/*
 * pipe_between: two pipes between a parent and its child, each holding data the reader
 * has not read yet (parent -> child 1000 bytes, child -> parent 2000 bytes). Each process
 * holds only its own ends. After restore each reader gets exactly the bytes in flight.
 */
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtmtst.h"

#define DOWN_LEN 1000
#define UP_LEN 2000
#define DOWN_SEED 0xd0e0UL
#define UP_SEED 0x0b0bUL

/* Read exactly len bytes in flight from a non-blocking pipe and check there is no more. */
static int drain(int fd, size_t len, uint64_t seed, const char *who)
{
	char buf[UP_LEN + 1];
	ssize_t n = read(fd, buf, sizeof(buf));

	if (n != (ssize_t)len) {
		test_msg("%s: %zd bytes in the pipe, expected %zu", who, n, len);
		return -1;
	}
	if (datacmp(buf, len, seed) >= 0) {
		test_msg("%s: pipe data differs at byte %zd", who, datacmp(buf, len, seed));
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	char buf[UP_LEN];
	int down[2], up[2], status, queued = 0;
	pid_t child;

	test_init(argc, argv);

	if (pipe2(down, O_NONBLOCK) || pipe2(up, O_NONBLOCK)) {
		pr_perror("pipe");
		return 1;
	}
	child = fork();
	if (child < 0) {
		pr_perror("fork");
		return 1;
	}
	if (!child) {
		close(down[1]);
		close(up[0]);
		datafill(buf, UP_LEN, UP_SEED);
		if (write(up[1], buf, UP_LEN) != UP_LEN)
			_exit(2);
		test_waitsig();
		_exit(drain(down[0], DOWN_LEN, DOWN_SEED, "child") ? 1 : 0);
	}
	close(down[0]);
	close(up[1]);
	datafill(buf, DOWN_LEN, DOWN_SEED);
	if (write(down[1], buf, DOWN_LEN) != DOWN_LEN) {
		pr_perror("write");
		return 1;
	}
	/* Wait (with a deadline) until the child's data is in flight too. */
	for (int i = 0; i < 5000 && (ioctl(up[0], FIONREAD, &queued) || queued != UP_LEN); i++)
		usleep(1000);
	if (queued != UP_LEN) {
		pr_err("the child's data did not arrive (%d bytes)", queued);
		kill(child, SIGKILL);
		test_waitpid(child, NULL, 5000);
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (drain(up[0], UP_LEN, UP_SEED, "parent"))
		fail("the child -> parent pipe lost or changed data");
	kill(child, SIGTERM);
	if (test_waitpid(child, &status, 10000)) {
		kill(child, SIGKILL);
		test_waitpid(child, NULL, 5000);
		return fail_perror("child %d did not exit", child);
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		return fail("child failed (status %#x), see above", status);
	return pass();
}
