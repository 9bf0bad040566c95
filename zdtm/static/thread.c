/*
 * thread: a second thread (pthread) blocked in read() on a pipe, with its own TLS value and
 * its own signal mask. After restore there are still two threads; woken through the pipe,
 * the thread finds its tid, TLS value and mask unchanged, and the main thread's TLS is its
 * own too.
 */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtmtst.h"

#define MAIN_TLS 0x11111111UL
#define THREAD_TLS 0x22222222UL

static __thread unsigned long tls_value;
static struct test_sleeper sleeper;

/* What the thread found after it was woken (the thread's verdict). */
static char thread_problem[256];

static void *thread_main(void *arg)
{
	sigset_t mask, now;
	pid_t tid = gettid();

	(void)arg;
	tls_value = THREAD_TLS;
	/* SIGTERM is blocked already (for the main thread); SIGUSR2 makes this mask our own. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);

	if (test_sleeper_sleep(&sleeper)) {
		snprintf(thread_problem, sizeof(thread_problem), "read: %s", strerror(errno));
		return NULL;
	}
	pthread_sigmask(SIG_BLOCK, NULL, &now);
	if (gettid() != tid)
		snprintf(thread_problem, sizeof(thread_problem), "tid %d, was %d", gettid(), tid);
	else if (tls_value != THREAD_TLS)
		snprintf(thread_problem, sizeof(thread_problem), "TLS %#lx, expected %#lx",
			 tls_value, THREAD_TLS);
	else if (!sigismember(&now, SIGUSR2))
		snprintf(thread_problem, sizeof(thread_problem), "SIGUSR2 no longer blocked");
	return NULL;
}

static int count_threads(void)
{
	struct stat st;

	/* A directory's link count is 2 + its subdirectories: the task/ entries. */
	if (stat("/proc/self/task", &st))
		return -1;
	return (int)st.st_nlink - 2;
}

int main(int argc, char **argv)
{
	int n;

	test_init(argc, argv);
	tls_value = MAIN_TLS;

	if (test_sleeper_start(&sleeper, thread_main, NULL)) {
		pr_perror("start the second thread");
		return 1;
	}
	if (count_threads() != 2) {
		pr_err("%d threads, expected 2", count_threads());
		return 1;
	}

	test_daemon();
	test_waitsig();

	n = count_threads();
	if (n != 2)
		return fail("%d threads, expected 2", n);
	if (tls_value != MAIN_TLS)
		fail("main thread TLS %#lx, expected %#lx", tls_value, MAIN_TLS);
	if (test_sleeper_wake(&sleeper, 10000))
		return fail_perror("wake and join thread %d", sleeper.tid);
	if (thread_problem[0])
		return fail("thread %d: %s", sleeper.tid, thread_problem);
	return pass();
}
