/*
 * opath_fds: O_PATH descriptors on every kind of file.
 *
 * O_PATH (O_PATH|O_DIRECTORY) on a directory, O_PATH on a regular file, a FIFO and
 * /dev/null; O_PATH|O_NOFOLLOW on symlinks themselves: one to the file, one to the
 * directory, a dangling one; and on files that were then unlinked: a regular file with
 * content and a symlink. After restore each fd has its flags and is on the same object
 * (the same inode as its path, the symlink itself and not its target); the directory fd
 * still works as the dirfd of openat(), readlinkat(fd, "") gives each link's target, the
 * unlinked file reopened through /proc/self/fd reads its content.
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

#define KERNEL_O_LARGEFILE 0100000
#define CONTENT "the file's content"
#define GONE_CONTENT "unlinked, still open"
#define DANGLING "nowhere/at/all"

enum { DIR_FD, DIR_ONLY, FILE_FD, FIFO_FD, NULL_FD, LINK_FILE, LINK_DIR, LINK_DANGLING,
       GONE_FILE, GONE_LINK, NR };

struct pfd {
	const char *name;	/* in test_dirname; NULL: an absolute path */
	const char *abs;
	int flags;
	int fd;
	struct stat st;		/* lstat() of the object at setup */
	const char *link;	/* a symlink's target */
	bool gone;
};

static struct pfd fds[NR] = {
	[DIR_FD] = { .name = "dir", .flags = O_PATH },
	[DIR_ONLY] = { .name = "dir", .flags = O_PATH | O_DIRECTORY },
	[FILE_FD] = { .name = "dir/file", .flags = O_PATH },
	[FIFO_FD] = { .name = "fifo", .flags = O_PATH },
	[NULL_FD] = { .abs = "/dev/null", .flags = O_PATH },
	[LINK_FILE] = { .name = "link-file", .flags = O_PATH | O_NOFOLLOW, .link = "dir/file" },
	[LINK_DIR] = { .name = "link-dir", .flags = O_PATH | O_NOFOLLOW, .link = "dir" },
	[LINK_DANGLING] = { .name = "link-dangling", .flags = O_PATH | O_NOFOLLOW,
			    .link = DANGLING },
	[GONE_FILE] = { .name = "gone-file", .flags = O_PATH, .gone = true },
	[GONE_LINK] = { .name = "gone-link", .flags = O_PATH | O_NOFOLLOW, .link = "dir/file",
			.gone = true },
};

static const char *path_of(const struct pfd *p, char *buf)
{
	if (p->abs)
		return p->abs;
	snprintf(buf, PATH_MAX, "%s/%s", test_dirname, p->name);
	return buf;
}

static int make_objects(void)
{
	char path[PATH_MAX];
	int fd;

	if (mkdir(test_dirname, 0700) || mkdir(path_of(&fds[DIR_FD], path), 0750))
		return -1;
	fd = open(path_of(&fds[FILE_FD], path), O_CREAT | O_WRONLY, 0640);
	if (fd < 0 || write(fd, CONTENT, sizeof(CONTENT)) != sizeof(CONTENT) || close(fd))
		return -1;
	fd = open(path_of(&fds[GONE_FILE], path), O_CREAT | O_WRONLY, 0604);
	if (fd < 0 || write(fd, GONE_CONTENT, sizeof(GONE_CONTENT)) != sizeof(GONE_CONTENT) ||
	    close(fd))
		return -1;
	if (mkfifo(path_of(&fds[FIFO_FD], path), 0600))
		return -1;
	for (int i = 0; i < NR; i++)
		if (fds[i].link && symlink(fds[i].link, path_of(&fds[i], path)))
			return -1;
	return 0;
}

static int setup(void)
{
	char buf[PATH_MAX];

	if (make_objects())
		return -1;
	for (int i = 0; i < NR; i++) {
		struct pfd *p = &fds[i];
		const char *path = path_of(p, buf);

		p->fd = open(path, p->flags);
		if (p->fd < 0 || lstat(path, &p->st))
			return -1;
		if (p->gone && unlink(path))
			return -1;
	}
	return 0;
}

static void check_link(const struct pfd *p)
{
	char buf[PATH_MAX];
	ssize_t n = readlinkat(p->fd, "", buf, sizeof(buf) - 1);

	buf[n < 0 ? 0 : n] = '\0';
	if (strcmp(buf, p->link))
		fail("%s: readlinkat(fd, \"\") gives \"%s\", expected \"%s\"", p->name, buf,
		     p->link);
}

/* The fd's /proc link ends in the object's path (plus " (deleted)" for one unlinked). */
static void check_name(const struct pfd *p)
{
	char proc[64], link[PATH_MAX], want[PATH_MAX + 16], path[PATH_MAX];
	ssize_t n;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", p->fd);
	n = readlink(proc, link, sizeof(link) - 1);
	link[n < 0 ? 0 : n] = '\0';
	snprintf(want, sizeof(want), "%s%s%s", p->abs ? "" : "/", path_of(p, path),
		 p->gone ? " (deleted)" : "");
	if (n < (ssize_t)strlen(want) || strcmp(link + n - strlen(want), want))
		fail("%s: the fd is now %s", p->name ? p->name : p->abs, link);
}

static void check_fd(const struct pfd *p)
{
	const char *name = p->name ? p->name : p->abs;
	char path[PATH_MAX];
	struct stat st, now;
	int flags = fcntl(p->fd, F_GETFL) & ~(KERNEL_O_LARGEFILE | O_CLOEXEC);

	if (flags != p->flags)
		fail("%s: flags %#o, expected %#o", name, flags, p->flags);
	if (fstatat(p->fd, "", &st, AT_EMPTY_PATH)) {
		fail_perror("%s: fstatat", name);
		return;
	}
	if ((st.st_mode & S_IFMT) != (p->st.st_mode & S_IFMT) || st.st_mode != p->st.st_mode ||
	    st.st_rdev != p->st.st_rdev || st.st_size != p->st.st_size)
		fail("%s: mode %o size %lld, expected %o %lld", name, st.st_mode,
		     (long long)st.st_size, p->st.st_mode, (long long)p->st.st_size);
	if (p->gone) {
		if (st.st_nlink)
			fail("%s: %lu links, expected none", name, (unsigned long)st.st_nlink);
	} else if (lstat(path_of(p, path), &now) || now.st_ino != st.st_ino ||
		   now.st_dev != st.st_dev) {
		fail("%s: the fd is not on the object at its path", name);
	}
	if (p->link)
		check_link(p);
	check_name(p);
}

static void check_use(void)
{
	char buf[64], proc[64];
	int fd;

	fd = openat(fds[DIR_ONLY].fd, "file", O_RDONLY);
	if (fd < 0 || read(fd, buf, sizeof(buf)) != sizeof(CONTENT) || strcmp(buf, CONTENT))
		fail("openat() through the directory's O_PATH fd does not read the file");
	if (fd >= 0)
		close(fd);
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fds[GONE_FILE].fd);
	fd = open(proc, O_RDONLY);
	if (fd < 0 || read(fd, buf, sizeof(buf)) != sizeof(GONE_CONTENT) ||
	    strcmp(buf, GONE_CONTENT))
		fail("the unlinked file reopened through its O_PATH fd lost its content");
	if (fd >= 0)
		close(fd);
	if (read(fds[FILE_FD].fd, buf, 1) != -1 || errno != EBADF)
		fail("read() on an O_PATH fd did not say EBADF");
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	if (setup()) {
		pr_perror("setup");
		return 1;
	}

	test_daemon();
	test_waitsig();

	for (int i = 0; i < NR; i++)
		check_fd(&fds[i]);
	check_use();
	return pass();
}
