/*
 * thread.c - the test's extra threads. SIGTERM belongs to the main thread (test_waitsig()),
 * so every thread starts with it blocked; joins have deadlines. A "sleeper" is a thread
 * that sits blocked in read() on a pipe through C/R until the main thread wakes it.
 */
#include <fcntl.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "zdtmtst.h"
#include "zdtmtst_int.h"

/* How long test_sleeper_start() waits for the thread to reach test_sleeper_sleep(). */
#define SLEEPER_START_MS 5000

int test_thread_create(pthread_t *th, void *(*fn)(void *), void *arg)
{
	sigset_t term, old;
	int err;

	/* The new thread inherits the mask in force at pthread_create(). */
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &term, &old);
	err = pthread_create(th, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err) {
		errno = err;
		return -1;
	}
	return 0;
}

int test_thread_join(pthread_t th, void **ret, int timeout_ms)
{
	struct timespec deadline;
	int err;

	test_deadline(CLOCK_REALTIME, timeout_ms, &deadline);
	err = pthread_timedjoin_np(th, ret, &deadline);
	if (err) {
		errno = err;
		return -1;
	}
	return 0;
}

int test_sleeper_start(struct test_sleeper *s, void *(*fn)(void *), void *arg)
{
	s->tid = 0;
	s->ready = 0;
	if (pipe2(s->wake, O_CLOEXEC))
		return -1;
	if (test_thread_create(&s->th, fn, arg))
		return -1;
	for (int i = 0; i < SLEEPER_START_MS && !__atomic_load_n(&s->ready, __ATOMIC_ACQUIRE); i++)
		usleep(1000);
	if (!__atomic_load_n(&s->ready, __ATOMIC_ACQUIRE)) {
		errno = ETIMEDOUT;
		return -1;
	}
	return 0;
}

int test_sleeper_sleep(struct test_sleeper *s)
{
	ssize_t n;
	char c;

	s->tid = gettid();
	__atomic_store_n(&s->ready, 1, __ATOMIC_RELEASE);
	n = read(s->wake[0], &c, 1);
	if (n == 1)
		return 0;
	if (n == 0)
		errno = EPIPE; /* the write end is gone: nobody can wake us any more */
	return -1;
}

int test_sleeper_wake(struct test_sleeper *s, int timeout_ms)
{
	if (write(s->wake[1], "w", 1) != 1)
		return -1;
	return test_thread_join(s->th, NULL, timeout_ms);
}
