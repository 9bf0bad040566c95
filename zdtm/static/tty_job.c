/*
 * tty_job: a session with a controlling pty and two process groups, as a shell with one
 * background job: the test leads the session and its group is in the foreground; a child
 * in a group of its own shares the controlling tty. After restore the child still has
 * that tty as its controlling tty, and the test's group is still the foreground one.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "zdtmtst.h"

static int slave = -1;

static int child_main(int fd, void *arg)
{
	pid_t leader = *(pid_t *)arg;

	(void)fd;
	if (setpgid(0, 0) && getpgrp() != getpid()) {
		test_msg("child: setpgid: %m");
		return 2;
	}
	test_waitsig();
	/* both fail with ENOTTY when the tty is no longer the child's controlling tty */
	if (tcgetsid(slave) != leader) {
		test_msg("child: controlling tty lost (tcgetsid %d, expected %d)",
			 tcgetsid(slave), leader);
		return 3;
	}
	if (tcgetpgrp(slave) != leader) {
		test_msg("child: foreground group %d, expected %d", tcgetpgrp(slave), leader);
		return 4;
	}
	return 0;
}

int main(int argc, char **argv)
{
	pid_t leader, child;
	int master;

	test_init(argc, argv);
	leader = getpid();
	if (getsid(0) != leader)
		return fail("not a session leader (sid %d)", getsid(0));

	master = posix_openpt(O_RDWR | O_NOCTTY);
	if (master < 0 || grantpt(master) || unlockpt(master))
		return fail_perror("posix_openpt");
	/* a session leader without a controlling tty acquires the first tty it opens */
	slave = open(ptsname(master), O_RDWR);
	if (slave < 0)
		return fail_perror("open %s", ptsname(master));
	if (ioctl(slave, TIOCSCTTY, 0) && tcgetsid(slave) != leader)
		return fail_perror("TIOCSCTTY");
	if (tcsetpgrp(slave, leader))
		return fail_perror("tcsetpgrp");

	child = test_fork_child(TEST_NO_PIPE, NULL, child_main, &leader);
	if (child < 0)
		return 1;
	/* the child's group exists once either side has made it (job control's usual race) */
	if (setpgid(child, child) && getpgid(child) != child)
		return fail_perror("setpgid(%d)", child);

	test_daemon();
	test_waitsig();

	if (stop_child_verdict(child, 10000))
		return 1;
	if (tcgetsid(slave) != leader)
		return fail("controlling tty lost (tcgetsid %d, expected %d)", tcgetsid(slave),
			    leader);
	if (tcgetpgrp(slave) != leader)
		return fail("foreground group %d, expected %d", tcgetpgrp(slave), leader);
	return pass();
}
