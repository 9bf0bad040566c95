/*
 * unlinked_attrs: an open, unlinked regular file keeps its attributes.
 *
 * The file (owner 5:6, mode 0604, an mtime in the past) holds data at 0 and at 1 MiB with
 * a hole between, and was unlinked while open; then a new file took its name. After
 * restore the fd's /proc name is still "<path> (deleted)", with the same owner, mode,
 * mtime, size, content and hole, and the new file at the name is untouched.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_FILENAME();

#define FAR (1L << 20)
#define MTIME 1100000000L
#define HEAD "head-data"
#define TAIL "tail-data"
#define NEW "new file"

static void check_name(int fd)
{
	char path[64], link[PATH_MAX], want[PATH_MAX];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, link, sizeof(link) - 1);
	link[n < 0 ? 0 : n] = '\0';
	/* test_filename is relative to the work dir: compare the tail only. */
	snprintf(want, sizeof(want), "/%s (deleted)", test_filename);
	if (n < (ssize_t)strlen(want) || strcmp(link + n - strlen(want), want))
		fail("the fd is now %s", link);
}

int main(int argc, char **argv)
{
	char buf[32];
	struct stat st;
	int fd, nfd;

	test_init(argc, argv);

	fd = open(test_filename, O_RDWR | O_CREAT | O_EXCL, 0600);
	struct timespec times[2] = { { MTIME, 0 }, { MTIME, 0 } };
	if (fd < 0 || pwrite(fd, HEAD, sizeof(HEAD), 0) != sizeof(HEAD) ||
	    pwrite(fd, TAIL, sizeof(TAIL), FAR) != sizeof(TAIL) || fchown(fd, 5, 6) ||
	    fchmod(fd, 0604) || futimens(fd, times) || unlink(test_filename)) {
		pr_perror("set up %s", test_filename);
		return 1;
	}
	nfd = open(test_filename, O_RDWR | O_CREAT | O_EXCL, 0600);
	if (nfd < 0 || write(nfd, NEW, sizeof(NEW)) != sizeof(NEW) || close(nfd)) {
		pr_perror("new file");
		return 1;
	}

	test_daemon();
	test_waitsig();

	check_name(fd);
	if (fstat(fd, &st))
		return fail_perror("fstat");
	if (st.st_nlink || st.st_uid != 5 || st.st_gid != 6 || (st.st_mode & 07777) != 0604)
		fail("nlink %d owner %d:%d mode %o, expected 0 5:6 604", (int)st.st_nlink,
		     (int)st.st_uid, (int)st.st_gid, st.st_mode & 07777);
	if (st.st_mtime != MTIME)
		fail("mtime is %lld, expected %ld", (long long)st.st_mtime, MTIME);
	if (st.st_size != FAR + (off_t)sizeof(TAIL))
		fail("size is %lld", (long long)st.st_size);
	if (lseek(fd, 4096, SEEK_DATA) != FAR)
		fail("the hole between 4 KiB and 1 MiB is gone");
	if (pread(fd, buf, sizeof(HEAD), 0) != sizeof(HEAD) || strcmp(buf, HEAD) ||
	    pread(fd, buf, sizeof(TAIL), FAR) != sizeof(TAIL) || strcmp(buf, TAIL))
		fail("content changed");
	nfd = open(test_filename, O_RDONLY);
	if (nfd < 0 || read(nfd, buf, sizeof(buf)) != sizeof(NEW) || strcmp(buf, NEW))
		fail("the new file at the name changed");
	return pass();
}
