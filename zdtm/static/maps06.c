/*
 * maps06: tens of thousands of separate private and shared mappings of ONE file.
 *
 * Neighbouring mappings alternate MAP_PRIVATE/MAP_SHARED and their file offsets are never
 * consecutive, so the kernel cannot merge them; every file page is mapped both ways.
 * RLIMIT_NOFILE is far below the number of mappings and the file is closed: an engine that
 * needs one fd per file mapping (or leaks one) cannot restore this, and the fd check sees a
 * leak. Every page is verified after
 * restore; shared mappings must still be the file (a write to it shows through).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_FILENAME();

#define NR_MAPS 30720
#define FILE_PAGES 16
#define NOFILE_SOFT 256	     /* far below NR_MAPS */
#define PROBE_PAGE 3	     /* file page rewritten after restore to prove sharing */

static long page;

/*
 * File page of mapping i. Neighbours differ by 7 or 8 pages (never by +1, so even two
 * mappings of the same kind could not merge), and both kinds map every page.
 */
static unsigned int file_page(unsigned int i) { return (i * 7 + i / 2) % FILE_PAGES; }
static bool is_shared(unsigned int i) { return i & 1; }
/* Every fourth private mapping gets its page written (copied on write). */
static bool is_cowed(unsigned int i) { return i % 8 == 0; }
static uint64_t file_seed(unsigned int k) { return 0x6d617073000000ULL + k; }
static uint64_t cow_seed(unsigned int i) { return 0xc0ed00000000ULL + i; }

/* Number of /proc/self/maps entries starting inside [lo, hi). */
static int count_vmas(unsigned long lo, unsigned long hi)
{
	unsigned long start, end;
	char line[512];
	int n = 0;
	FILE *f;

	f = fopen("/proc/self/maps", "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%lx-%lx", &start, &end) == 2 && start >= lo && start < hi)
			n++;
	fclose(f);
	return n;
}

/* Verify every mapping; returns the number of bad pages (each reported, up to a few). */
static unsigned int check_pages(const char *area)
{
	unsigned int bad = 0;

	for (unsigned int i = 0; i < NR_MAPS; i++) {
		uint64_t seed = is_cowed(i) ? cow_seed(i) : file_seed(file_page(i));
		ssize_t off = datacmp(area + (size_t)i * page, (size_t)page, seed);

		if (off >= 0 && bad++ < 5)
			fail("mapping %u (%s, file page %u%s) differs at byte %zd", i,
			     is_shared(i) ? "shared" : "private", file_page(i),
			     is_cowed(i) ? ", written" : "", off);
	}
	return bad;
}

int main(int argc, char **argv)
{
	struct rlimit rl;
	char *area, *buf;
	int fd, n;

	test_init(argc, argv);
	page = sysconf(_SC_PAGESIZE);

	fd = test_create_file_pages(test_filename, FILE_PAGES, file_seed);
	if (fd < 0)
		return 1;
	/* Reserve the range, then replace it piece by piece: nothing of the reservation stays. */
	area = mmap(NULL, (size_t)NR_MAPS * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED) {
		pr_perror("reserve");
		return 1;
	}
	for (unsigned int i = 0; i < NR_MAPS; i++) {
		void *want = area + (size_t)i * page;
		int flags = (is_shared(i) ? MAP_SHARED : MAP_PRIVATE) | MAP_FIXED;

		if (mmap(want, (size_t)page, PROT_READ | PROT_WRITE, flags, fd,
			 (off_t)file_page(i) * page) != want) {
			pr_perror("mmap %u", i);
			return 1;
		}
		if (is_cowed(i))
			datafill(want, (size_t)page, cow_seed(i));
		else
			(void)*(volatile char *)want; /* fault the file page in */
	}
	close(fd);
	n = count_vmas((unsigned long)area, (unsigned long)area + (size_t)NR_MAPS * page);
	if (n != NR_MAPS) {
		pr_err("%d VMAs in the area instead of %d: mappings merged?", n, NR_MAPS);
		return 1;
	}
	if (getrlimit(RLIMIT_NOFILE, &rl)) {
		pr_perror("getrlimit");
		return 1;
	}
	rl.rlim_cur = NOFILE_SOFT;
	if (setrlimit(RLIMIT_NOFILE, &rl)) {
		pr_perror("setrlimit(RLIMIT_NOFILE, %d)", NOFILE_SOFT);
		return 1;
	}
	test_msg("%d mappings of %s at %p, RLIMIT_NOFILE %d", NR_MAPS, test_filename, area,
		 NOFILE_SOFT);

	test_daemon();
	test_waitsig();

	if (getrlimit(RLIMIT_NOFILE, &rl))
		return fail_perror("getrlimit");
	if (rl.rlim_cur != NOFILE_SOFT)
		fail("RLIMIT_NOFILE soft limit is %llu, not %d", (unsigned long long)rl.rlim_cur,
		     NOFILE_SOFT);
	n = count_vmas((unsigned long)area, (unsigned long)area + (size_t)NR_MAPS * page);
	if (n != NR_MAPS)
		fail("%d VMAs in the area after restore instead of %d", n, NR_MAPS);
	if (check_pages(area))
		return pass(); /* the failures are recorded: pass() reports them */

	/* The shared mappings must still be the file: a write to the file shows through. */
	fd = open(test_filename, O_RDWR | O_CLOEXEC);
	buf = malloc((size_t)page);
	if (fd < 0 || !buf)
		return fail_perror("reopen %s", test_filename);
	datafill(buf, (size_t)page, ~file_seed(PROBE_PAGE));
	if (pwrite(fd, buf, (size_t)page, (off_t)PROBE_PAGE * page) != page)
		return fail_perror("pwrite %s", test_filename);
	close(fd);
	for (unsigned int i = 1; i < NR_MAPS; i += 2) {
		if (file_page(i) != PROBE_PAGE)
			continue;
		if (memcmp(area + (size_t)i * page, buf, (size_t)page))
			return fail("shared mapping %u does not show the write to file page %d",
				    i, PROBE_PAGE);
	}
	free(buf);
	return pass();
}
