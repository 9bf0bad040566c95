/*
 * task_stopped: children stopped by SIGSTOP at dump time, one of them with a second
 * thread (SIGTSTP would be discarded: the test's process group is orphaned). After restore
 * both are still stopped ('T'); SIGCONT wakes them, and each then reports as usual (the
 * threaded one after waking its thread). The first child has one more SIGSTOP pending.
 * Each child is stopped only once it said it is ready and then went to sleep (in
 * test_waitsig's sigsuspend: the next call that can block): a child stopped halfway
 * through its set-up would show the rest of it as soon as it runs.
 */
#include <errno.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtmtst.h"

#define NR 2

static struct test_sleeper sleeper;

static void *sleeper_fn(void *arg)
{
	(void)arg;
	return test_sleeper_sleep(&sleeper) ? (void *)1 : NULL;
}

static int child_main(int fd, void *arg)
{
	if (arg && test_sleeper_start(&sleeper, sleeper_fn, NULL))
		return 1;
	if (write(fd, "R", 1) != 1)
		return 3;
	test_waitsig();
	if (arg && test_sleeper_wake(&sleeper, 10000))
		return 2;
	return 0;
}

/* Wait (10 s) until child pid sleeps: 0, or -1. */
static int wait_asleep(pid_t pid)
{
	char state = 0;

	for (int i = 0; i < 10000; i++) {
		if (proc_stat(pid, &state, NULL))
			return -1;
		if (state == 'S')
			return 0;
		usleep(1000);
	}
	errno = ETIMEDOUT;
	return -1;
}

/* Stop child pid with sig and wait until its stop is reported: 0, or -1. */
static int stop_child(pid_t pid, int sig)
{
	int status;

	if (kill(pid, sig) || waitpid(pid, &status, WUNTRACED) != pid)
		return -1;
	return WIFSTOPPED(status) && WSTOPSIG(status) == sig ? 0 : -1;
}

int main(int argc, char **argv)
{
	pid_t child[NR];
	char state, ready;
	int fd;

	test_init(argc, argv);

	for (int i = 0; i < NR; i++) {
		child[i] = test_fork_child(TEST_PIPE_FROM_CHILD, &fd, child_main,
					   i ? &sleeper : NULL);
		if (child[i] < 0)
			return 1;
		if (test_read_timeout(fd, &ready, 1, 10000) || wait_asleep(child[i])) {
			pr_perror("child %d not ready", child[i]);
			return 1;
		}
		close(fd);
		if (stop_child(child[i], SIGSTOP)) {
			pr_perror("stop child %d", child[i]);
			return 1;
		}
	}
	/* A stop signal sent to a stopped task stays pending until SIGCONT flushes it. */
	if (kill(child[0], SIGSTOP)) {
		pr_perror("second SIGSTOP");
		return 1;
	}

	test_daemon();
	test_waitsig();

	for (int i = 0; i < NR; i++) {
		if (proc_stat(child[i], &state, NULL))
			fail_perror("child %d is gone", child[i]);
		else if (state != 'T')
			fail("child %d is in state %c, not stopped", child[i], state);
	}
	for (int i = 0; i < NR; i++) {
		/* SIGTERM stays pending while stopped; SIGCONT lets the child take it. */
		if (kill(child[i], SIGCONT))
			fail_perror("SIGCONT to %d", child[i]);
		if (stop_child_verdict(child[i], 10000))
			fail("child %d", child[i]);
	}
	return pass();
}
