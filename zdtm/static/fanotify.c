/*
 * fanotify: two groups. A notification group (FAN_CLASS_NOTIF, needs CAP_SYS_ADMIN in the
 * initial user namespace, so not made in flavour uns) with an inode mark on a file
 * (FAN_OPEN | FAN_MODIFY), a mark on the test directory for its children's
 * FAN_CLOSE_WRITE, and a mount mark and a filesystem mark that only ignore (FAN_OPEN on
 * the mount, FAN_ACCESS on the filesystem; marks that report would catch every other
 * process's files). A FAN_REPORT_FID group, which an unprivileged task may make, with an
 * inode mark where the filesystem gives file handles (not overlayfs before 6.6: then only
 * the first group is tested, or the test skips in uns). (The ignored masks survive FAN_MODIFY: others would be cleared by the first
 * write to the file system, the engine's own included.) After restore the flags are the same and each mark acts as before: the
 * file's FAN_OPEN stays ignored by the mount mark, its FAN_MODIFY is reported, and so is
 * a file closed after writing in the directory; the FID group reports FAN_MODIFY.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_DIRNAME();

/*
 * The masks of every event group g reports until it is quiet for 200 ms, or'ed (the kernel
 * may merge the events of one file or not); their fds are closed.
 */
static uint64_t masks(int g)
{
	char buf[4096];
	struct fanotify_event_metadata *ev;
	struct pollfd p = { .fd = g, .events = POLLIN };
	uint64_t all = 0;
	ssize_t n;

	while (poll(&p, 1, 200) == 1 && (n = read(g, buf, sizeof(buf))) > 0) {
		for (ev = (void *)buf; FAN_EVENT_OK(ev, n); ev = FAN_EVENT_NEXT(ev, n)) {
			if (ev->fd >= 0)
				close(ev->fd);
			all |= ev->mask;
		}
	}
	return all;
}

static int queued(int g)
{
	int n = -1;

	return ioctl(g, FIONREAD, &n) ? -1 : n;
}

static int mark(int g, unsigned int flags, uint64_t mask, const char *path)
{
	if (fanotify_mark(g, FAN_MARK_ADD | flags, mask, AT_FDCWD, path)) {
		pr_perror("fanotify_mark(%#x, %#llx, %s)", flags, (unsigned long long)mask, path);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	char file[PATH_MAX], made[PATH_MAX];
	int g = -1, fid, fd;

	test_init(argc, argv);
	if (mkdir(test_dirname, 0755)) {
		pr_perror("mkdir %s", test_dirname);
		return 1;
	}
	snprintf(file, sizeof(file), "%s/watched", test_dirname);
	snprintf(made, sizeof(made), "%s/made", test_dirname);
	fd = open(file, O_CREAT | O_WRONLY, 0644);
	if (fd < 0 || close(fd)) {
		pr_perror("create %s", file);
		return 1;
	}

	g = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_CLOEXEC, O_RDONLY | O_LARGEFILE);
	if (g < 0 && errno != EPERM) {
		pr_perror("fanotify_init");
		return 1;
	}
	if (g < 0)
		test_msg("fanotify_init(FAN_CLASS_NOTIF): EPERM (no CAP_SYS_ADMIN in the initial "
			 "user namespace): only the FAN_REPORT_FID group is tested\n");
	if (g >= 0 &&
	    (mark(g, 0, FAN_OPEN | FAN_MODIFY, file) ||
	     mark(g, FAN_MARK_ONLYDIR, FAN_CLOSE_WRITE | FAN_EVENT_ON_CHILD, test_dirname) ||
	     mark(g, FAN_MARK_MOUNT | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY,
		  FAN_OPEN, test_dirname) ||
	     mark(g, FAN_MARK_FILESYSTEM | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY,
		  FAN_ACCESS, test_dirname)))
		return 1;
	fid = fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_FID, O_RDONLY);
	if (fid < 0) {
		pr_perror("fanotify_init(FAN_REPORT_FID)");
		return 1;
	}
	if (fanotify_mark(fid, FAN_MARK_ADD, FAN_MODIFY, AT_FDCWD, file)) {
		if (errno != EOPNOTSUPP && errno != EXDEV)
			return mark(fid, 0, FAN_MODIFY, file);
		/* no file handles on this filesystem (overlayfs before 6.6, for one) */
		if (g < 0)
			return skip("fanotify: no FAN_CLASS_NOTIF group (EPERM) and no FID mark on "
				    "%s: %m", file);
		test_msg("fanotify_mark(FAN_REPORT_FID group, %s): %m: only the FAN_CLASS_NOTIF "
			 "group is tested\n", file);
		close(fid);
		fid = -1;
	}
	if ((g >= 0 && queued(g)) || (fid >= 0 && queued(fid)))
		return fail("events queued before C/R");

	test_daemon();
	test_waitsig();

	if ((g >= 0 && queued(g)) || (fid >= 0 && queued(fid)))
		return fail("events queued after restore");
	fd = open(file, O_WRONLY);
	if (fd < 0 || write(fd, "x", 1) != 1 || close(fd))
		return fail_perror("write %s", file);
	if (fid >= 0 && masks(fid) != FAN_MODIFY)
		return fail("the FID group did not report FAN_MODIFY");
	if (g < 0)
		return pass();
	if (!(fcntl(g, F_GETFL) & O_NONBLOCK))
		return fail("the group lost FAN_NONBLOCK");
	/* FAN_OPEN is ignored by the mount mark; FAN_MODIFY and the directory's
	 * FAN_CLOSE_WRITE are reported */
	if (masks(g) != (FAN_MODIFY | FAN_CLOSE_WRITE))
		return fail("the file's marks do not act as before");
	fd = open(made, O_CREAT | O_WRONLY, 0644);
	if (fd < 0 || close(fd) || masks(g) != FAN_CLOSE_WRITE)
		return fail("the directory mark does not report its child's FAN_CLOSE_WRITE");
	return pass();
}
