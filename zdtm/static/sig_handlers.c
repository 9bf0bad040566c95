/*
 * sig_handlers: signal dispositions, the blocked mask and pending signals.
 *
 * SIGUSR1 has an SA_SIGINFO handler with its own sa_mask, SIGUSR2 is ignored, SIGRTMIN+2
 * has a handler with SA_NODEFER|SA_RESETHAND. SIGUSR1, SIGRTMIN+3 and SIGRTMIN+4 are
 * blocked and pending: SIGUSR1 once (kill: process-wide), SIGRTMIN+3 queued twice with
 * values (sigqueue: process-wide), SIGRTMIN+4 once for this thread only (tgkill). After
 * restore every sigaction is as before, the mask is the same, the same signals are pending,
 * and unblocking delivers them: SIGUSR1 once, SIGRTMIN+3 twice with the queued values,
 * SIGRTMIN+4 once as a thread-directed signal.
 */
#include <unistd.h>

#include "zdtmtst.h"

#define RT_VAL0 1234
#define RT_VAL1 5678

static volatile sig_atomic_t usr1_count, usr1_code, rt_count, tk_count, tk_code;
static volatile int rt_vals[4];

static void usr1_handler(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	usr1_count++;
	usr1_code = si->si_code;
}

static void rt_handler(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	if (rt_count < 4)
		rt_vals[rt_count] = si->si_value.sival_int;
	rt_count++;
}

static void tk_handler(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	tk_count++;
	tk_code = si->si_code;
}

static void rt2_handler(int sig)
{
	(void)sig;
}

/* The signals whose dispositions are checked, and what they were after setup. */
#define NR_SIGS 5
static int sigs[NR_SIGS];
static struct sigaction before[NR_SIGS];

static bool same_action(const struct sigaction *a, const struct sigaction *b)
{
	if (a->sa_handler != b->sa_handler || a->sa_flags != b->sa_flags)
		return false;
	/* Only the kernel's part of sigset_t is meaningful: compare signal by signal. */
	for (int s = 1; s < NSIG; s++)
		if (sigismember(&a->sa_mask, s) != sigismember(&b->sa_mask, s))
			return false;
	return true;
}

static int setup(void)
{
	struct sigaction sa = { .sa_sigaction = usr1_handler, .sa_flags = SA_SIGINFO };
	union sigval v;
	sigset_t block;

	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGUSR2);
	sigaddset(&sa.sa_mask, SIGRTMIN + 5);
	if (sigaction(SIGUSR1, &sa, NULL))
		return -1;
	sa.sa_sigaction = rt_handler;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGRTMIN + 3, &sa, NULL))
		return -1;
	sa.sa_sigaction = tk_handler;
	if (sigaction(SIGRTMIN + 4, &sa, NULL))
		return -1;
	sa.sa_handler = rt2_handler;
	sa.sa_flags = SA_NODEFER | SA_RESETHAND;
	if (sigaction(SIGRTMIN + 2, &sa, NULL))
		return -1;
	if (signal(SIGUSR2, SIG_IGN) == SIG_ERR)
		return -1;

	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGRTMIN + 3);
	sigaddset(&block, SIGRTMIN + 4);
	if (sigprocmask(SIG_BLOCK, &block, NULL))
		return -1;
	v.sival_int = RT_VAL0;
	if (kill(getpid(), SIGUSR1) || sigqueue(getpid(), SIGRTMIN + 3, v))
		return -1;
	v.sival_int = RT_VAL1;
	if (sigqueue(getpid(), SIGRTMIN + 3, v) || tgkill(getpid(), gettid(), SIGRTMIN + 4))
		return -1;

	sigs[0] = SIGUSR1, sigs[1] = SIGUSR2, sigs[2] = SIGRTMIN + 2, sigs[3] = SIGRTMIN + 3;
	sigs[4] = SIGRTMIN + 4;
	for (int i = 0; i < NR_SIGS; i++)
		if (sigaction(sigs[i], NULL, &before[i]))
			return -1;
	return 0;
}

int main(int argc, char **argv)
{
	sigset_t mask, pending, expect;
	struct sigaction sa;

	test_init(argc, argv);

	if (setup()) {
		pr_perror("signal setup");
		return 1;
	}

	test_daemon();
	test_waitsig();

	for (int i = 0; i < NR_SIGS; i++) {
		if (sigaction(sigs[i], NULL, &sa))
			return fail_perror("sigaction(%d)", sigs[i]);
		if (!same_action(&sa, &before[i]))
			fail("signal %d: handler %p flags %#x, expected %p %#x (or another sa_mask)",
			     sigs[i], (void *)sa.sa_handler, sa.sa_flags,
			     (void *)before[i].sa_handler, before[i].sa_flags);
	}
	sigprocmask(SIG_SETMASK, NULL, &mask);
	sigemptyset(&expect);
	sigaddset(&expect, SIGUSR1);
	sigaddset(&expect, SIGRTMIN + 3);
	sigaddset(&expect, SIGRTMIN + 4);
	for (int s = 1; s < NSIG; s++)
		if (sigismember(&mask, s) != sigismember(&expect, s))
			fail("signal %d is %sblocked", s, sigismember(&mask, s) ? "" : "not ");
	sigpending(&pending);
	for (int s = 1; s < NSIG; s++)
		if (sigismember(&pending, s) != sigismember(&expect, s))
			fail("signal %d is %spending", s, sigismember(&pending, s) ? "" : "not ");
	if (usr1_count || rt_count || tk_count)
		return fail("handlers ran while their signals were blocked");

	sigprocmask(SIG_UNBLOCK, &expect, NULL);
	if (usr1_count != 1 || usr1_code != SI_USER)
		fail("SIGUSR1 delivered %d times (si_code %d), expected once from kill()",
		     usr1_count, usr1_code);
	if (rt_count != 2 || rt_vals[0] != RT_VAL0 || rt_vals[1] != RT_VAL1)
		fail("SIGRTMIN+3 delivered %d times with values %d, %d; expected 2: %d, %d",
		     rt_count, rt_vals[0], rt_vals[1], RT_VAL0, RT_VAL1);
	if (tk_count != 1 || tk_code != SI_TKILL)
		fail("SIGRTMIN+4 delivered %d times (si_code %d), expected once from tgkill()",
		     tk_count, tk_code);
	return pass();
}
