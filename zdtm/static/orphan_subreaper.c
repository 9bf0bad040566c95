/*
 * orphan_subreaper: an orphan re-parented to the test, which is a child subreaper.
 *
 * The test sets PR_SET_CHILD_SUBREAPER and forks A; A forks B and exits, so B is
 * re-parented to the test (its ppid is no longer its creator's pid, and A's pid is free).
 * After restore the test is still a subreaper, B is alive with the test as its parent,
 * and the test reaps B with B's own verdict as exit status.
 */
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtmtst.h"

#define B_OK 0
#define B_BAD_PPID 3

/* The parent pid of pid from /proc/PID/stat; -1 when it cannot be read. */
static pid_t proc_ppid(pid_t pid)
{
	pid_t ppid;

	return proc_stat(pid, NULL, &ppid) ? -1 : ppid;
}

/* A: fork B, report B's pid to the test and exit, which orphans B. */
static int a_main(int wfd, void *arg)
{
	pid_t t = *(pid_t *)arg, pid = fork();

	if (pid == 0) {
		close(wfd);
		test_waitsig();
		_exit(getppid() == t ? B_OK : B_BAD_PPID);
	}
	return pid > 0 && write(wfd, &pid, sizeof(pid)) == sizeof(pid) ? 0 : 1;
}

int main(int argc, char **argv)
{
	int rfd, status, sub = 0;
	pid_t t, a, b = -1;

	test_init(argc, argv);
	t = getpid();

	if (prctl(PR_SET_CHILD_SUBREAPER, 1)) {
		pr_perror("PR_SET_CHILD_SUBREAPER");
		return 1;
	}
	a = test_fork_child(TEST_PIPE_FROM_CHILD, &rfd, a_main, &t);
	if (a < 0)
		return 1;
	if (test_wait_child(a, &status, 10000) || !WIFEXITED(status) || WEXITSTATUS(status) ||
	    read(rfd, &b, sizeof(b)) != sizeof(b)) {
		pr_err("A did not fork B and exit");
		return 1;
	}
	close(rfd);
	/* B is re-parented when A is gone (with a deadline). */
	for (int i = 0; i < 5000 && proc_ppid(b) != t; i++)
		usleep(1000);
	if (proc_ppid(b) != t) {
		pr_err("B %d was not re-parented to the test (ppid %d)", b, proc_ppid(b));
		kill(b, SIGKILL);
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (prctl(PR_GET_CHILD_SUBREAPER, &sub) || sub != 1)
		fail("the test is no longer a child subreaper (%d)", sub);
	if (test_stop_child(b, &status, 10000))
		return fail_perror("B %d is gone, not our child or did not exit", b);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != B_OK)
		return fail("B exited with status %#x (%d: it saw another parent)", status,
			    B_BAD_PPID);
	return pass();
}
