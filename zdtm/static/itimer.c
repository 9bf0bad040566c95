/*
 * itimer: an armed ITIMER_REAL timer with a 100 ms interval and a SIGALRM handler. The first
 * expiry is an hour away so that no SIGALRM can become pending while the harness holds the
 * tree stopped (a static test must not change state between its snapshots). After restore
 * the timer is still armed, with the same interval and a value that has been counting down;
 * re-armed to expire now, it keeps firing: at least 3 ticks within one second.
 * ITIMER_VIRTUAL and ITIMER_PROF (CPU time: an hour of it never passes here) are armed
 * too, with intervals of 10 and 20 ms: after restore each has its interval and a value
 * that did not grow.
 */
#include <sys/time.h>
#include <time.h>

#include "zdtmtst.h"

#define INTERVAL_US 100000
#define FIRST_S 3600

static volatile sig_atomic_t ticks;

static const struct {
	int which;
	const char *name;
	long interval_us;
} cpu_timers[] = {
	{ ITIMER_VIRTUAL, "ITIMER_VIRTUAL", 10000 },
	{ ITIMER_PROF, "ITIMER_PROF", 20000 },
};

static long long us_of(const struct timeval *t)
{
	return t->tv_sec * 1000000LL + t->tv_usec;
}

static void on_alarm(int sig)
{
	(void)sig;
	ticks++;
}

int main(int argc, char **argv)
{
	struct itimerval it = {
		.it_interval = { 0, INTERVAL_US },
		.it_value = { FIRST_S, 0 },
	};
	struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = SA_RESTART };
	struct timespec nap = { 0, 10 * 1000 * 1000 };
	struct itimerval cpu_before[2], cpu;
	sig_atomic_t start;

	test_init(argc, argv);

	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGALRM, &sa, NULL) || setitimer(ITIMER_REAL, &it, NULL)) {
		pr_perror("sigaction/setitimer");
		return 1;
	}
	for (int i = 0; i < 2; i++) {
		struct itimerval c = { .it_interval = { 0, cpu_timers[i].interval_us },
				       .it_value = { FIRST_S, 0 } };

		if (setitimer(cpu_timers[i].which, &c, NULL) ||
		    getitimer(cpu_timers[i].which, &cpu_before[i])) {
			pr_perror("setitimer %s", cpu_timers[i].name);
			return 1;
		}
	}

	test_daemon();
	test_waitsig();

	if (getitimer(ITIMER_REAL, &it))
		return fail_perror("getitimer");
	if (it.it_interval.tv_sec != 0 || it.it_interval.tv_usec != INTERVAL_US)
		return fail("interval %ld.%06ld s, expected 0.%06d s", (long)it.it_interval.tv_sec,
			    (long)it.it_interval.tv_usec, INTERVAL_US);
	if (it.it_value.tv_sec == 0 && it.it_value.tv_usec == 0)
		return fail("the timer is disarmed");
	if (it.it_value.tv_sec >= FIRST_S)
		return fail("the timer did not count down: %ld.%06ld s left of %d s",
			    (long)it.it_value.tv_sec, (long)it.it_value.tv_usec, FIRST_S);
	if (ticks)
		return fail("%d SIGALRM tick(s) before the first expiry", (int)ticks);
	for (int i = 0; i < 2; i++) {
		if (getitimer(cpu_timers[i].which, &cpu))
			return fail_perror("getitimer %s", cpu_timers[i].name);
		if (us_of(&cpu.it_interval) != cpu_timers[i].interval_us ||
		    us_of(&cpu.it_value) <= 0 ||
		    us_of(&cpu.it_value) > us_of(&cpu_before[i].it_value))
			fail("%s: interval %lld us value %lld us, expected %ld us and at most "
			     "%lld us", cpu_timers[i].name, us_of(&cpu.it_interval),
			     us_of(&cpu.it_value), cpu_timers[i].interval_us,
			     us_of(&cpu_before[i].it_value));
	}
	it.it_value = it.it_interval;
	if (setitimer(ITIMER_REAL, &it, NULL))
		return fail_perror("setitimer");
	start = ticks;
	for (int i = 0; i < 100 && ticks - start < 3; i++)
		nanosleep(&nap, NULL);
	if (ticks - start < 3)
		return fail("%d SIGALRM ticks in a second, expected at least 3", ticks - start);
	return pass();
}
