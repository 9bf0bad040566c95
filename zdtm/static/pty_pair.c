/*
 * pty_pair: a pseudo-terminal pair held at both ends (not a controlling terminal): the
 * slave's termios changed (no echo of control characters, VMIN 2, VTIME 9, erase ^H,
 * 7-bit), window size 41x101, a second slave fd, the slave end non-blocking. Queued and
 * unread: "output\n" written to the slave (read from the master as "output\r\n"), then
 * "typed line\n" plus the partial "half" written to the master (input, echoed). After
 * restore: the slave is still pts/N of this master, termios and window size are the
 * same, the slave reads the typed line then (on a newline) the rest, and the master
 * reads the echo and the output, once.
 */
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "zdtmtst.h"

static int read_is(int fd, const char *want, const char *what)
{
	char buf[128];
	size_t got = 0, n = strlen(want);
	int q;

	/*
	 * Read only what poll() reports (canonical mode: a complete line), so that data
	 * that never comes is a failure after a second rather than a read() blocked for good
	 * on the blocking second slave fd.
	 */
	for (int i = 0; i < 100 && got < n; i++) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t r;

		if (poll(&p, 1, 10) < 0)
			return fail_perror("%s: poll", what);
		if (!(p.revents & POLLIN))
			continue;
		r = read(fd, buf + got, n - got);
		if (r > 0)
			got += r;
		else if (r < 0 && errno != EAGAIN)
			return fail_perror("%s: read", what);
	}
	if (got != n || memcmp(buf, want, n))
		return fail("%s: read \"%.*s\", expected \"%s\"", what, (int)got, buf, want);
	if (ioctl(fd, FIONREAD, &q) || q)
		return fail("%s: %d more bytes were queued", what, q);
	return 0;
}

int main(int argc, char **argv)
{
	struct winsize ws = { .ws_row = 41, .ws_col = 101 }, ws2;
	struct termios t, t2;
	char name[64];
	int master, slave, slave2, n;

	test_init(argc, argv);

	master = posix_openpt(O_RDWR | O_NOCTTY);
	if (master < 0 || grantpt(master) || unlockpt(master) || ioctl(master, TIOCGPTN, &n))
		return fail_perror("posix_openpt");
	snprintf(name, sizeof(name), "/dev/pts/%d", n);
	slave = open(name, O_RDWR | O_NOCTTY | O_NONBLOCK);
	slave2 = open(name, O_RDONLY | O_NOCTTY);
	if (slave < 0 || slave2 < 0 || tcgetattr(slave, &t))
		return fail_perror("open %s", name);
	t.c_lflag &= ~ECHOCTL;
	t.c_iflag |= ISTRIP;
	t.c_cc[VMIN] = 2;
	t.c_cc[VTIME] = 9;
	t.c_cc[VERASE] = 8;
	/* the line discipline works asynchronously: one write at a time */
	if (tcsetattr(slave, TCSANOW, &t) || ioctl(slave, TIOCSWINSZ, &ws) ||
	    write(slave, "output\n", 7) != 7 || usleep(100000) ||
	    write(master, "typed line\nhalf", 15) != 15 || usleep(100000))
		return fail_perror("setup");

	test_daemon();
	test_waitsig();

	if (ioctl(master, TIOCGPTN, &n) || snprintf(name, sizeof(name), "/dev/pts/%d", n) < 0 ||
	    strcmp(ttyname(slave), name))
		return fail("the slave %s is not pts/%d of the master", ttyname(slave), n);
	if (tcgetattr(slave, &t2) || ioctl(slave, TIOCGWINSZ, &ws2))
		return fail_perror("tcgetattr/TIOCGWINSZ");
	if (t2.c_lflag != t.c_lflag || t2.c_iflag != t.c_iflag || t2.c_oflag != t.c_oflag ||
	    t2.c_cflag != t.c_cflag || memcmp(t2.c_cc, t.c_cc, sizeof(t.c_cc)))
		return fail("termios changed: lflag %#o -> %#o, iflag %#o -> %#o", t.c_lflag,
			    t2.c_lflag, t.c_iflag, t2.c_iflag);
	if (ws2.ws_row != 41 || ws2.ws_col != 101)
		return fail("window size %ux%u, expected 41x101", ws2.ws_row, ws2.ws_col);
	if (read_is(slave, "typed line\n", "slave"))
		return 1;
	if (write(master, "\n", 1) != 1 || read_is(slave2, "half\n", "slave, second fd"))
		return 1;
	if (fcntl(master, F_SETFL, O_NONBLOCK) ||
	    read_is(master, "output\r\ntyped line\r\nhalf\r\n", "master"))
		return 1;
	return pass();
}
