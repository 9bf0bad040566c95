/*
 * thread: a second thread (pthread) blocked in read() on a pipe, with its own TLS value and
 * its own signal mask. After restore there are still two threads; woken through the pipe,
 * the thread finds its tid, TLS value and mask unchanged, and the main thread's TLS is its
 * own too.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "zdtmtst.h"

#define MAIN_TLS 0x11111111UL
#define THREAD_TLS 0x22222222UL

static __thread unsigned long tls_value;
static int wake[2];
static pid_t thread_tid;
static volatile int thread_ready;

/* What the thread found after it was woken (the thread's verdict). */
static char thread_problem[256];

static void *thread_main(void *arg)
{
	sigset_t mask, now;
	pid_t tid = gettid();
	char c;

	(void)arg;
	tls_value = THREAD_TLS;
	/* SIGTERM is for the main thread's test_waitsig(); SIGUSR2 makes this mask our own. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGUSR2);
	sigaddset(&mask, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	thread_tid = tid;
	__atomic_store_n(&thread_ready, 1, __ATOMIC_RELEASE);

	if (read(wake[0], &c, 1) != 1) {
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
	struct timespec deadline;
	pthread_t th;
	int n, err;

	test_init(argc, argv);
	tls_value = MAIN_TLS;

	if (pipe2(wake, O_CLOEXEC)) {
		pr_perror("pipe");
		return 1;
	}
	err = pthread_create(&th, NULL, thread_main, NULL);
	if (err) {
		errno = err;
		pr_perror("pthread_create");
		return 1;
	}
	for (int i = 0; i < 5000 && !__atomic_load_n(&thread_ready, __ATOMIC_ACQUIRE); i++)
		usleep(1000);
	if (!thread_ready || count_threads() != 2) {
		pr_err("the thread did not start");
		return 1;
	}

	test_daemon();
	test_waitsig();

	n = count_threads();
	if (n != 2)
		return fail("%d threads, expected 2", n);
	if (tls_value != MAIN_TLS)
		fail("main thread TLS %#lx, expected %#lx", tls_value, MAIN_TLS);
	if (write(wake[1], "w", 1) != 1)
		return fail_perror("wake the thread");
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 10;
	err = pthread_timedjoin_np(th, NULL, &deadline);
	if (err) {
		errno = err;
		return fail_perror("join thread %d", thread_tid);
	}
	if (thread_problem[0])
		return fail("thread %d: %s", thread_tid, thread_problem);
	return pass();
}
