/*
 * memfd_offset: memfds mapped at an offset, of a size that is not a page multiple.
 *
 * A: kept open (file position 7, seals GROW|SHRINK), 5 pages + 5 bytes long, pages 2-3
 *    mapped MAP_SHARED.
 * B: closed after mapping pages 1-3 of 4 MAP_SHARED (the mapping alone keeps it).
 * C: closed after mapping pages 1-2 of 3 MAP_PRIVATE, one page then written (COW).
 * After restore: same contents everywhere (the tail of A included), the fd's name, size,
 * seals and position, and A's fd and mapping still one object.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtmtst.h"

#define PG 4096UL
#define A_SIZE (5 * PG + 5)
#define SEALS (F_SEAL_SHRINK | F_SEAL_GROW)
#define SEED 0x0ff5e7UL

static int make_memfd(const char *name, size_t size, uint64_t seed, unsigned int flags)
{
	static char buf[6 * 4096];
	int fd = memfd_create(name, flags);

	if (fd < 0)
		return -1;
	datafill(buf, size, seed);
	if (write(fd, buf, size) != (ssize_t)size)
		return -1;
	return fd;
}

/* Whether map holds bytes [off, off+len) of datafill(seed). */
static bool same(const char *map, size_t off, size_t len, uint64_t seed)
{
	static char buf[6 * 4096];

	datafill(buf, off + len, seed);
	return !memcmp(map, buf + off, len);
}

int main(int argc, char **argv)
{
	char *a, *b, *c, path[64], link[PATH_MAX], tail[5];
	struct stat st;
	ssize_t n;
	int fd, fb, fc;

	test_init(argc, argv);

	fd = make_memfd("zdtm-off-a", A_SIZE, SEED, MFD_ALLOW_SEALING);
	fb = make_memfd("zdtm-off-b", 4 * PG, SEED + 1, 0);
	fc = make_memfd("zdtm-off-c", 3 * PG, SEED + 2, 0);
	if (fd < 0 || fb < 0 || fc < 0 || fcntl(fd, F_ADD_SEALS, SEALS) ||
	    lseek(fd, 7, SEEK_SET) != 7) {
		pr_perror("memfd setup");
		return 1;
	}
	a = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 2 * PG);
	b = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fb, PG);
	c = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fc, PG);
	if (a == MAP_FAILED || b == MAP_FAILED || c == MAP_FAILED) {
		pr_perror("mmap");
		return 1;
	}
	close(fb);
	close(fc);
	memset(c + PG, 0x5c, PG);

	test_daemon();
	test_waitsig();

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, link, sizeof(link) - 1);
	link[n < 0 ? 0 : n] = '\0';
	if (strcmp(link, "/memfd:zdtm-off-a (deleted)"))
		fail("fd points to %s", link);
	if (fstat(fd, &st) || st.st_size != (off_t)A_SIZE)
		fail("memfd A size is %lld", (long long)st.st_size);
	if (fcntl(fd, F_GET_SEALS) != SEALS)
		fail("memfd A seals are %#x", fcntl(fd, F_GET_SEALS));
	if (lseek(fd, 0, SEEK_CUR) != 7)
		fail("memfd A position moved");
	if (pread(fd, tail, 5, 5 * PG) != 5 || memcmp(tail, "\0\0\0\0\0", 5) == 0)
		fail("memfd A lost its last bytes");
	if (!same(a, 2 * PG, 2 * PG, SEED))
		fail("memfd A mapping lost its data");
	if (!same(b, PG, 3 * PG, SEED + 1))
		fail("memfd B mapping lost its data");
	if (!same(c, PG, PG, SEED + 2) || c[PG] != 0x5c || c[2 * PG - 1] != 0x5c)
		fail("memfd C private mapping lost its data");
	if (pwrite(fd, "Z", 1, 2 * PG + 9) != 1 || a[9] != 'Z')
		fail("memfd A fd and mapping are no longer one object");
	return pass();
}
