/*
 * session_orphans: process groups and sessions that the tree's parent links do not show.
 *
 * The test T (session leader) is a child subreaper. Its children:
 *   Z1  zombie, leader of its own process group;
 *   Z2  zombie in L's process group (L was forked after Z2);
 *   L   leader of its own process group;
 *   S   leader of its own session. S forked M, M forked N and N2, M exited (S reaped
 *       it): N and N2 are now T's children in S's session and group; N2 then exited too.
 * After restore every task, zombies included, has the same parent, pgid and sid; the
 * zombies are reaped with their statuses, and the live tasks check their own ids.
 */
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtmtst.h"

enum { Z1, Z2, L, S, N, N2, NR };
static const char *names[NR] = { "Z1", "Z2", "L", "S", "N", "N2" };
static pid_t *pids; /* shared (M reports N and N2): written by parents only */

static void wait_term(void)
{
	test_waitsig();
}

/* A live task: wait for SIGTERM, then exit 0 when its ids are what they were. */
static void live(pid_t pgid, pid_t sid)
{
	wait_term();
	_exit(getpgid(0) == pgid && getsid(0) == sid ? 0 : 1);
}

static void s_main(void)
{
	pid_t m, me;
	int status;

	me = setsid();
	if (me < 0)
		_exit(2);
	m = fork();
	if (m == 0) {
		pid_t n = fork(), n2;

		if (n == 0)
			live(me, me);
		n2 = n > 0 ? fork() : -1;
		if (n2 == 0) {
			/* Exit once re-parented to T (M gone). */
			while (getppid() != pids[NR])
				usleep(1000);
			_exit(7);
		}
		pids[N] = n;
		pids[N2] = n2;
		_exit(n > 0 && n2 > 0 ? 0 : 1);
	}
	if (m < 0 || waitpid(m, &status, 0) != m || status)
		_exit(3);
	live(me, me);
}

static int setup(void)
{
	pid_t p;

	p = fork();
	if (p == 0)
		_exit(setpgid(0, 0) ? 1 : 11);
	pids[Z1] = p;
	p = fork();
	if (p == 0) {
		/* Exit once the parent moved us into L's group. */
		while (getpgid(0) == getpgid(getppid()))
			usleep(1000);
		_exit(12);
	}
	pids[Z2] = p;
	p = fork();
	if (p == 0) {
		if (setpgid(0, 0))
			_exit(1);
		live(getpid(), getsid(0));
	}
	pids[L] = p;
	for (int i = 0; i < 5000 && getpgid(pids[L]) != pids[L]; i++)
		usleep(1000);
	if (setpgid(pids[Z2], pids[L])) {
		pr_perror("move Z2 into L's group");
		return -1;
	}
	p = fork();
	if (p == 0)
		s_main();
	pids[S] = p;
	/* Wait for the zombies (and N2, one of our children by now) to be zombies. */
	for (int i = 0; i < 10000; i++) {
		char st[3] = "?";

		if (pids[N2] > 0) {
			proc_stat(pids[Z1], &st[0], NULL);
			proc_stat(pids[Z2], &st[1], NULL);
			proc_stat(pids[N2], &st[2], NULL);
			if (st[0] == 'Z' && st[1] == 'Z' && st[2] == 'Z')
				return 0;
		}
		usleep(1000);
	}
	pr_err("zombies not there: N2 %d", pids[N2]);
	return -1;
}

static void check_ids(int i, pid_t pgid, pid_t sid)
{
	if (getpgid(pids[i]) != pgid || getsid(pids[i]) != sid)
		fail("%s (%d): pgid %d sid %d, expected %d %d", names[i], pids[i],
		     getpgid(pids[i]), getsid(pids[i]), pgid, sid);
}

static void reap(int i, int code)
{
	int status;

	if (waitpid(pids[i], &status, WNOHANG) != pids[i] || !WIFEXITED(status) ||
	    WEXITSTATUS(status) != code)
		fail("%s (%d): not a zombie with exit code %d", names[i], pids[i], code);
}

static void stop(int i)
{
	int status;

	if (test_stop_child(pids[i], &status, 10000) || status)
		fail("%s (%d) reported status %#x", names[i], pids[i], status);
}

int main(int argc, char **argv)
{
	pid_t t;

	test_init(argc, argv);
	t = getpid();
	pids = mmap(NULL, sizeof(pid_t) * (NR + 1), PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (pids == MAP_FAILED || getsid(0) != t || prctl(PR_SET_CHILD_SUBREAPER, 1)) {
		pr_perror("setup");
		return 1;
	}
	pids[NR] = t;
	if (setup()) {
		pr_err("the tree did not set up in time");
		for (int i = 0; i < NR; i++)
			if (pids[i] > 0)
				kill(pids[i], SIGKILL);
		return 1;
	}

	test_daemon();
	test_waitsig();

	check_ids(Z1, pids[Z1], t);
	check_ids(Z2, pids[L], t);
	check_ids(L, pids[L], t);
	check_ids(S, pids[S], pids[S]);
	check_ids(N, pids[S], pids[S]);
	check_ids(N2, pids[S], pids[S]);
	reap(Z1, 11);
	reap(Z2, 12);
	reap(N2, 7);
	stop(L);
	stop(N);
	stop(S);
	return pass();
}
