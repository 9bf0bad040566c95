/*
 * itimer: a periodic ITIMER_REAL timer (100 ms) with a SIGALRM handler. After restore the
 * timer is still armed with the same interval and keeps firing: at least 3 ticks within
 * one second.
 */
#include <sys/time.h>
#include <time.h>

#include "zdtmtst.h"

#define INTERVAL_US 100000

static volatile sig_atomic_t ticks;

static void on_alarm(int sig)
{
	(void)sig;
	ticks++;
}

int main(int argc, char **argv)
{
	struct itimerval it = {
		.it_interval = { 0, INTERVAL_US },
		.it_value = { 0, INTERVAL_US },
	};
	struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = SA_RESTART };
	struct timespec nap = { 0, 10 * 1000 * 1000 };
	sig_atomic_t start;

	test_init(argc, argv);

	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGALRM, &sa, NULL) || setitimer(ITIMER_REAL, &it, NULL)) {
		pr_perror("sigaction/setitimer");
		return 1;
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
	start = ticks;
	for (int i = 0; i < 100 && ticks - start < 3; i++)
		nanosleep(&nap, NULL);
	if (ticks - start < 3)
		return fail("%d SIGALRM ticks in a second, expected at least 3", ticks - start);
	return pass();
}
