/*
 * task_attrs: per-task state beyond memory and fds.
 *
 * The process runs with uids 1 2 3 (fsuid 3) and gids 5 6 7 (fsgid 8), groups 5 and 9,
 * SCHED_BATCH at its starting nice + 2, oom_score_adj 321, a SIGTRAP handler, and is not
 * dumpable (the kernel clears the flag when the ids change). A second thread runs SCHED_OTHER
 * at nice + 5
 * (not SCHED_IDLE: on a loaded machine a killed idle thread can linger and keep its tid
 * from the restore). After restore every one of these is the same, per thread, and
 * SIGTRAP still reaches the handler.
 */
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "zdtmtst.h"

/* Above the starting nice: lowering it needs CAP_SYS_NICE in the initial user namespace,
 * which the uns flavour lacks when the harness itself runs under nice. */
#define NICE_UP 2
#define THREAD_NICE_UP 5
#define OOM_ADJ 321

static volatile sig_atomic_t traps;
static struct test_sleeper sleeper;
static volatile int thread_policy = -1, thread_nice = -100;
static int nice_val, thread_nice_val;

static void trap_handler(int sig)
{
	(void)sig;
	traps++;
}

static void *other_thread(void *arg)
{
	struct sched_param sp = { 0 };

	(void)arg;
	/* Per thread: PRIO_PROCESS with 0 is the calling thread on Linux. */
	if (sched_setscheduler(0, SCHED_OTHER, &sp) || setpriority(PRIO_PROCESS, 0, thread_nice_val))
		return (void *)1;
	if (test_sleeper_sleep(&sleeper))
		return (void *)1;
	thread_policy = sched_getscheduler(0);
	errno = 0;
	thread_nice = getpriority(PRIO_PROCESS, 0);
	return NULL;
}

static int set_oom_adj(void)
{
	char buf[16];
	int fd = open("/proc/self/oom_score_adj", O_WRONLY);
	int n = snprintf(buf, sizeof(buf), "%d", OOM_ADJ);

	if (fd < 0 || write(fd, buf, (size_t)n) != n) {
		pr_perror("oom_score_adj");
		return -1;
	}
	close(fd);
	return 0;
}

static int set_ids(void)
{
	gid_t groups[2] = { 5, 9 };

	if (setgroups(2, groups) || setresgid(5, 6, 7))
		return -1;
	setfsgid(8);
	if (setresuid(1, 2, 3))
		return -1;
	/* Allowed without privileges: 3 is the saved uid. */
	setfsuid(3);
	return (int)setfsgid((gid_t)-1) == 8 && (int)setfsuid((uid_t)-1) == 3 ? 0 : -1;
}

static void check_ids(void)
{
	uid_t r, e, s;
	gid_t rg, eg, sg, groups[4];
	int n;

	if (getresuid(&r, &e, &s) || r != 1 || e != 2 || s != 3)
		fail("uids are %d %d %d, expected 1 2 3", (int)r, (int)e, (int)s);
	if (getresgid(&rg, &eg, &sg) || rg != 5 || eg != 6 || sg != 7)
		fail("gids are %d %d %d, expected 5 6 7", (int)rg, (int)eg, (int)sg);
	if ((int)setfsuid((uid_t)-1) != 3)
		fail("fsuid is %d, expected 3", (int)setfsuid((uid_t)-1));
	if ((int)setfsgid((gid_t)-1) != 8)
		fail("fsgid is %d, expected 8", (int)setfsgid((gid_t)-1));
	n = getgroups(4, groups);
	if (n != 2 || groups[0] != 5 || groups[1] != 9)
		fail("supplementary groups changed (%d of them)", n);
}

int main(int argc, char **argv)
{
	struct sched_param sp = { 0 };
	struct sigaction sa = { .sa_handler = trap_handler }, old;

	test_init(argc, argv);

	errno = 0;
	nice_val = getpriority(PRIO_PROCESS, 0) + NICE_UP;
	thread_nice_val = nice_val - NICE_UP + THREAD_NICE_UP;
	if (errno || thread_nice_val > 19)
		return skip("started at nice %d: no room for nice %d and %d", nice_val - NICE_UP,
			    nice_val, thread_nice_val);
	if (set_oom_adj() || sched_setscheduler(0, SCHED_BATCH, &sp) ||
	    setpriority(PRIO_PROCESS, 0, nice_val) || sigaction(SIGTRAP, &sa, NULL)) {
		pr_perror("setup");
		return 1;
	}
	if (set_ids()) {
		pr_perror("set ids");
		return 1;
	}
	if (test_sleeper_start(&sleeper, other_thread, NULL)) {
		pr_perror("thread");
		return 1;
	}

	test_daemon();
	test_waitsig();

	check_ids();
	if (sched_getscheduler(0) != SCHED_BATCH)
		fail("policy is %d, expected SCHED_BATCH", sched_getscheduler(0));
	errno = 0;
	if (getpriority(PRIO_PROCESS, 0) != nice_val)
		fail("nice is %d, expected %d", getpriority(PRIO_PROCESS, 0), nice_val);
	if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0)
		fail("the task became dumpable");
	if (test_sleeper_wake(&sleeper, 10000) || thread_policy != SCHED_OTHER ||
	    thread_nice != thread_nice_val)
		fail("the second thread has policy %d nice %d, expected SCHED_OTHER nice %d",
		     thread_policy, thread_nice, thread_nice_val);
	if (sigaction(SIGTRAP, NULL, &old) || old.sa_handler != trap_handler)
		fail("SIGTRAP handler lost");
	raise(SIGTRAP);
	if (traps != 1)
		fail("SIGTRAP reached the handler %d times", traps);
	return pass();
}
