/*
 * task_name: the task's name (comm) set with PR_SET_NAME, for the main thread and, to
 * another value, for a second thread. After restore /proc/self/task/TID/comm and
 * PR_GET_NAME give the same names.
 */
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "zdtmtst.h"

#define MAIN_NAME "zdtm-main-nm"
#define THREAD_NAME "zdtm-thread-nm"

static struct test_sleeper sleeper;

static void *thread_main(void *arg)
{
	(void)arg;
	prctl(PR_SET_NAME, THREAD_NAME);
	/* Just stay alive until the main thread is done checking. */
	while (test_sleeper_sleep(&sleeper) && errno == EINTR)
		;
	return NULL;
}

int main(int argc, char **argv)
{
	char name[17] = "";
	pid_t tid;

	test_init(argc, argv);

	if (prctl(PR_SET_NAME, MAIN_NAME)) {
		pr_perror("PR_SET_NAME");
		return 1;
	}
	if (test_sleeper_start(&sleeper, thread_main, NULL)) {
		pr_perror("start the second thread");
		return 1;
	}
	tid = sleeper.tid;
	if (strcmp(task_comm(tid), THREAD_NAME)) {
		pr_err("the thread did not name itself");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (prctl(PR_GET_NAME, name) || strcmp(name, MAIN_NAME))
		fail("PR_GET_NAME gives '%s', expected '%s'", name, MAIN_NAME);
	if (strcmp(task_comm(gettid()), MAIN_NAME))
		fail("main thread comm is '%s', expected '%s'", task_comm(gettid()), MAIN_NAME);
	if (strcmp(task_comm(tid), THREAD_NAME))
		fail("thread %d comm is '%s', expected '%s'", tid, task_comm(tid), THREAD_NAME);
	if (test_sleeper_wake(&sleeper, 10000))
		return fail_perror("wake and join the second thread");
	return pass();
}
