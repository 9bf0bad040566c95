/*
 * mem_sparse: a 256 MiB private anonymous region with a few hundred scattered written pages.
 * After restore the written pages hold their data, every other page reads zero, and the
 * region is still sparse: PAGEMAP_SCAN finds no more populated pages than were written (an
 * engine that writes the whole region back would allocate 256 MiB).
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "uapi.h"
#include "zdtmtst.h"

#define REGION (256UL << 20)
#define NR_WRITTEN 300
#define SEED 0x5ba25eUL

static long page;
static unsigned long written[NR_WRITTEN]; /* page indexes, strictly increasing */

/* Pages of [map, map+REGION) with their own content (in RAM or swap, not the zero page). */
static long populated_pages(char *map)
{
	struct page_region regs[64];
	struct pm_scan_arg arg = {
		.size = sizeof(arg),
		.start = (unsigned long)map,
		.end = (unsigned long)map + REGION,
		.vec = (unsigned long)regs,
		.vec_len = 64,
		.category_inverted = PAGE_IS_PFNZERO,
		.category_mask = PAGE_IS_PFNZERO,
		.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
		.return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
	};
	int fd, r, err;
	long n = 0;

	fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	do {
		r = ioctl(fd, PAGEMAP_SCAN, &arg);
		for (int i = 0; i < r; i++)
			n += (long)((regs[i].end - regs[i].start) / (unsigned long)page);
		arg.start = arg.walk_end;
	} while (r > 0 && arg.walk_end < arg.end);
	err = errno;
	close(fd);
	errno = err;
	return r < 0 ? -1 : n;
}

int main(int argc, char **argv)
{
	uint64_t rng = 1;
	char *map;
	long n;

	test_init(argc, argv);
	page = sysconf(_SC_PAGESIZE);

	map = mmap(NULL, REGION, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (map == MAP_FAILED) {
		pr_perror("mmap");
		return 1;
	}
	/* No transparent huge pages: one written byte must stay one page. */
	if (madvise(map, REGION, MADV_NOHUGEPAGE)) {
		pr_perror("madvise(MADV_NOHUGEPAGE)");
		return 1;
	}
	/* Scattered pages: one at a random place in each of NR_WRITTEN equal slots. */
	for (unsigned long i = 0, slot = REGION / (unsigned long)page / NR_WRITTEN;
	     i < NR_WRITTEN; i++) {
		rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
		written[i] = i * slot + (rng >> 33) % slot;
		datafill(map + written[i] * page, (size_t)page, SEED + written[i]);
	}
	n = populated_pages(map);
	if (n < 0 && (errno == ENOTTY || errno == EINVAL))
		return skip("PAGEMAP_SCAN is not supported here: %s", strerror(errno));
	if (n != NR_WRITTEN) {
		pr_err("%ld populated pages after writing %d (scan errno %d)", n, NR_WRITTEN, errno);
		return 1;
	}

	test_daemon();
	test_waitsig();

	/* First, before any read maps zero pages in. */
	n = populated_pages(map);
	if (n < 0)
		return fail_perror("PAGEMAP_SCAN");
	if (n > NR_WRITTEN)
		fail("%ld pages populated after restore, only %d were written", n, NR_WRITTEN);
	for (unsigned long p = 0, w = 0; p < REGION / (unsigned long)page; p++) {
		const unsigned long *q = (const unsigned long *)(map + p * page);

		if (w < NR_WRITTEN && written[w] == p) {
			ssize_t off = datacmp(q, (size_t)page, SEED + p);

			if (off >= 0)
				return fail("written page %lu differs at byte %zd", p, off);
			w++;
			continue;
		}
		for (size_t i = 0; i < (size_t)page / sizeof(*q); i++)
			if (q[i])
				return fail("untouched page %lu is not zero at word %zu", p, i);
	}
	return pass();
}
