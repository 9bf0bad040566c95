/*
 * fd_status_flags: status flags and attributes kept per open file description.
 *
 * - a pipe's read end has two descriptions (the pipe's own and one reopened through
 *   /proc/self/fd): only the second is O_NONBLOCK; the write end, O_NONBLOCK, is shared
 *   with a child (inherited) and dup()ed;
 * - a FIFO (named pipe) open three times: O_RDONLY|O_NONBLOCK, O_WRONLY, O_RDWR, with
 *   bytes queued in it;
 * - character devices /dev/zero (O_RDWR), /dev/urandom (O_RDONLY|O_NONBLOCK), /dev/null;
 * - O_PATH fds on a file and on a symlink itself (O_PATH|O_NOFOLLOW);
 * - a file with F_SETOWN (this process) and F_SETSIG (SIGRTMIN+1), O_APPEND, and an
 *   mtime set in the past.
 * After restore every description has its flags, device, owner and signal, the child
 *   still shares the write end (its O_NONBLOCK is seen by the parent), and the data flow.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_DIRNAME();

#define MTIME 1000000000L
#define FIFO_DATA "fifo-data"

static int pr, pr2, pw, pw_dup, fifo_r, fifo_w, fifo_rw, zero, urandom, null_fd;
static int opath_file, opath_link, owned;

#define KERNEL_O_LARGEFILE 0100000

static int flags_of(int fd)
{
	return fcntl(fd, F_GETFL) & ~(KERNEL_O_LARGEFILE | O_CLOEXEC);
}

/* The child keeps the write end; it checks that the description is still non-blocking. */
static int child_main(int fd, void *arg)
{
	(void)fd;
	(void)arg;
	test_waitsig();
	return (fcntl(pw, F_GETFL) & O_NONBLOCK) && write(pw, "c", 1) == 1 ? 0 : 1;
}

static int setup_files(void)
{
	char path[PATH_MAX], self[64];
	int fds[2];

	if (pipe(fds))
		return -1;
	pr = fds[0];
	pw = fds[1];
	snprintf(self, sizeof(self), "/proc/self/fd/%d", pr);
	pr2 = open(self, O_RDONLY | O_NONBLOCK);
	pw_dup = dup(pw);
	if (pr2 < 0 || pw_dup < 0 || fcntl(pw, F_SETFL, O_NONBLOCK))
		return -1;

	snprintf(path, sizeof(path), "%s/fifo", test_dirname);
	if (mkfifo(path, 0600))
		return -1;
	fifo_r = open(path, O_RDONLY | O_NONBLOCK);
	fifo_w = open(path, O_WRONLY);
	fifo_rw = open(path, O_RDWR);
	if (fifo_r < 0 || fifo_w < 0 || fifo_rw < 0 ||
	    write(fifo_w, FIFO_DATA, sizeof(FIFO_DATA)) != sizeof(FIFO_DATA))
		return -1;

	zero = open("/dev/zero", O_RDWR);
	urandom = open("/dev/urandom", O_RDONLY | O_NONBLOCK);
	null_fd = open("/dev/null", O_WRONLY);
	if (zero < 0 || urandom < 0 || null_fd < 0)
		return -1;

	snprintf(path, sizeof(path), "%s/target", test_dirname);
	if (close(open(path, O_CREAT | O_WRONLY, 0640)))
		return -1;
	opath_file = open(path, O_PATH);
	snprintf(self, sizeof(self), "%s/link", test_dirname);
	if (opath_file < 0 || symlink("target", self))
		return -1;
	opath_link = open(self, O_PATH | O_NOFOLLOW);

	snprintf(path, sizeof(path), "%s/owned", test_dirname);
	owned = open(path, O_CREAT | O_WRONLY | O_APPEND, 0600);
	if (opath_link < 0 || owned < 0 || write(owned, "x", 1) != 1 ||
	    fcntl(owned, F_SETOWN, getpid()) || fcntl(owned, F_SETSIG, SIGRTMIN + 1))
		return -1;
	struct timespec times[2] = { { MTIME, 0 }, { MTIME, 0 } };
	return futimens(owned, times);
}

static void check_flags(const char *what, int fd, int want)
{
	int got = flags_of(fd);

	if (got != want)
		fail("%s: flags %#o, expected %#o", what, got, want);
}

static void check_dev(const char *what, int fd, unsigned int maj, unsigned int min)
{
	struct stat st;

	if (fstat(fd, &st) || !S_ISCHR(st.st_mode) || major(st.st_rdev) != maj ||
	    minor(st.st_rdev) != min)
		fail("%s is no longer the device %u:%u", what, maj, min);
}

static void check_opath(void)
{
	struct stat st;
	char link[16];

	check_flags("O_PATH file", opath_file, O_PATH);
	check_flags("O_PATH symlink", opath_link, O_PATH | O_NOFOLLOW);
	if (fstat(opath_link, &st) || !S_ISLNK(st.st_mode))
		fail("the O_PATH symlink fd is not on the symlink itself");
	else if (readlinkat(opath_link, "", link, sizeof(link)) != 6 || memcmp(link, "target", 6))
		fail("the O_PATH symlink reads differently");
	if (fstat(opath_file, &st) || !S_ISREG(st.st_mode) || (st.st_mode & 0777) != 0640)
		fail("the O_PATH file fd points elsewhere");
}

int main(int argc, char **argv)
{
	char buf[32];
	struct stat st;
	pid_t child;

	test_init(argc, argv);
	if (mkdir(test_dirname, 0700) || setup_files()) {
		pr_perror("setup");
		return 1;
	}
	child = test_fork_child(TEST_NO_PIPE, NULL, child_main, NULL);
	if (child < 0)
		return 1;

	test_daemon();
	test_waitsig();

	check_flags("pipe read end", pr, O_RDONLY);
	check_flags("pipe read end, second description", pr2, O_RDONLY | O_NONBLOCK);
	check_flags("pipe write end", pw, O_WRONLY | O_NONBLOCK);
	check_flags("pipe write end dup", pw_dup, O_WRONLY | O_NONBLOCK);
	check_flags("fifo reader", fifo_r, O_RDONLY | O_NONBLOCK);
	check_flags("fifo writer", fifo_w, O_WRONLY);
	check_flags("fifo rdwr", fifo_rw, O_RDWR);
	check_flags("/dev/zero", zero, O_RDWR);
	check_flags("/dev/urandom", urandom, O_RDONLY | O_NONBLOCK);
	check_flags("/dev/null", null_fd, O_WRONLY);
	check_dev("/dev/zero", zero, 1, 5);
	check_dev("/dev/urandom", urandom, 1, 9);
	check_dev("/dev/null", null_fd, 1, 3);
	check_opath();
	check_flags("owned file", owned, O_WRONLY | O_APPEND);
	if (fcntl(owned, F_GETOWN) != getpid())
		fail("F_GETOWN is %d, expected %d", fcntl(owned, F_GETOWN), getpid());
	if (fcntl(owned, F_GETSIG) != SIGRTMIN + 1)
		fail("F_GETSIG is %d", fcntl(owned, F_GETSIG));
	if (fstat(owned, &st) || st.st_mtime != MTIME)
		fail("mtime changed to %lld", (long long)st.st_mtime);

	if (read(pr2, buf, 1) != -1 || errno != EAGAIN)
		fail("empty pipe: non-blocking read did not say EAGAIN");
	if (read(fifo_r, buf, sizeof(buf)) != sizeof(FIFO_DATA) || strcmp(buf, FIFO_DATA))
		fail("the FIFO lost its data");
	if (read(zero, buf, 4) != 4 || memcmp(buf, "\0\0\0\0", 4))
		fail("/dev/zero reads no zeros");
	if (stop_child_verdict(child, 10000))
		return 1;
	if (read(pr, buf, 1) != 1 || buf[0] != 'c')
		fail("no byte from the child through the shared write end");
	return pass();
}
