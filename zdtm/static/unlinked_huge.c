/*
 * unlinked_huge: an unlinked sparse file of more than 5 GiB, open at an offset beyond 4 GiB.
 *
 * Data (a few hundred KiB in all, so the disk holds little) at the start, across the
 * 2 GiB and the 4 GiB offsets (where 32-bit signed and unsigned offsets wrap), in the
 * middle of the fifth GiB and at the very end, which is not page aligned; holes between.
 * After restore the fd still refers to an unlinked file (st_nlink 0) with the same size,
 * the same data/hole layout (SEEK_DATA/SEEK_HOLE), the same bytes in every data extent,
 * zeros in the holes it probes, and the same offset.
 *
 * --dense_mib=N adds N MiB of data from 2 GiB + 1 MiB on (not in the harness's runs, which keep
 * the disk use small: tests/engine/test_big_files.py saves more than 1 GiB this way).
 */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_FILENAME();

static unsigned int dense_mib;
TEST_OPTION(dense_mib, uint, "MiB of data written from 2 GiB + 1 MiB on (at most 1536)", 0);

#define GiB (1LL << 30)
#define KiB 1024LL
#define SIZE (5 * GiB + 12345)
#define OFFSET (4 * GiB + 123)
#define MAX_EXTENTS 32
#define DENSE (2 * GiB + (1 << 20))
#define DENSE_MAX 1536	/* MiB: the dense data ends before 4 GiB - 64 MiB */
#define DENSE_SEED 0x6006

struct piece {
	off_t pos;
	size_t len;
	uint64_t seed;
};

static const struct piece pieces[] = {
	{ 0, 16 * KiB, 0x1001 },
	{ 2 * GiB - 8 * KiB, 24 * KiB, 0x2002 },	/* across 2^31 */
	{ 4 * GiB - 3, 7, 0x3003 },			/* across 2^32, not block aligned */
	{ 4 * GiB + 512 * KiB, 256 * KiB, 0x4004 },
	{ SIZE - 100, 100, 0x5005 },			/* the end, not page aligned */
};
#define NR_PIECES (sizeof(pieces) / sizeof(pieces[0]))

struct layout {
	int n;
	off_t ext[MAX_EXTENTS][2];
};

static int layout_of(int fd, struct layout *l)
{
	off_t pos = 0, data, hole;

	l->n = 0;
	while (pos < SIZE) {
		data = lseek(fd, pos, SEEK_DATA);
		if (data < 0)
			return errno == ENXIO ? 0 : -1;
		hole = lseek(fd, data, SEEK_HOLE);
		if (hole < 0 || l->n == MAX_EXTENTS)
			return -1;
		l->ext[l->n][0] = data;
		l->ext[l->n][1] = hole;
		l->n++;
		pos = hole;
	}
	return 0;
}

/* Dense data, one MiB at a time (datafill of a seed per MiB): 0, or -1 (check: 1). */
static int dense(int fd, bool check)
{
	static char buf[1 << 20];

	if (dense_mib > DENSE_MAX) {
		errno = EINVAL;
		return -1;
	}
	for (unsigned int i = 0; i < dense_mib; i++) {
		off_t pos = DENSE + ((off_t)i << 20);

		if (!check) {
			datafill(buf, sizeof(buf), DENSE_SEED + i);
			if (pwrite(fd, buf, sizeof(buf), pos) != sizeof(buf))
				return -1;
		} else if (pread(fd, buf, sizeof(buf), pos) != sizeof(buf) ||
			   datacmp(buf, sizeof(buf), DENSE_SEED + i) >= 0) {
			fail("the dense data differs in its MiB %u", i);
			return 1;
		}
	}
	return 0;
}

static int setup(int fd)
{
	char *buf;

	for (size_t i = 0; i < NR_PIECES; i++) {
		buf = malloc(pieces[i].len);
		if (!buf)
			return -1;
		datafill(buf, pieces[i].len, pieces[i].seed);
		if (pwrite(fd, buf, pieces[i].len, pieces[i].pos) != (ssize_t)pieces[i].len) {
			free(buf);
			return -1;
		}
		free(buf);
	}
	return dense(fd, false);
}

static void check_content(int fd)
{
	static const off_t holes[] = { 1 * GiB, 4 * GiB - 64 * KiB, 4 * GiB + 16 * KiB,
				       5 * GiB };
	char *buf, zero[64];

	for (size_t i = 0; i < NR_PIECES; i++) {
		buf = malloc(pieces[i].len);
		if (!buf) {
			fail("malloc");
			return;
		}
		if (pread(fd, buf, pieces[i].len, pieces[i].pos) != (ssize_t)pieces[i].len)
			fail_perror("pread at %lld", (long long)pieces[i].pos);
		else if (datacmp(buf, pieces[i].len, pieces[i].seed) >= 0)
			fail("the data at %lld differs at byte %zd", (long long)pieces[i].pos,
			     datacmp(buf, pieces[i].len, pieces[i].seed));
		free(buf);
	}
	for (size_t i = 0; i < sizeof(holes) / sizeof(holes[0]); i++) {
		if (pread(fd, zero, sizeof(zero), holes[i]) != sizeof(zero))
			fail_perror("pread at %lld", (long long)holes[i]);
		for (size_t k = 0; k < sizeof(zero); k++)
			if (zero[k]) {
				fail("the hole at %lld holds data", (long long)holes[i]);
				break;
			}
	}
}

int main(int argc, char **argv)
{
	struct layout before, after;
	struct stat st;
	off_t pos;
	int fd;

	test_init(argc, argv);

	fd = open(test_filename, O_RDWR | O_CREAT | O_EXCL, 0640);
	/* layout_of() moves the offset: it is set last */
	if (fd < 0 || setup(fd) || unlink(test_filename) || layout_of(fd, &before) ||
	    lseek(fd, OFFSET, SEEK_SET) != OFFSET) {
		pr_perror("set up %s", test_filename);
		return 1;
	}
	if (fstat(fd, &st) || st.st_size != SIZE ||
	    st.st_blocks * 512 > (16 << 20) + ((off_t)dense_mib << 20)) {
		pr_err("the file is %lld bytes, %lld on disk: no sparse files here?",
		       (long long)st.st_size, (long long)st.st_blocks * 512);
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (fstat(fd, &st))
		return fail_perror("fstat");
	if (st.st_nlink != 0)
		fail("the file has %lu links: it is not unlinked", (unsigned long)st.st_nlink);
	if (st.st_size != SIZE)
		fail("size %lld, expected %lld", (long long)st.st_size, SIZE);
	if ((st.st_mode & 07777) != 0640)
		fail("mode %o, expected 640", st.st_mode & 07777);
	pos = lseek(fd, 0, SEEK_CUR);
	if (pos != OFFSET)
		fail("offset %lld, expected %lld", (long long)pos, OFFSET);
	if (layout_of(fd, &after))
		return fail_perror("SEEK_DATA/SEEK_HOLE");
	if (after.n != before.n)
		fail("%d data extents, expected %d", after.n, before.n);
	for (int i = 0; i < before.n && i < after.n; i++)
		if (after.ext[i][0] != before.ext[i][0] || after.ext[i][1] != before.ext[i][1])
			fail("data extent %d is %lld-%lld, expected %lld-%lld", i,
			     (long long)after.ext[i][0], (long long)after.ext[i][1],
			     (long long)before.ext[i][0], (long long)before.ext[i][1]);
	check_content(fd);
	dense(fd, true);
	return pass();
}
