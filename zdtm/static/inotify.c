/*
 * inotify: watches on a directory, on files (one IN_ONESHOT) and on a symlink itself
 * (IN_DONT_FOLLOW, IN_EXCL_UNLINK), with a gap in the watch descriptors (a watch removed
 * before C/R), a second group watching the same directory and a dup of the first. After
 * restore each change is reported under the wd the program was given, the removed watch
 * stays removed, a new watch gets the next wd, and nothing is queued that was not before.
 *
 * Events queued before C/R are not part of this test: no call puts an event back into a
 * queue, so the engine refuses such a group at dump (static/inotify_queued).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_DIRNAME();

#define EVBUF (sizeof(struct inotify_event) + NAME_MAX + 1)

static char path_a[PATH_MAX], path_b[PATH_MAX], path_c[PATH_MAX], path_l[PATH_MAX];

/* The next event of fd within a second, or -1 (none, or an error). */
static int next_event(int fd, struct inotify_event *ev, char *name)
{
	static char buf[16 * EVBUF];
	static size_t len, off;
	struct pollfd p = { .fd = fd, .events = POLLIN };
	struct inotify_event *e;

	if (off >= len) {
		ssize_t n;

		if (poll(&p, 1, 1000) != 1)
			return -1;
		n = read(fd, buf, sizeof(buf));
		if (n <= 0)
			return -1;
		len = n;
		off = 0;
	}
	e = (struct inotify_event *)(buf + off);
	*ev = *e;
	strcpy(name, e->len ? e->name : "");
	off += sizeof(*e) + e->len;
	return 0;
}

static int expect(int fd, int wd, uint32_t mask, const char *name)
{
	struct inotify_event ev;
	char got[NAME_MAX + 1];

	if (next_event(fd, &ev, got))
		return fail("no event for wd %d mask %#x", wd, mask);
	if (ev.wd != wd || ev.mask != mask || strcmp(got, name))
		return fail("event wd %d mask %#x name '%s', expected wd %d mask %#x name '%s'",
			    ev.wd, ev.mask, got, wd, mask, name);
	return 0;
}

static int queue_empty(int fd)
{
	int n = -1;

	return ioctl(fd, FIONREAD, &n) == 0 && n == 0;
}

static int make(const char *path)
{
	int fd = open(path, O_CREAT | O_WRONLY, 0644);

	return fd < 0 ? -1 : close(fd);
}

int main(int argc, char **argv)
{
	int in, in2, dup_fd, wd_dir, wd_a, wd_b, wd_c, wd_l, wd_dir2, wd_new, fd;
	struct timespec now[2] = { { 0, UTIME_NOW }, { 0, UTIME_NOW } };
	char path_n[PATH_MAX];

	test_init(argc, argv);
	if (mkdir(test_dirname, 0755)) {
		pr_perror("mkdir %s", test_dirname);
		return 1;
	}
	snprintf(path_a, sizeof(path_a), "%s/a", test_dirname);
	snprintf(path_b, sizeof(path_b), "%s/b", test_dirname);
	snprintf(path_c, sizeof(path_c), "%s/c", test_dirname);
	snprintf(path_l, sizeof(path_l), "%s/l", test_dirname);
	snprintf(path_n, sizeof(path_n), "%s/n", test_dirname);
	if (make(path_a) || make(path_b) || make(path_c) || symlink("a", path_l)) {
		pr_perror("files in %s", test_dirname);
		return 1;
	}

	in = inotify_init1(IN_NONBLOCK);
	in2 = inotify_init1(IN_CLOEXEC);
	if (in < 0 || in2 < 0) {
		pr_perror("inotify_init1");
		return 1;
	}
	wd_dir = inotify_add_watch(in, test_dirname, IN_CREATE | IN_DELETE | IN_ONLYDIR);
	wd_a = inotify_add_watch(in, path_a, IN_MODIFY);
	wd_b = inotify_add_watch(in, path_b, IN_ATTRIB | IN_ONESHOT);
	wd_c = inotify_add_watch(in, path_c, IN_OPEN);
	if (wd_c < 0 || inotify_rm_watch(in, wd_c)) {
		pr_perror("watch and unwatch %s", path_c);
		return 1;
	}
	wd_l = inotify_add_watch(in, path_l, IN_ATTRIB | IN_DONT_FOLLOW | IN_EXCL_UNLINK);
	wd_dir2 = inotify_add_watch(in2, test_dirname, IN_DELETE);
	if (wd_dir < 0 || wd_a < 0 || wd_b < 0 || wd_l < 0 || wd_dir2 < 0) {
		pr_perror("inotify_add_watch");
		return 1;
	}
	/* the removal queued IN_IGNORED: take it, so the queue is empty for the dump */
	if (expect(in, wd_c, IN_IGNORED, "") || !queue_empty(in))
		return 1;
	dup_fd = dup(in);
	if (dup_fd < 0) {
		pr_perror("dup");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (!queue_empty(in) || !queue_empty(in2))
		return fail("events queued after restore that were not before");
	if (!(fcntl(dup_fd, F_GETFL) & O_NONBLOCK) || !(fcntl(in2, F_GETFD) & FD_CLOEXEC))
		return fail("status or fd flags lost");
	if (make(path_n) || expect(dup_fd, wd_dir, IN_CREATE, "n"))
		return fail("creating a file in the watched directory");
	fd = open(path_a, O_WRONLY);
	if (fd < 0 || write(fd, "x", 1) != 1 || close(fd) || expect(in, wd_a, IN_MODIFY, ""))
		return fail("writing the watched file");
	if (chmod(path_b, 0600) || expect(in, wd_b, IN_ATTRIB, "") ||
	    expect(in, wd_b, IN_IGNORED, ""))
		return fail("the one-shot watch");
	if (chmod(path_b, 0644) || !queue_empty(in))
		return fail("the one-shot watch fired twice");
	if (utimensat(AT_FDCWD, path_l, now, AT_SYMLINK_NOFOLLOW) ||
	    expect(in, wd_l, IN_ATTRIB, ""))
		return fail("the watch on the symlink itself");
	fd = open(path_c, O_RDONLY);
	if (fd < 0 || close(fd) || !queue_empty(in))
		return fail("the watch removed before C/R reports events");
	if (unlink(path_n) || expect(in, wd_dir, IN_DELETE, "n") ||
	    expect(in2, wd_dir2, IN_DELETE, "n"))
		return fail("both groups see the deletion");
	wd_new = inotify_add_watch(in, path_c, IN_OPEN);
	if (wd_new != wd_l + 1)
		return fail("a new watch got wd %d, expected %d", wd_new, wd_l + 1);
	return pass();
}
