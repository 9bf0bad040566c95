/*
 * orphan_subreaper: an orphan re-parented to the test, which is a child subreaper.
 *
 * The test sets PR_SET_CHILD_SUBREAPER and forks A; A forks B and exits, so B is
 * re-parented to the test (its ppid is no longer its creator's pid, and A's pid is free).
 * After restore the test is still a subreaper, B is alive with the test as its parent,
 * and the test reaps B with B's own verdict as exit status.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtmtst.h"

#define B_OK 0
#define B_BAD_PPID 3

/* The parent pid of pid from /proc/PID/stat; -1 when it cannot be read. */
static pid_t proc_ppid(pid_t pid)
{
	char path[64], buf[512], *s;
	int ppid = -1;
	size_t n;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	f = fopen(path, "re");
	if (!f)
		return -1;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* "pid (comm) state ppid ...": comm may hold anything, so start after its ')'. */
	s = strrchr(buf, ')');
	if (!s || sscanf(s + 1, " %*c %d", &ppid) != 1)
		return -1;
	return ppid;
}

int main(int argc, char **argv)
{
	int p[2], status, sub = 0;
	pid_t t, a, b = -1;

	test_init(argc, argv);
	t = getpid();

	if (prctl(PR_SET_CHILD_SUBREAPER, 1) || pipe2(p, O_CLOEXEC)) {
		pr_perror("PR_SET_CHILD_SUBREAPER/pipe");
		return 1;
	}
	a = fork();
	if (a < 0) {
		pr_perror("fork");
		return 1;
	}
	if (!a) {
		pid_t pid = fork();

		if (pid == 0) {
			close(p[0]);
			close(p[1]);
			test_waitsig();
			_exit(getppid() == t ? B_OK : B_BAD_PPID);
		}
		_exit(pid > 0 && write(p[1], &pid, sizeof(pid)) == sizeof(pid) ? 0 : 1);
	}
	close(p[1]);
	if (test_waitpid(a, &status, 10000) || !WIFEXITED(status) || WEXITSTATUS(status) ||
	    read(p[0], &b, sizeof(b)) != sizeof(b)) {
		pr_err("A did not fork B and exit");
		return 1;
	}
	close(p[0]);
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
	if (kill(b, SIGTERM))
		return fail_perror("B %d is gone", b);
	if (test_waitpid(b, &status, 10000)) {
		kill(b, SIGKILL);
		test_waitpid(b, NULL, 5000);
		return fail_perror("B %d is not our child or did not exit", b);
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != B_OK)
		return fail("B exited with status %#x (%d: it saw another parent)", status,
			    B_BAD_PPID);
	return pass();
}
