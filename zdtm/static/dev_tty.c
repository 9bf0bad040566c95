/*
 * dev_tty: /dev/tty and the other character devices a program keeps open.
 *
 * The test leads its session and a pseudo terminal is its controlling tty (no echo);
 * it holds /dev/tty twice (O_RDWR, also dup()ed, and O_WRONLY|O_NONBLOCK) and a child
 * of its session inherits the first; it also holds /dev/zero (O_RDONLY), /dev/full
 * (O_WRONLY), /dev/random (O_RDONLY|O_NONBLOCK) and /dev/urandom (O_RDWR).
 * After restore every fd is the same device with its flags, /dev/tty is still the
 * controlling terminal: what the test and its child write to it comes out of the master,
 * and what is typed into the master is read from it; /dev/zero reads zeros, /dev/full
 * says ENOSPC, /dev/random and /dev/urandom give bytes.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <unistd.h>

#include "zdtmtst.h"

#define KERNEL_O_LARGEFILE 0100000

struct dev {
	const char *path;
	int flags;
	unsigned int major, minor;
	int fd;
};

enum { TTY, TTY_NB, ZERO, FULL, RANDOM, URANDOM, NR };

static struct dev devs[NR] = {
	[TTY] = { "/dev/tty", O_RDWR, 5, 0 },
	[TTY_NB] = { "/dev/tty", O_WRONLY | O_NONBLOCK, 5, 0 },
	[ZERO] = { "/dev/zero", O_RDONLY, 1, 5 },
	[FULL] = { "/dev/full", O_WRONLY, 1, 7 },
	[RANDOM] = { "/dev/random", O_RDONLY | O_NONBLOCK, 1, 8 },
	[URANDOM] = { "/dev/urandom", O_RDWR, 1, 9 },
};
static int master, tty_dup;

/* The next bytes of fd are `want` (within 5 s): 0, or -1. */
static int expect(int fd, const char *want)
{
	char buf[64];
	size_t n = strlen(want);

	return test_read_timeout(fd, buf, n, 5000) || memcmp(buf, want, n) ? -1 : 0;
}

static int child_main(int fd, void *arg)
{
	(void)fd;
	(void)arg;
	test_waitsig();
	return write(devs[TTY].fd, "child\n", 6) == 6 ? 0 : 1;
}

static int setup(void)
{
	struct termios t;
	int slave;

	master = posix_openpt(O_RDWR | O_NOCTTY);
	if (master < 0 || grantpt(master) || unlockpt(master))
		return -1;
	/* a session leader without a controlling tty acquires the first tty it opens */
	slave = open(ptsname(master), O_RDWR);
	if (slave < 0 || (ioctl(slave, TIOCSCTTY, 0) && tcgetpgrp(slave) != getpgrp()))
		return -1;
	if (tcgetattr(slave, &t))
		return -1;
	t.c_lflag &= ~(ECHO | ECHONL);
	if (tcsetattr(slave, TCSANOW, &t) || close(slave))
		return -1;
	for (int i = 0; i < NR; i++) {
		devs[i].fd = open(devs[i].path, devs[i].flags);
		if (devs[i].fd < 0)
			return -1;
	}
	tty_dup = dup(devs[TTY].fd);
	return tty_dup < 0 ? -1 : 0;
}

static void check_dev(const struct dev *d, int fd)
{
	int flags = fcntl(fd, F_GETFL) & ~(KERNEL_O_LARGEFILE | O_CLOEXEC);
	struct stat st;

	if (flags != d->flags)
		fail("%s: flags %#o, expected %#o", d->path, flags, d->flags);
	if (fstat(fd, &st) || !S_ISCHR(st.st_mode) || major(st.st_rdev) != d->major ||
	    minor(st.st_rdev) != d->minor)
		fail("%s is no longer the device %u:%u", d->path, d->major, d->minor);
}

static void check_tty(void)
{
	if (write(devs[TTY].fd, "one\n", 4) != 4 || write(tty_dup, "two\n", 4) != 4 ||
	    write(devs[TTY_NB].fd, "three\n", 6) != 6)
		fail_perror("write to /dev/tty");
	else if (expect(master, "one\r\ntwo\r\nthree\r\n"))
		fail("what was written to /dev/tty did not come out of the master");
	if (write(master, "typed\n", 6) != 6)
		fail_perror("write to the master");
	else if (expect(devs[TTY].fd, "typed\n"))
		fail("what was typed into the master is not read from /dev/tty");
	if (tcgetpgrp(devs[TTY].fd) != getpgrp())
		fail("the test's group is no longer the terminal's foreground group");
}

static void check_others(void)
{
	char buf[16];

	memset(buf, 'x', sizeof(buf));
	if (read(devs[ZERO].fd, buf, sizeof(buf)) != sizeof(buf))
		fail_perror("/dev/zero: read");
	for (size_t i = 0; i < sizeof(buf); i++)
		if (buf[i]) {
			fail("/dev/zero reads no zeros");
			break;
		}
	if (write(devs[FULL].fd, "x", 1) != -1 || errno != ENOSPC)
		fail("/dev/full: a write did not say ENOSPC");
	if (read(devs[RANDOM].fd, buf, 4) != 4 || read(devs[URANDOM].fd, buf, 8) != 8)
		fail_perror("/dev/random or /dev/urandom: read");
	if (write(devs[URANDOM].fd, buf, 8) != 8)
		fail_perror("/dev/urandom: write");
}

int main(int argc, char **argv)
{
	pid_t child;

	test_init(argc, argv);
	if (setup()) {
		pr_perror("setup");
		return 1;
	}
	child = test_fork_child(TEST_NO_PIPE, NULL, child_main, NULL);
	if (child < 0)
		return 1;

	test_daemon();
	test_waitsig();

	for (int i = 0; i < NR; i++)
		check_dev(&devs[i], devs[i].fd);
	check_dev(&devs[TTY], tty_dup);
	check_tty();
	check_others();
	if (stop_child_verdict(child, 10000))
		return 1;
	if (expect(master, "child\r\n"))
		fail("what the child wrote to /dev/tty did not come out of the master");
	return pass();
}
