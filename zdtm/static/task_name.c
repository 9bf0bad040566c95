/*
 * task_name: the task's name (comm) set with PR_SET_NAME, for the main thread and, to
 * another value, for a second thread. After restore /proc/self/task/TID/comm and
 * PR_GET_NAME give the same names.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "zdtmtst.h"

#define MAIN_NAME "zdtm-main-nm"
#define THREAD_NAME "zdtm-thread-nm"

static int wake[2];
static pid_t thread_tid;
static volatile int thread_ready;

static void *thread_main(void *arg)
{
	char c;

	(void)arg;
	prctl(PR_SET_NAME, THREAD_NAME);
	thread_tid = gettid();
	__atomic_store_n(&thread_ready, 1, __ATOMIC_RELEASE);
	/* Just stay alive until the main thread is done checking. */
	while (read(wake[0], &c, 1) < 0 && errno == EINTR)
		;
	return NULL;
}

/* The comm of thread tid as /proc shows it (without the newline); "" when unreadable. */
static const char *comm_of(pid_t tid)
{
	static char buf[64];
	char path[64];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/self/task/%d/comm", tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
	if (fd >= 0)
		close(fd);
	buf[n > 0 ? n : 0] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	return buf;
}

int main(int argc, char **argv)
{
	struct timespec deadline;
	sigset_t term, old;
	char name[17] = "";
	pthread_t th;
	int err;

	test_init(argc, argv);

	if (prctl(PR_SET_NAME, MAIN_NAME) || pipe2(wake, O_CLOEXEC)) {
		pr_perror("PR_SET_NAME/pipe");
		return 1;
	}
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &term, &old);
	err = pthread_create(&th, NULL, thread_main, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err) {
		errno = err;
		pr_perror("pthread_create");
		return 1;
	}
	for (int i = 0; i < 5000 && !__atomic_load_n(&thread_ready, __ATOMIC_ACQUIRE); i++)
		usleep(1000);
	if (!thread_ready || strcmp(comm_of(thread_tid), THREAD_NAME)) {
		pr_err("the thread did not start or name itself");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (prctl(PR_GET_NAME, name) || strcmp(name, MAIN_NAME))
		fail("PR_GET_NAME gives '%s', expected '%s'", name, MAIN_NAME);
	if (strcmp(comm_of(gettid()), MAIN_NAME))
		fail("main thread comm is '%s', expected '%s'", comm_of(gettid()), MAIN_NAME);
	if (strcmp(comm_of(thread_tid), THREAD_NAME))
		fail("thread %d comm is '%s', expected '%s'", thread_tid, comm_of(thread_tid),
		     THREAD_NAME);
	if (write(wake[1], "w", 1) != 1)
		return fail_perror("wake the thread");
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 10;
	err = pthread_timedjoin_np(th, NULL, &deadline);
	if (err) {
		errno = err;
		return fail_perror("join");
	}
	return pass();
}
