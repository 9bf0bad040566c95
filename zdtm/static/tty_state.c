/*
 * tty_state: a pseudo terminal that is the test's controlling tty, with its own termios
 * (raw-ish: no echo, no canonical mode, VMIN 3, VTIME 7), window size 33x77 and the test's
 * group in the foreground. After restore all of it is the same.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "zdtmtst.h"

int main(int argc, char **argv)
{
	struct winsize ws = { .ws_row = 33, .ws_col = 77 }, ws2;
	struct termios t, t2;
	int master, slave, tty;

	test_init(argc, argv);

	master = posix_openpt(O_RDWR | O_NOCTTY);
	if (master < 0 || grantpt(master) || unlockpt(master))
		return fail_perror("posix_openpt");
	/* a session leader without a controlling tty acquires the first tty it opens */
	slave = open(ptsname(master), O_RDWR);
	if (slave < 0)
		return fail_perror("open %s", ptsname(master));
	if (ioctl(slave, TIOCSCTTY, 0) && tcgetpgrp(slave) != getpgrp())
		return fail_perror("TIOCSCTTY");
	if (tcgetattr(slave, &t))
		return fail_perror("tcgetattr");
	t.c_lflag &= ~(ECHO | ICANON);
	t.c_cc[VMIN] = 3;
	t.c_cc[VTIME] = 7;
	if (tcsetattr(slave, TCSANOW, &t) || ioctl(slave, TIOCSWINSZ, &ws))
		return fail_perror("tcsetattr/TIOCSWINSZ");
	if (tcsetpgrp(slave, getpgrp()))
		return fail_perror("tcsetpgrp");

	test_daemon();
	test_waitsig();

	tty = open("/dev/tty", O_RDWR);
	if (tty < 0)
		return fail_perror("no controlling tty: open /dev/tty");
	if (tcgetattr(slave, &t2) || ioctl(slave, TIOCGWINSZ, &ws2))
		return fail_perror("tcgetattr/TIOCGWINSZ");
	if (t2.c_lflag != t.c_lflag || t2.c_iflag != t.c_iflag || t2.c_oflag != t.c_oflag ||
	    t2.c_cc[VMIN] != 3 || t2.c_cc[VTIME] != 7)
		return fail("termios changed: lflag %#o -> %#o", t.c_lflag, t2.c_lflag);
	if (ws2.ws_row != 33 || ws2.ws_col != 77)
		return fail("window size %ux%u, expected 33x77", ws2.ws_row, ws2.ws_col);
	if (tcgetpgrp(tty) != getpgrp())
		return fail("foreground group %d, expected %d", tcgetpgrp(tty), getpgrp());
	return pass();
}
