/*
 * cwd_deleted: removed directories still in use, as a working directory and through fds.
 *
 * - the test's cwd is "cwd" (mode 0751), removed after the chdir;
 * - "held" (mode 0705) is open O_RDONLY|O_DIRECTORY and O_PATH, then removed, and a new
 *   directory holding a file took its name;
 * - a child inherits both fds and makes "held" its cwd (fchdir).
 * /proc shows each as "<path> (deleted)". After restore it shows the same: the cwd and
 * the fds are still on removed directories (no links, nothing can be created in them)
 * with their modes, the child's cwd is the very directory its fds are on, the two fds
 * are still one directory, and the new directory at the name is untouched.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_DIRNAME();

#define KERNEL_O_LARGEFILE 0100000
#define NEW_FILE "in the new directory"

static int held, held_path;
static char cwd_path[PATH_MAX], held_name[PATH_MAX], new_file[PATH_MAX + 8];

/* The link ends in "/<dirname>/<name> (deleted)" (dirname is relative to the work dir):
 * 0, or -1 after saying what it is instead. */
static int check_link(const char *what, const char *proc, const char *name)
{
	char link[PATH_MAX], want[PATH_MAX + 64];
	ssize_t n = readlink(proc, link, sizeof(link) - 1);

	link[n < 0 ? 0 : n] = '\0';
	snprintf(want, sizeof(want), "/%s/%s (deleted)", test_dirname, name);
	if (n >= (ssize_t)strlen(want) && !strcmp(link + n - strlen(want), want))
		return 0;
	test_msg("%s is now %s, expected ...%s\n", what, link, want);
	return -1;
}

/* A removed directory: no links, the mode it had, nothing can be created in it. */
static void check_removed(const char *what, int dirfd, mode_t mode, struct stat *st)
{
	int fd;

	if (fstatat(dirfd, "", st, AT_EMPTY_PATH)) {
		fail_perror("%s: fstatat", what);
		return;
	}
	if (!S_ISDIR(st->st_mode) || st->st_nlink != 0 || (st->st_mode & 07777) != mode)
		fail("%s: mode %o, %lu links, expected a removed directory of mode %o", what,
		     st->st_mode, (unsigned long)st->st_nlink, mode);
	fd = openat(dirfd, "new", O_CREAT | O_WRONLY, 0600);
	if (fd >= 0 || errno != ENOENT)
		fail("%s: a file could be created in it (or %m)", what);
	if (fd >= 0)
		close(fd);
}

static int child_main(int fd, void *arg)
{
	struct stat here, st;
	char proc[64];

	(void)arg;
	if (fchdir(held) || write(fd, "r", 1) != 1 || close(fd))
		return 1;
	test_waitsig();
	if (stat(".", &here) || fstat(held, &st) || here.st_ino != st.st_ino ||
	    here.st_dev != st.st_dev || here.st_nlink) {
		test_msg("child: its cwd is not the removed directory its fd is on\n");
		return 1;
	}
	snprintf(proc, sizeof(proc), "/proc/%d/cwd", getpid());
	return check_link("the child's cwd", proc, "held") ? 1 : 0;
}

static int setup(void)
{
	char work[PATH_MAX / 2];
	int fd;

	/* absolute paths: relative ones mean nothing once the cwd is removed */
	if (!getcwd(work, sizeof(work)))
		return -1;
	snprintf(cwd_path, sizeof(cwd_path), "%s/%s/cwd", work, test_dirname);
	snprintf(held_name, sizeof(held_name), "%s/%s/held", work, test_dirname);
	snprintf(new_file, sizeof(new_file), "%s/file", held_name);
	if (mkdir(test_dirname, 0700) || mkdir(cwd_path, 0751) || mkdir(held_name, 0705) ||
	    chmod(cwd_path, 0751) || chmod(held_name, 0705))	/* whatever the umask */
		return -1;
	held = open(held_name, O_RDONLY | O_DIRECTORY);
	held_path = open(held_name, O_PATH);
	if (held < 0 || held_path < 0 || rmdir(held_name))
		return -1;
	/* a new directory takes the name */
	if (mkdir(held_name, 0700))
		return -1;
	fd = open(new_file, O_CREAT | O_WRONLY, 0600);
	if (fd < 0 || write(fd, NEW_FILE, sizeof(NEW_FILE)) != sizeof(NEW_FILE) || close(fd))
		return -1;
	return 0;
}

int main(int argc, char **argv)
{
	struct stat a, b, st;
	char buf[64], proc[64];
	pid_t child;
	int fd, flags, ready;

	test_init(argc, argv);
	if (setup()) {
		pr_perror("setup");
		return 1;
	}
	child = test_fork_child(TEST_PIPE_FROM_CHILD, &ready, child_main, NULL);
	if (child < 0)
		return 1;
	if (test_read_timeout(ready, buf, 1, 5000) || close(ready)) {
		pr_perror("the child did not move into the removed directory");
		return 1;
	}
	/* the child moves into the removed directory; then the test into its own cwd */
	if (chdir(cwd_path) || rmdir(cwd_path)) {
		pr_perror("chdir/rmdir %s", cwd_path);
		return 1;
	}

	test_daemon();
	test_waitsig();

	check_removed("cwd", AT_FDCWD, 0751, &st);
	snprintf(proc, sizeof(proc), "/proc/%d/cwd", getpid());
	if (check_link("the cwd", proc, "cwd"))
		fail("the cwd is not the removed directory");
	check_removed("held", held, 0705, &a);
	check_removed("held (O_PATH)", held_path, 0705, &b);
	if (a.st_ino != b.st_ino || a.st_dev != b.st_dev)
		fail("the two fds are no longer on one directory");
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", held);
	if (check_link("the fd", proc, "held"))
		fail("the fd is not on the removed directory");
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", held_path);
	if (check_link("the O_PATH fd", proc, "held"))
		fail("the O_PATH fd is not on the removed directory");
	flags = fcntl(held, F_GETFL) & ~(KERNEL_O_LARGEFILE | O_CLOEXEC);
	if (flags != (O_RDONLY | O_DIRECTORY))
		fail("the fd's flags are %#o", flags);
	flags = fcntl(held_path, F_GETFL) & ~(KERNEL_O_LARGEFILE | O_CLOEXEC);
	if (flags != O_PATH)
		fail("the O_PATH fd's flags are %#o", flags);

	fd = open(proc, O_RDONLY);	/* the fd on "held", reopened */
	if (fd < 0 || fstat(fd, &st) || st.st_ino != a.st_ino)
		fail("reopening the removed directory through /proc failed");
	if (fd >= 0)
		close(fd);
	fd = open(new_file, O_RDONLY);
	if (fd < 0 || read(fd, buf, sizeof(buf)) != sizeof(NEW_FILE) || strcmp(buf, NEW_FILE) ||
	    stat(new_file, &st) || st.st_ino == a.st_ino)
		fail("the new directory at the name changed");
	if (fd >= 0)
		close(fd);
	if (stop_child_verdict(child, 10000))
		return 1;
	return pass();
}
