/*
 * mmap_deleted: mappings of files that were unlinked afterwards.
 *
 * - "shared": 5 pages and 100 bytes, held by an O_RDWR fd and mapped MAP_SHARED
 *   read-write (written through the mapping), then unlinked; a new file took its name;
 *   also mapped MAP_PRIVATE from its second page, one page of it written (copied);
 * - "private": no fd, mapped MAP_PRIVATE read-write, two of its four pages written;
 * - "readonly": no fd, opened O_RDONLY and mapped MAP_SHARED read-only;
 * - "forked": no fd, mapped MAP_SHARED read-write, then a child was forked: the two
 *   processes share it.
 * /proc/PID/maps shows each as "<path> (deleted)". After restore: the same, every
 * mapping holds what it held (the private ones their copied pages, and the file's data in
 * the others), the shared mapping and the fd are still one file (a write through either
 * is seen through the other), the child and the parent still share "forked" (the child
 * writes, the parent reads), every file is still unlinked and the new file at the name
 * is untouched.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_DIRNAME();

#define PAGE 4096
#define SHARED_LEN (5 * PAGE + 100)
#define NEW_DATA "a new file at the name"

enum { SHARED, PRIVATE, READONLY, FORKED, NR };

static const char *names[NR] = { "shared", "private", "readonly", "forked" };
static char *maps[NR], *priv_view;
static int shared_fd;

static uint64_t seed(int file, int page) { return 0xde1e7ed000ULL + file * 100 + page; }

static char *map_file(int i, size_t len, int oflags, int prot, int mflags, int *fdp)
{
	char path[PATH_MAX];
	char *buf = malloc(len);
	int fd;

	snprintf(path, sizeof(path), "%s/%s", test_dirname, names[i]);
	fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0640);
	if (!buf || fd < 0)
		goto err;
	for (size_t k = 0; k * PAGE < len; k++)
		datafill(buf + k * PAGE, len - k * PAGE < PAGE ? len - k * PAGE : PAGE, seed(i, k));
	if (write(fd, buf, len) != (ssize_t)len || close(fd))
		goto err;
	free(buf);
	fd = open(path, oflags);
	if (fd < 0)
		return NULL;
	buf = mmap(NULL, len, prot, mflags, fd, 0);
	if (buf == MAP_FAILED || unlink(path))
		return NULL;
	if (fdp)
		*fdp = fd;
	else
		close(fd);
	return buf;
err:
	free(buf);
	return NULL;
}

static int child_main(int fd, void *arg)
{
	(void)arg;
	test_waitsig();
	/* after restore: a write the parent must see through its own mapping */
	datafill(maps[FORKED], PAGE, seed(FORKED, 9));
	return write(fd, "w", 1) == 1 ? 0 : 1;
}

static int setup(void)
{
	char path[PATH_MAX];
	int fd;

	if (mkdir(test_dirname, 0700))
		return -1;
	maps[SHARED] = map_file(SHARED, SHARED_LEN, O_RDWR, PROT_READ | PROT_WRITE,
				MAP_SHARED, &shared_fd);
	maps[PRIVATE] = map_file(PRIVATE, 4 * PAGE, O_RDONLY, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE, NULL);
	maps[READONLY] = map_file(READONLY, 2 * PAGE, O_RDONLY, PROT_READ, MAP_SHARED, NULL);
	maps[FORKED] = map_file(FORKED, 2 * PAGE, O_RDWR, PROT_READ | PROT_WRITE, MAP_SHARED,
				NULL);
	if (!maps[SHARED] || !maps[PRIVATE] || !maps[READONLY] || !maps[FORKED])
		return -1;
	priv_view = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, shared_fd, PAGE);
	if (priv_view == MAP_FAILED)
		return -1;

	/* written through the shared mapping: in the file (page 1 also seen by priv_view) */
	datafill(maps[SHARED] + PAGE, PAGE, seed(SHARED, 11));
	/* copied: private from now on */
	datafill(priv_view + PAGE, PAGE, seed(SHARED, 12));
	datafill(maps[PRIVATE], PAGE, seed(PRIVATE, 10));
	datafill(maps[PRIVATE] + 2 * PAGE, PAGE, seed(PRIVATE, 12));

	snprintf(path, sizeof(path), "%s/%s", test_dirname, names[SHARED]);
	fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0600);
	if (fd < 0 || write(fd, NEW_DATA, sizeof(NEW_DATA)) != sizeof(NEW_DATA) || close(fd))
		return -1;
	return 0;
}

static void check_page(const char *what, const char *p, size_t len, uint64_t s)
{
	ssize_t at = datacmp(p, len, s);

	if (at >= 0)
		fail("%s differs at byte %zd", what, at);
}

/* The VMA at addr is "<path> (deleted)" with perms; its inode is the fd's, if fd >= 0. */
static void check_vma_of(int i, const void *addr, const char *perms)
{
	char line[PATH_MAX + 128], want[PATH_MAX];
	unsigned long start, end, ino = 0, fd_ino = 0;
	struct vma_info vi;
	struct stat st;
	bool found = false;
	FILE *f;

	snprintf(want, sizeof(want), "/%s/%s (deleted)", test_dirname, names[i]);
	if (vma_find(addr, &vi) || strlen(vi.path) < strlen(want) ||
	    strcmp(vi.path + strlen(vi.path) - strlen(want), want) || strcmp(vi.perms, perms)) {
		fail("%s: the mapping is %s %s, expected ...%s %s", names[i], vi.perms, vi.path,
		     want, perms);
		return;
	}
	if (i != SHARED)
		return;
	f = fopen("/proc/self/maps", "r");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "%lx-%lx %*s %*s %*s %lu", &start, &end, &ino) == 3 &&
		    start <= (unsigned long)addr && (unsigned long)addr < end) {
			found = true;
			break;
		}
	if (f)
		fclose(f);
	if (!fstat(shared_fd, &st))
		fd_ino = st.st_ino;
	if (!found || ino != fd_ino)
		fail("%s: the mapping's inode %lu is not the fd's %lu", names[i], ino, fd_ino);
}

static void check_shared(void)
{
	char buf[PAGE];
	struct stat st;

	if (fstat(shared_fd, &st) || st.st_nlink || st.st_size != SHARED_LEN)
		fail("shared: the fd's file has %lu links, %lld bytes", (unsigned long)st.st_nlink,
		     (long long)st.st_size);
	check_page("shared page 0", maps[SHARED], PAGE, seed(SHARED, 0));
	check_page("shared page 1", maps[SHARED] + PAGE, PAGE, seed(SHARED, 11));
	check_page("shared tail", maps[SHARED] + 5 * PAGE, 100, seed(SHARED, 5));
	for (int k = 100; k < PAGE; k++)
		if (maps[SHARED][5 * PAGE + k]) {
			fail("shared: the page past the end of the file holds data");
			break;
		}
	check_page("the private view's first page", priv_view, PAGE, seed(SHARED, 11));
	check_page("the private view's copied page", priv_view + PAGE, PAGE, seed(SHARED, 12));
	/* one file, both ways */
	datafill(maps[SHARED] + 3 * PAGE, PAGE, seed(SHARED, 13));
	if (pread(shared_fd, buf, PAGE, 3 * PAGE) != PAGE || datacmp(buf, PAGE, seed(SHARED, 13)) >= 0)
		fail("shared: a write through the mapping is not in the fd's file");
	datafill(buf, PAGE, seed(SHARED, 14));
	if (pwrite(shared_fd, buf, PAGE, 4 * PAGE) != PAGE || memcmp(buf, maps[SHARED] + 4 * PAGE, PAGE))
		fail("shared: a write to the fd is not seen through the mapping");
	check_vma_of(SHARED, maps[SHARED], "rw-s");
	check_vma_of(SHARED, priv_view, "rw-p");
}

static void check_new_file(void)
{
	char path[PATH_MAX], buf[64];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", test_dirname, names[SHARED]);
	fd = open(path, O_RDONLY);
	if (fd < 0 || read(fd, buf, sizeof(buf)) != sizeof(NEW_DATA) || strcmp(buf, NEW_DATA))
		fail("the new file at the name changed");
	if (fd >= 0)
		close(fd);
}

int main(int argc, char **argv)
{
	pid_t child;
	char c;
	int from_child;

	test_init(argc, argv);
	if (setup()) {
		pr_perror("setup");
		return 1;
	}
	child = test_fork_child(TEST_PIPE_FROM_CHILD, &from_child, child_main, NULL);
	if (child < 0)
		return 1;

	test_daemon();
	test_waitsig();

	check_shared();
	check_page("private page 0", maps[PRIVATE], PAGE, seed(PRIVATE, 10));
	check_page("private page 1", maps[PRIVATE] + PAGE, PAGE, seed(PRIVATE, 1));
	check_page("private page 2", maps[PRIVATE] + 2 * PAGE, PAGE, seed(PRIVATE, 12));
	check_page("private page 3", maps[PRIVATE] + 3 * PAGE, PAGE, seed(PRIVATE, 3));
	check_vma_of(PRIVATE, maps[PRIVATE], "rw-p");
	check_page("readonly page 1", maps[READONLY] + PAGE, PAGE, seed(READONLY, 1));
	check_vma_of(READONLY, maps[READONLY], "r--s");
	check_vma_of(FORKED, maps[FORKED], "rw-s");
	check_new_file();

	if (kill(child, SIGTERM) || test_read_timeout(from_child, &c, 1, 10000))
		fail_perror("the child did not write to the shared mapping");
	else
		check_page("the page the child wrote", maps[FORKED], PAGE, seed(FORKED, 9));
	if (wait_child_verdict(child, 10000))
		return 1;
	return pass();
}
