/*
 * pgid_no_leader: a process group whose leader is gone. L led its own group and forked
 * X into it, then exited and was reaped; X (re-parented to the test, a child subreaper)
 * is in a group no task of the tree can create again. The dump must refuse it, naming
 * X and the group, and leave the tree running (crfail): X still answers afterwards.
 */
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtmtst.h"

static int x_main(int fd, void *arg)
{
	(void)fd;
	(void)arg;
	test_waitsig();
	return 0;
}

int main(int argc, char **argv)
{
	pid_t l, x = -1;
	int p[2], status;

	test_init(argc, argv);
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) || pipe(p)) {
		pr_perror("setup");
		return 1;
	}
	l = fork();
	if (l == 0) {
		pid_t c;

		if (setpgid(0, 0))
			_exit(1);
		c = test_fork_child(TEST_NO_PIPE, NULL, x_main, NULL);
		_exit(c > 0 && write(p[1], &c, sizeof(c)) == sizeof(c) ? 0 : 1);
	}
	if (l < 0 || read(p[0], &x, sizeof(x)) != sizeof(x) || waitpid(l, &status, 0) != l ||
	    status) {
		pr_perror("set up the leaderless group");
		if (x > 0)
			kill(x, SIGKILL);
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (getpgid(x) != l)
		fail("X is in group %d, expected %d", getpgid(x), l);
	if (stop_child_verdict(x, 10000))
		return 1;
	return pass();
}
