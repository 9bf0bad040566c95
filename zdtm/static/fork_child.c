/*
 * fork_child: a live forked child. After restore the child is still the parent's child
 * (the parent can wait for it by its pid) and the child still sees its parent as ppid;
 * the two still share the pipe they talk through.
 */
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtmtst.h"

#define CHILD_OK 0
#define CHILD_BAD_PPID 3
#define CHILD_BAD_PIPE 4

static int child_main(pid_t parent, int rfd)
{
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
	int p[2], status;

	test_init(argc, argv);
	parent = getpid();

	if (pipe2(p, O_CLOEXEC)) {
		pr_perror("pipe");
		return 1;
	}
	child = fork();
	if (child < 0) {
		pr_perror("fork");
		return 1;
	}
	if (!child) {
		close(p[1]);
		_exit(child_main(parent, p[0]));
	}
	close(p[0]);

	test_daemon();
	test_waitsig();

	if (write(p[1], "P", 1) != 1)
		fail_perror("write to the child");
	if (kill(child, SIGTERM))
		return fail_perror("child %d is gone", child);
	if (test_waitpid(child, &status, 10000)) {
		kill(child, SIGKILL);
		test_waitpid(child, NULL, 5000);
		return fail_perror("waitpid(%d)", child);
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != CHILD_OK)
		return fail("child exited with status %#x", status);
	return pass();
}
