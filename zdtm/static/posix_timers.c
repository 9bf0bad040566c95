/*
 * posix_timers: POSIX timers made with the raw timer_create() (kernel ids):
 *   real    CLOCK_REALTIME,  SIGEV_SIGNAL SIGUSR1, one-shot in 1 h
 *   tick    CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN+1, in 1 h then every 100 ms
 *   idle    CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN+2, disarmed
 *   (a timer made and deleted here, so the ids have a hole)
 *   thread  CLOCK_MONOTONIC, SIGEV_THREAD_ID SIGUSR2 to a second thread, in 1 h
 *   quiet   CLOCK_BOOTTIME,  SIGEV_NONE, in 1 h then every 1 s
 *   cpu     CLOCK_PROCESS_CPUTIME_ID, SIGEV_SIGNAL SIGRTMIN+3, after 1 h of CPU time
 * each with its own sigev_value. After restore: /proc/self/timers lists the same timers
 * (ids, clocks, signals, values, targets); each has its interval and a remaining time
 * that did not grow; the deleted id is still free; each signalling timer, re-armed to fire
 * now, delivers its signal with SI_TIMER, its id and its value (the thread one to the
 * thread); the periodic one, left to expire with its signal blocked, counts overruns.
 */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "zdtmtst.h"

#define HOUR 3600
#define NS 1000000000LL

enum { REAL, TICK, IDLE, THREAD, QUIET, CPU, NTIMERS };

struct spec {
	const char *name;
	clockid_t clock;
	int notify, signo;
	long long value_ns, interval_ns;
	unsigned long cookie;
};

static struct spec specs[NTIMERS] = {
	[REAL] = { "real", CLOCK_REALTIME, SIGEV_SIGNAL, SIGUSR1, HOUR * NS, 0, 0x1111 },
	[TICK] = { "tick", CLOCK_MONOTONIC, SIGEV_SIGNAL, 0, HOUR * NS, NS / 10, 0x2222 },
	[IDLE] = { "idle", CLOCK_MONOTONIC, SIGEV_SIGNAL, 0, 0, 0, 0x3333 },
	[THREAD] = { "thread", CLOCK_MONOTONIC, SIGEV_THREAD_ID, SIGUSR2, HOUR * NS, 0, 0x4444 },
	[QUIET] = { "quiet", CLOCK_BOOTTIME, SIGEV_NONE, 0, HOUR * NS, NS, 0x5555 },
	[CPU] = { "cpu", CLOCK_PROCESS_CPUTIME_ID, SIGEV_SIGNAL, 0, HOUR * NS, 0, 0x6666 },
};
static int ids[NTIMERS];
static int hole = -1;
static pid_t thread_tid;
static siginfo_t thread_got;
static sigset_t timer_sigs;

static int k_timer_create(clockid_t clock, struct sigevent *ev, int *id)
{
	return syscall(SYS_timer_create, clock, ev, id);
}

static int k_timer_settime(int id, long long value_ns, long long interval_ns)
{
	struct itimerspec it = {
		.it_value = { value_ns / NS, value_ns % NS },
		.it_interval = { interval_ns / NS, interval_ns % NS },
	};

	return syscall(SYS_timer_settime, id, 0, &it, NULL);
}

static long long ns_of(const struct timespec *t)
{
	return t->tv_sec * NS + t->tv_nsec;
}

/* The thread SIGEV_THREAD_ID timer signals: waits for SIGUSR2 (blocked everywhere). */
static void *target(void *arg)
{
	sigset_t only;

	(void)arg;
	thread_tid = gettid();
	sigemptyset(&only);
	sigaddset(&only, SIGUSR2);
	while (sigwaitinfo(&only, &thread_got) < 0)
		; /* EINTR: the harness and the engine stop the thread */
	return NULL;
}

static int make_timer(int i)
{
	struct spec *s = &specs[i];
	struct sigevent ev;

	memset(&ev, 0, sizeof(ev));
	ev.sigev_notify = s->notify;
	ev.sigev_signo = s->signo;
	ev.sigev_value.sival_ptr = (void *)s->cookie;
	if (s->notify == SIGEV_THREAD_ID)
		ev._sigev_un._tid = thread_tid;
	if (k_timer_create(s->clock, &ev, &ids[i])) {
		pr_perror("timer_create %s", s->name);
		return -1;
	}
	if (s->value_ns && k_timer_settime(ids[i], s->value_ns, s->interval_ns)) {
		pr_perror("timer_settime %s", s->name);
		return -1;
	}
	return 0;
}

static int cmp_blocks(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* /proc/self/timers with its blocks (one per timer, each from "ID:") sorted. */
static int read_timers(char *out, size_t size)
{
	static char raw[4096];
	char *blocks[64], *p;
	int n = 0;
	ssize_t len = test_read_file("/proc/self/timers", raw, sizeof(raw) - 1);

	if (len < 0)
		return -1;
	while (len > 0 && raw[len - 1] == '\n')
		len--; /* every block then ends without its newline, the last one too */
	raw[len] = '\0';
	for (p = strstr(raw, "ID:"); p && n < 64; p = strstr(p + 1, "\nID:")) {
		if (*p == '\n')
			*p++ = '\0';
		blocks[n++] = p;
	}
	qsort(blocks, n, sizeof(blocks[0]), cmp_blocks);
	out[0] = '\0';
	for (int i = 0; i < n; i++) {
		strncat(out, blocks[i], size - strlen(out) - 2);
		strcat(out, "\n");
	}
	return 0;
}

/* Re-arm timer i to fire in 1 ms and take its signal (blocked) from the process queue. */
static void fire_and_take(int i)
{
	struct timespec wait = { 5, 0 };
	sigset_t one;
	siginfo_t si;

	sigemptyset(&one);
	sigaddset(&one, specs[i].signo);
	if (k_timer_settime(ids[i], NS / 1000, 0)) {
		fail_perror("timer_settime %s", specs[i].name);
		return;
	}
	if (sigtimedwait(&one, &si, &wait) < 0) {
		fail_perror("no signal %d from timer %s", specs[i].signo, specs[i].name);
		return;
	}
	if (si.si_code != SI_TIMER || si.si_timerid != ids[i] ||
	    (unsigned long)si.si_value.sival_ptr != specs[i].cookie)
		fail("timer %s: signal code %d timer %d value %#lx, expected %d %d %#lx",
		     specs[i].name, si.si_code, si.si_timerid,
		     (unsigned long)si.si_value.sival_ptr, SI_TIMER, ids[i], specs[i].cookie);
}

static void check_times(int i, const struct itimerspec *before)
{
	struct itimerspec cur;

	if (syscall(SYS_timer_gettime, ids[i], &cur)) {
		fail_perror("timer_gettime %s (id %d)", specs[i].name, ids[i]);
		return;
	}
	if (ns_of(&cur.it_interval) != specs[i].interval_ns)
		fail("timer %s: interval %lld ns, expected %lld", specs[i].name,
		     ns_of(&cur.it_interval), specs[i].interval_ns);
	if (!specs[i].value_ns) {
		if (ns_of(&cur.it_value))
			fail("timer %s: armed (%lld ns left), was disarmed", specs[i].name,
			     ns_of(&cur.it_value));
		return;
	}
	if (ns_of(&cur.it_value) <= 0 || ns_of(&cur.it_value) > ns_of(&before->it_value))
		fail("timer %s: %lld ns left, %lld before (must be armed, not grown)",
		     specs[i].name, ns_of(&cur.it_value), ns_of(&before->it_value));
}

static void check_overrun(void)
{
	struct timespec nap = { 0, 50 * 1000 * 1000 }, wait = { 5, 0 };
	sigset_t one;
	siginfo_t si;
	int over;

	sigemptyset(&one);
	sigaddset(&one, specs[TICK].signo);
	if (k_timer_settime(ids[TICK], NS / 1000, NS / 1000)) {
		fail_perror("timer_settime tick");
		return;
	}
	nanosleep(&nap, NULL); /* ~50 expiries, one signal queued */
	if (sigtimedwait(&one, &si, &wait) < 0) {
		fail_perror("no signal from the periodic timer");
		return;
	}
	over = syscall(SYS_timer_getoverrun, ids[TICK]);
	if (si.si_overrun < 10 || over != si.si_overrun)
		fail("periodic timer: si_overrun %d, timer_getoverrun %d, expected >= 10 and equal",
		     si.si_overrun, over);
	k_timer_settime(ids[TICK], 0, 0);
}

int main(int argc, char **argv)
{
	static char before[4096], after[4096];
	struct itimerspec times[NTIMERS];
	struct sigevent ev = { .sigev_notify = SIGEV_NONE };
	pthread_t th;
	int filler;

	test_init(argc, argv);

	specs[TICK].signo = SIGRTMIN + 1;
	specs[IDLE].signo = SIGRTMIN + 2;
	specs[CPU].signo = SIGRTMIN + 3;
	sigemptyset(&timer_sigs);
	for (int i = 0; i < NTIMERS; i++)
		if (specs[i].signo)
			sigaddset(&timer_sigs, specs[i].signo);
	/* before the thread exists, so it inherits the mask */
	if (sigprocmask(SIG_BLOCK, &timer_sigs, NULL)) {
		pr_perror("sigprocmask");
		return 1;
	}
	if (test_thread_create(&th, target, NULL)) {
		pr_perror("thread");
		return 1;
	}
	while (!__atomic_load_n(&thread_tid, __ATOMIC_SEQ_CST))
		usleep(1000);
	if (make_timer(REAL) || make_timer(TICK) || make_timer(IDLE))
		return 1;
	if (k_timer_create(CLOCK_MONOTONIC, &ev, &filler) ||
	    syscall(SYS_timer_delete, filler)) {
		pr_perror("filler timer");
		return 1;
	}
	hole = filler;
	if (make_timer(THREAD) || make_timer(QUIET) || make_timer(CPU))
		return 1;
	for (int i = 0; i < NTIMERS; i++)
		if (syscall(SYS_timer_gettime, ids[i], &times[i])) {
			pr_perror("timer_gettime %s", specs[i].name);
			return 1;
		}
	if (read_timers(before, sizeof(before))) {
		pr_perror("/proc/self/timers");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (read_timers(after, sizeof(after)))
		return fail_perror("/proc/self/timers");
	if (strcmp(before, after))
		fail("/proc/self/timers before:\n%s\nafter:\n%s", before, after);
	for (int i = 0; i < NTIMERS; i++)
		check_times(i, &times[i]);
	if (syscall(SYS_timer_gettime, hole, &times[0]) == 0)
		fail("timer id %d, deleted before, exists", hole);
	fire_and_take(REAL);
	check_overrun();
	if (k_timer_settime(ids[THREAD], NS / 1000, 0))
		fail_perror("timer_settime thread");
	else if (test_thread_join(th, NULL, 5000))
		fail_perror("the target thread did not get its signal");
	else if (thread_got.si_code != SI_TIMER || thread_got.si_timerid != ids[THREAD] ||
		 (unsigned long)thread_got.si_value.sival_ptr != specs[THREAD].cookie)
		fail("thread timer: code %d timer %d value %#lx", thread_got.si_code,
		     thread_got.si_timerid, (unsigned long)thread_got.si_value.sival_ptr);
	return pass();
}
