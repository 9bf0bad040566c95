/*
 * fork_child: a live forked child. After restore the child is still the parent's child
 * (the parent can wait for it by its pid) and the child still sees its parent as ppid;
 * the two still share the pipe they talk through.
 */
#include <signal.h>
#include <unistd.h>

#include "zdtmtst.h"

#define CHILD_OK 0
#define CHILD_BAD_PPID 3
#define CHILD_BAD_PIPE 4

static int child_main(int rfd, void *arg)
{
	pid_t parent = *(pid_t *)arg;
	char c;

	test_waitsig();
	if (getppid() != parent) {
		test_msg("child: ppid is %d, expected %d", getppid(), parent);
		return CHILD_BAD_PPID;
	}
	/* The parent wrote one byte before forwarding SIGTERM. */
	if (read(rfd, &c, 1) != 1 || c != 'P') {
		test_msg("child: no byte from the parent through the pipe");
		return CHILD_BAD_PIPE;
	}
	return CHILD_OK;
}

int main(int argc, char **argv)
{
	pid_t parent, child;
	int wfd;

	test_init(argc, argv);
	parent = getpid();
	/* A child that died must give a FAIL line (EPIPE below), not kill us with SIGPIPE. */
	signal(SIGPIPE, SIG_IGN);

	child = test_fork_child(TEST_PIPE_TO_CHILD, &wfd, child_main, &parent);
	if (child < 0)
		return 1;

	test_daemon();
	test_waitsig();

	if (write(wfd, "P", 1) != 1)
		fail_perror("write to the child");
	if (stop_child_verdict(child, 10000))
		return 1;
	return pass();
}
