/*
 * sigaltstack: an alternate signal stack and an SA_ONSTACK handler. After restore
 * sigaltstack() reports the same stack, and a signal runs its handler on that stack.
 */
#include <unistd.h>

#include "zdtmtst.h"

#define ALT_SIZE (64 * 1024)

static char *alt;
static volatile sig_atomic_t handled, on_alt, ss_onstack;

static void handler(int sig)
{
	stack_t ss;
	char here;

	(void)sig;
	handled = 1;
	on_alt = &here >= alt && &here < alt + ALT_SIZE;
	ss_onstack = sigaltstack(NULL, &ss) == 0 && (ss.ss_flags & SS_ONSTACK);
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = handler, .sa_flags = SA_ONSTACK };
	stack_t ss;

	test_init(argc, argv);

	alt = test_map_anon(ALT_SIZE, false);
	if (!alt)
		return 1;
	ss.ss_sp = alt;
	ss.ss_size = ALT_SIZE;
	ss.ss_flags = 0;
	sigemptyset(&sa.sa_mask);
	if (sigaltstack(&ss, NULL) || sigaction(SIGUSR1, &sa, NULL)) {
		pr_perror("sigaltstack/sigaction");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (sigaltstack(NULL, &ss))
		return fail_perror("sigaltstack");
	if (ss.ss_sp != alt || ss.ss_size != ALT_SIZE || ss.ss_flags != 0)
		return fail("altstack %p size %zu flags %#x, expected %p size %d flags 0",
			    ss.ss_sp, ss.ss_size, ss.ss_flags, alt, ALT_SIZE);
	if (sigaction(SIGUSR1, NULL, &sa) || !(sa.sa_flags & SA_ONSTACK))
		return fail("SIGUSR1 lost SA_ONSTACK");
	if (kill(getpid(), SIGUSR1))
		return fail_perror("kill");
	if (!handled)
		return fail("SIGUSR1 handler did not run");
	if (!on_alt || !ss_onstack)
		return fail("the handler did not run on the alternate stack");
	return pass();
}
