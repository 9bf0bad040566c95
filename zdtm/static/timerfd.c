/*
 * timerfd: three timers — a periodic CLOCK_MONOTONIC one (1 h, then every 30 min), an
 * absolute CLOCK_REALTIME one (TFD_TIMER_ABSTIME, in 2 h) and a disarmed CLOCK_BOOTTIME
 * one. After restore each has its clock, flags, interval, and a remaining time that did
 * not grow; the first still expires when its time comes (checked with a re-arm to 10 ms).
 */
#include <fcntl.h>
#include <stdint.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "zdtmtst.h"

#define HOUR 3600

static long long ns_of(const struct timespec *t)
{
	return t->tv_sec * 1000000000LL + t->tv_nsec;
}

int main(int argc, char **argv)
{
	struct itimerspec per = { .it_value = { HOUR, 0 }, .it_interval = { HOUR / 2, 0 } };
	struct itimerspec abs_t = { 0 }, cur, before_per, before_abs;
	struct timespec now;
	int tper, tabs, toff;
	uint64_t ticks;

	test_init(argc, argv);

	tper = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	tabs = timerfd_create(CLOCK_REALTIME, 0);
	toff = timerfd_create(CLOCK_BOOTTIME, TFD_CLOEXEC);
	if (tper < 0 || tabs < 0 || toff < 0) {
		pr_perror("timerfd_create");
		return 1;
	}
	clock_gettime(CLOCK_REALTIME, &now);
	abs_t.it_value.tv_sec = now.tv_sec + 2 * HOUR;
	if (timerfd_settime(tper, 0, &per, NULL) ||
	    timerfd_settime(tabs, TFD_TIMER_ABSTIME, &abs_t, NULL)) {
		pr_perror("timerfd_settime");
		return 1;
	}
	if (timerfd_gettime(tper, &before_per) || timerfd_gettime(tabs, &before_abs)) {
		pr_perror("timerfd_gettime");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (timerfd_gettime(tper, &cur))
		return fail_perror("timerfd_gettime periodic");
	if (ns_of(&cur.it_interval) != (long long)HOUR / 2 * 1000000000LL)
		fail("periodic interval %lld ns, expected 30 min", ns_of(&cur.it_interval));
	if (ns_of(&cur.it_value) <= 0 || ns_of(&cur.it_value) > ns_of(&before_per.it_value))
		fail("periodic remaining %lld ns, was %lld before (must be armed, not grown)",
		     ns_of(&cur.it_value), ns_of(&before_per.it_value));
	if (timerfd_gettime(tabs, &cur))
		return fail_perror("timerfd_gettime absolute");
	if (ns_of(&cur.it_value) <= 0 || ns_of(&cur.it_value) > ns_of(&before_abs.it_value))
		fail("absolute timer remaining %lld ns, was %lld before",
		     ns_of(&cur.it_value), ns_of(&before_abs.it_value));
	if (timerfd_gettime(toff, &cur))
		return fail_perror("timerfd_gettime disarmed");
	if (ns_of(&cur.it_value) || ns_of(&cur.it_interval))
		fail("the disarmed timer is armed after restore");
	if (!(fcntl(tper, F_GETFL) & O_NONBLOCK) || !(fcntl(toff, F_GETFD) & FD_CLOEXEC))
		fail("timerfd flags lost");
	if (read(tper, &ticks, sizeof(ticks)) != -1 || errno != EAGAIN)
		fail("the periodic timer expired early");
	per.it_value.tv_sec = 0;
	per.it_value.tv_nsec = 10 * 1000 * 1000;
	if (timerfd_settime(tper, 0, &per, NULL))
		return fail_perror("re-arm");
	fcntl(tper, F_SETFL, 0);
	if (read(tper, &ticks, sizeof(ticks)) != sizeof(ticks) || ticks < 1)
		return fail("the re-armed timer does not expire");
	return pass();
}
