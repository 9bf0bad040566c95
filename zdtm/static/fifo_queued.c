/*
 * fifo_queued: named pipes held open in every access mode, with data queued in them.
 *
 * - "a": three descriptions, O_RDONLY|O_NONBLOCK, O_WRONLY and O_RDWR, two writes queued;
 * - "b": its reader closed after data was queued: only a writer (O_WRONLY) is left;
 * - "c": only an O_RDWR description, the pipe grown to 1 MiB (F_SETPIPE_SZ) and holding
 *   192 KiB, three times what a pipe of the default size can queue;
 * - "d": a reader (O_RDONLY, blocking) inherited by a child, whose writer is the parent;
 * - "e": a reader and a writer with data queued, then the FIFO was removed (unlinked).
 * After restore every fd is on the same FIFO (same path, same inode as the path's; "e"
 * still removed, its fds reading "<path> (deleted)"), with its flags; the queued data
 * reads back once and in order, "c" is still 1 MiB, and the descriptions of one FIFO are
 * still one pipe (a write on one reads on the other).
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_DIRNAME();

#define KERNEL_O_LARGEFILE 0100000
#define A1 "first write;"
#define A2 "second write"
#define B_DATA "left behind by a reader that is gone"
#define C_PIPE (1 << 20)
#define C_LEN (192 << 10)
#define C_SEED 0xf1f0c0deUL
#define D_DATA "to the child"
#define E_DATA "in a removed FIFO"

static int a_r, a_w, a_rw, b_w, c_rw, d_w, d_r, e_r, e_w;
static char path_a[PATH_MAX], path_b[PATH_MAX], path_c[PATH_MAX], path_d[PATH_MAX];
static char path_e[PATH_MAX];

static int mkfifo_at(char *path, const char *name)
{
	snprintf(path, PATH_MAX, "%s/%s", test_dirname, name);
	return mkfifo(path, 0640);
}

static int child_main(int fd, void *arg)
{
	char buf[sizeof(D_DATA)];

	(void)fd;
	(void)arg;
	test_waitsig();
	if (test_read_timeout(d_r, buf, sizeof(buf), 5000) || strcmp(buf, D_DATA)) {
		test_msg("child: the FIFO's data did not come: %m");
		return 1;
	}
	return 0;
}

static int setup(void)
{
	static char data[C_LEN];
	int b_r;

	if (mkdir(test_dirname, 0700) || mkfifo_at(path_a, "a") || mkfifo_at(path_b, "b") ||
	    mkfifo_at(path_c, "c") || mkfifo_at(path_d, "d") || mkfifo_at(path_e, "e"))
		return -1;

	a_r = open(path_a, O_RDONLY | O_NONBLOCK);
	a_w = open(path_a, O_WRONLY);
	a_rw = open(path_a, O_RDWR);
	if (a_r < 0 || a_w < 0 || a_rw < 0 || write(a_w, A1, strlen(A1)) != strlen(A1) ||
	    write(a_rw, A2, sizeof(A2)) != sizeof(A2))
		return -1;

	b_r = open(path_b, O_RDONLY | O_NONBLOCK);
	b_w = open(path_b, O_WRONLY);
	if (b_r < 0 || b_w < 0 || write(b_w, B_DATA, sizeof(B_DATA)) != sizeof(B_DATA) ||
	    close(b_r))
		return -1;

	c_rw = open(path_c, O_RDWR);
	if (c_rw < 0 || fcntl(c_rw, F_SETPIPE_SZ, C_PIPE) < C_PIPE)
		return -1;
	datafill(data, C_LEN, C_SEED);
	if (test_write_full(c_rw, data, C_LEN))
		return -1;

	d_r = open(path_d, O_RDONLY | O_NONBLOCK);
	d_w = open(path_d, O_WRONLY);
	if (d_r < 0 || d_w < 0 || fcntl(d_r, F_SETFL, 0))
		return -1;

	e_r = open(path_e, O_RDONLY | O_NONBLOCK);
	e_w = open(path_e, O_WRONLY);
	if (e_r < 0 || e_w < 0 || write(e_w, E_DATA, sizeof(E_DATA)) != sizeof(E_DATA) ||
	    unlink(path_e))
		return -1;
	return 0;
}

static void check_fd(const char *what, int fd, const char *path, int flags)
{
	char proc[64], link[PATH_MAX], want[PATH_MAX + 16];
	bool removed = path == path_e;
	struct stat st, pst;
	int got = fcntl(fd, F_GETFL) & ~(KERNEL_O_LARGEFILE | O_CLOEXEC);
	ssize_t n;

	if (got != flags)
		fail("%s: flags %#o, expected %#o", what, got, flags);
	if (fstat(fd, &st) || !S_ISFIFO(st.st_mode))
		fail("%s is no longer a FIFO", what);
	else if (removed ? st.st_nlink != 0 : stat(path, &pst) || st.st_ino != pst.st_ino ||
		 st.st_dev != pst.st_dev)
		fail("%s is no longer the FIFO %s %s", what, removed ? "removed from" : "at", path);
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	n = readlink(proc, link, sizeof(link) - 1);
	link[n < 0 ? 0 : n] = '\0';
	/* test_dirname is relative to the work dir: compare the tail only */
	snprintf(want, sizeof(want), "/%s%s", path, removed ? " (deleted)" : "");
	if (n < (ssize_t)strlen(want) || strcmp(link + n - strlen(want), want))
		fail("%s: the fd is now %s", what, link);
}

static void expect(const char *what, int fd, const char *data, size_t len)
{
	char buf[256];

	if (len > sizeof(buf) || test_read_timeout(fd, buf, len, 5000) || memcmp(buf, data, len))
		fail("%s: the queued data did not come back", what);
}

static void check_c(void)
{
	static char buf[C_LEN + 1];
	ssize_t n;

	if (fcntl(c_rw, F_GETPIPE_SZ) != C_PIPE)
		fail("c: pipe size %d, expected %d", fcntl(c_rw, F_GETPIPE_SZ), C_PIPE);
	if (test_read_timeout(c_rw, buf, C_LEN, 5000))
		fail_perror("c: reading the queued data");
	else if (datacmp(buf, C_LEN, C_SEED) >= 0)
		fail("c: the queued data differs at byte %zd", datacmp(buf, C_LEN, C_SEED));
	if (fcntl(c_rw, F_SETFL, O_NONBLOCK) || (n = read(c_rw, buf, 1)) != -1 || errno != EAGAIN)
		fail("c: more data than was queued");
}

int main(int argc, char **argv)
{
	char buf[8];
	pid_t child;

	test_init(argc, argv);
	if (setup()) {
		pr_perror("setup");
		return 1;
	}
	child = test_fork_child(TEST_NO_PIPE, NULL, child_main, NULL);
	if (child < 0)
		return 1;
	if (close(d_r)) {
		pr_perror("close");
		return 1;
	}

	test_daemon();
	test_waitsig();

	check_fd("a reader", a_r, path_a, O_RDONLY | O_NONBLOCK);
	check_fd("a writer", a_w, path_a, O_WRONLY);
	check_fd("a rdwr", a_rw, path_a, O_RDWR);
	check_fd("b writer", b_w, path_b, O_WRONLY);
	check_fd("c rdwr", c_rw, path_c, O_RDWR);
	check_fd("d writer", d_w, path_d, O_WRONLY);
	check_fd("e reader", e_r, path_e, O_RDONLY | O_NONBLOCK);
	check_fd("e writer", e_w, path_e, O_WRONLY);

	expect("a", a_r, A1 A2, sizeof(A1 A2));
	if (read(a_r, buf, 1) != -1 || errno != EAGAIN)
		fail("a: more data than was queued");
	if (write(a_w, "ping", 4) != 4)
		fail_perror("a: write");
	expect("a, written after restore", a_rw, "ping", 4);

	/* the data of "b" waits for whoever opens it next */
	int b_r = open(path_b, O_RDONLY | O_NONBLOCK);
	if (b_r < 0)
		fail_perror("b: open a reader");
	else
		expect("b", b_r, B_DATA, sizeof(B_DATA));

	check_c();

	expect("e", e_r, E_DATA, sizeof(E_DATA));
	if (write(e_w, "pong", 4) != 4)
		fail_perror("e: write");
	expect("e, written after restore", e_r, "pong", 4);

	if (write(d_w, D_DATA, sizeof(D_DATA)) != sizeof(D_DATA))
		fail_perror("d: write");
	if (stop_child_verdict(child, 10000))
		return 1;
	return pass();
}
