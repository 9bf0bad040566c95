/*
 * session_pgid: sessions and process groups.
 *
 * The test (T) leads its own session. Child A is in T's session, in its own process group.
 * Child B started a new session; its child C is in B's session but in its own process group
 * (a group whose session leader is another task). After restore every task checks its own
 * pgid and sid, and T checks all of them from outside.
 */
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtmtst.h"

struct ids {
	pid_t pid, pgid, sid;
};

/* Each task's own check after SIGTERM: exit 0 when its ids are unchanged. */
static int check_self(const struct ids *want, const char *who)
{
	test_waitsig();
	if (getpgid(0) != want->pgid || getsid(0) != want->sid) {
		test_msg("%s: pgid %d sid %d, expected %d %d", who, getpgid(0), getsid(0),
			 want->pgid, want->sid);
		return 1;
	}
	return 0;
}

/* Stop a child and collect its verdict: 0 when it exited 0 (B reports C's in a message). */
static int stop_child(pid_t pid)
{
	int status;

	if (test_stop_child(pid, &status, 10000))
		return -1;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* B: new session, then fork C into its own group; report C's pid. */
static int b_main(int wfd)
{
	struct ids me, c = { 0 };
	int ret;

	if (setsid() < 0) {
		pr_perror("B: setsid");
		return 1;
	}
	me = (struct ids){ getpid(), getpid(), getpid() };
	c.pid = fork();
	if (c.pid < 0) {
		pr_perror("B: fork");
		return 1;
	}
	if (!c.pid) {
		close(wfd);
		if (setpgid(0, 0)) {
			pr_perror("C: setpgid");
			_exit(1);
		}
		c = (struct ids){ getpid(), getpid(), me.sid };
		_exit(check_self(&c, "C"));
	}
	if (write(wfd, &c.pid, sizeof(c.pid)) != sizeof(c.pid)) {
		pr_perror("B: report C");
		return 1;
	}
	close(wfd);
	ret = check_self(&me, "B");
	if (stop_child(c.pid)) {
		test_msg("B: C %d failed or did not exit", c.pid);
		ret = 1;
	}
	return ret;
}

int main(int argc, char **argv)
{
	pid_t t, a, b, c;
	int p[2];

	test_init(argc, argv);
	t = getpid();
	if (getsid(0) != t) {
		pr_err("the test is not a session leader");
		return 1;
	}
	if (pipe2(p, O_CLOEXEC | O_NONBLOCK)) {
		pr_perror("pipe");
		return 1;
	}
	a = fork();
	if (a == 0) {
		struct ids me;

		close(p[0]);
		close(p[1]);
		if (setpgid(0, 0))
			_exit(1);
		me = (struct ids){ getpid(), getpid(), t };
		_exit(check_self(&me, "A"));
	}
	b = a > 0 ? fork() : -1;
	if (b == 0) {
		close(p[0]);
		_exit(b_main(p[1]));
	}
	if (a < 0 || b < 0) {
		pr_perror("fork");
		if (a > 0)
			kill(a, SIGKILL);
		return 1;
	}
	close(p[1]);
	/* C's pid, with a deadline of a few seconds. */
	if (test_read_timeout(p[0], &c, sizeof(c), 5000))
		c = -1;
	close(p[0]);
	/* A's setpgid may not have run yet: wait (with a deadline) until it has. */
	for (int i = 0; i < 5000 && (getpgid(a) != a || getpgid(c) != c); i++)
		usleep(1000);
	if (c < 0 || getpgid(a) != a || getpgid(c) != c) {
		pr_err("children did not set up their groups (C %d)", c);
		if (c > 0)
			kill(c, SIGKILL);
		test_kill_child(a);
		test_kill_child(b);
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (getpgid(0) != t || getsid(0) != t)
		fail("T: pgid %d sid %d, expected %d", getpgid(0), getsid(0), t);
	if (getpgid(a) != a || getsid(a) != t)
		fail("A: pgid %d sid %d, expected %d %d", getpgid(a), getsid(a), a, t);
	if (getpgid(b) != b || getsid(b) != b)
		fail("B: pgid %d sid %d, expected %d %d", getpgid(b), getsid(b), b, b);
	if (getpgid(c) != c || getsid(c) != b)
		fail("C: pgid %d sid %d, expected %d %d", getpgid(c), getsid(c), c, b);
	if (stop_child(a))
		fail("A %d failed its own check or did not exit", a);
	if (stop_child(b))
		fail("B %d (or its child C) failed its own check or did not exit", b);
	return pass();
}
