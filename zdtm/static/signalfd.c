/*
 * signalfd: a signalfd for SIGUSR1|SIGUSR2 (blocked), non-blocking, with a SIGUSR1 already
 * pending on the task. After restore the mask is the same, the pending signal is read from
 * the signalfd, and a new SIGUSR2 arrives through it too.
 */
#include <fcntl.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "zdtmtst.h"

int main(int argc, char **argv)
{
	struct signalfd_siginfo si;
	sigset_t set;
	int sfd;

	test_init(argc, argv);

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGUSR2);
	if (sigprocmask(SIG_BLOCK, &set, NULL)) {
		pr_perror("sigprocmask");
		return 1;
	}
	sfd = signalfd(-1, &set, SFD_NONBLOCK);
	if (sfd < 0) {
		pr_perror("signalfd");
		return 1;
	}

	test_daemon();
	if (raise(SIGUSR1)) {
		pr_perror("raise");
		return 1;
	}
	test_waitsig();

	if (!(fcntl(sfd, F_GETFL) & O_NONBLOCK))
		fail("the signalfd lost O_NONBLOCK");
	if (read(sfd, &si, sizeof(si)) != sizeof(si))
		return fail_perror("the pending SIGUSR1 is not readable from the signalfd");
	if (si.ssi_signo != SIGUSR1)
		return fail("read signal %u from the signalfd, expected SIGUSR1", si.ssi_signo);
	if (read(sfd, &si, sizeof(si)) != -1 || errno != EAGAIN)
		return fail("the signalfd holds more than the one pending signal");
	if (raise(SIGUSR2) || read(sfd, &si, sizeof(si)) != sizeof(si) || si.ssi_signo != SIGUSR2)
		return fail("SIGUSR2 does not arrive through the signalfd (mask lost?)");
	return pass();
}
