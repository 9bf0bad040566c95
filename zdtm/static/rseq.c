/*
 * rseq: restartable sequences stay registered. glibc registers an rseq area in every
 * thread; after restore both the main thread and a second thread must still have it
 * registered at the same address with the same length and signature. The probe is a
 * second registration with the same arguments, which the kernel refuses with EBUSY only
 * when exactly that registration exists (0: there was none, EINVAL/EPERM: another one).
 * glibc does not publish the length it registered (__rseq_size is the feature size), so
 * the test finds it at setup: the one length the kernel answers EBUSY for.
 */
#include <stdio.h>
#include <string.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "zdtmtst.h"

static struct test_sleeper sleeper;
static char thread_problem[128];
static unsigned int rseq_len;	/* as registered by glibc, found at setup */

static void *rseq_area(void)
{
	return (char *)__builtin_thread_pointer() + __rseq_offset;
}

/* NULL when this thread's glibc registration is in place, else what is wrong. */
static const char *probe(void)
{
	long r = syscall(SYS_rseq, rseq_area(), rseq_len, 0, RSEQ_SIG);

	if (r == -1 && errno == EBUSY)
		return NULL;
	if (r == 0)
		return "rseq was not registered";
	if (errno == EINVAL)
		return "rseq is registered at another address or with another length";
	if (errno == EPERM)
		return "rseq is registered with another signature";
	return strerror(errno);
}

static void *thread_main(void *arg)
{
	const char *why;

	(void)arg;
	if (test_sleeper_sleep(&sleeper)) {
		snprintf(thread_problem, sizeof(thread_problem), "read: %s", strerror(errno));
		return NULL;
	}
	why = probe();
	if (why)
		snprintf(thread_problem, sizeof(thread_problem), "%s", why);
	return NULL;
}

int main(int argc, char **argv)
{
	const char *why;

	test_init(argc, argv);

	if (__rseq_size == 0)
		return skip("glibc did not register rseq (tunable glibc.pthread.rseq=0?)");
	/* The kernel's struct rseq is at least 32 bytes, 4-byte multiples; a page is plenty. */
	for (rseq_len = 32; rseq_len <= 4096 && probe(); rseq_len += 4)
		;
	why = probe();
	if (why) {
		pr_err("before C/R: %s", why);
		return 1;
	}
	if (test_sleeper_start(&sleeper, thread_main, NULL)) {
		pr_perror("start the second thread");
		return 1;
	}

	test_daemon();
	test_waitsig();

	why = probe();
	if (why)
		fail("main thread: %s", why);
	if (test_sleeper_wake(&sleeper, 10000))
		return fail_perror("wake and join the second thread");
	if (thread_problem[0])
		return fail("second thread: %s", thread_problem);
	return pass();
}
