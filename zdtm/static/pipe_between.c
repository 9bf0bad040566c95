/*
 * pipe_between: two pipes between a parent and its child, each holding data the reader
 * has not read yet (parent -> child 1000 bytes, child -> parent 2000 bytes). Each process
 * holds only its own ends. After restore each reader gets exactly the bytes in flight.
 */
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "zdtmtst.h"

#define DOWN_LEN 1000
#define UP_LEN 2000
#define DOWN_SEED 0xd0e0UL
#define UP_SEED 0x0b0bUL

static int down[2], up[2];

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

/* The child: hold only its own ends, send its data, check what it got after SIGTERM. */
static int child_main(int fd, void *arg)
{
	char buf[UP_LEN];

	(void)fd;
	(void)arg;
	close(down[1]);
	close(up[0]);
	datafill(buf, UP_LEN, UP_SEED);
	if (write(up[1], buf, UP_LEN) != UP_LEN)
		return 2;
	test_waitsig();
	return drain(down[0], DOWN_LEN, DOWN_SEED, "child") ? 1 : 0;
}

int main(int argc, char **argv)
{
	char buf[DOWN_LEN];
	int queued = 0;
	pid_t child;

	test_init(argc, argv);

	if (pipe2(down, O_NONBLOCK) || pipe2(up, O_NONBLOCK)) {
		pr_perror("pipe");
		return 1;
	}
	child = test_fork_child(TEST_NO_PIPE, NULL, child_main, NULL);
	if (child < 0)
		return 1;
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
		test_kill_child(child);
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (drain(up[0], UP_LEN, UP_SEED, "parent"))
		fail("the child -> parent pipe lost or changed data");
	if (stop_child_verdict(child, 10000))
		return 1;
	return pass();
}
