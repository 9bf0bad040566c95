/*
 * mem_file_private: a MAP_PRIVATE file mapping where some pages were written (copied on
 * write) and the others were only read. After restore the written pages keep their private
 * data, the others still show the file, and the file itself was never modified.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_FILENAME();

#define NR_PAGES 16

static bool cowed(unsigned int k) { return k == 2 || k == 5 || k == 9 || k == 15; }
static uint64_t file_seed(unsigned int k) { return 0xf11e0000ULL + k; }
static uint64_t cow_seed(unsigned int k) { return 0xc0e0000ULL + k; }

int main(int argc, char **argv)
{
	long page = sysconf(_SC_PAGESIZE);
	char *map, *buf;
	int fd;

	test_init(argc, argv);

	fd = test_create_file_pages(test_filename, NR_PAGES, file_seed);
	if (fd < 0)
		return 1;
	map = test_map_fd(fd, NR_PAGES * (size_t)page, MAP_PRIVATE);
	if (!map)
		return 1;
	close(fd);
	buf = malloc((size_t)page); /* to read the file back after restore */
	if (!buf) {
		pr_perror("malloc");
		return 1;
	}
	for (unsigned int k = 0; k < NR_PAGES; k++) {
		if (cowed(k))
			datafill(map + k * page, (size_t)page, cow_seed(k));
		else
			(void)*(volatile char *)(map + k * page);
	}

	test_daemon();
	test_waitsig();

	for (unsigned int k = 0; k < NR_PAGES; k++) {
		ssize_t off = datacmp(map + k * page, (size_t)page,
				      cowed(k) ? cow_seed(k) : file_seed(k));

		if (off >= 0)
			fail("page %u (%s) differs at byte %zd", k, cowed(k) ? "written" : "file",
			     off);
	}
	fd = open(test_filename, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail_perror("reopen %s", test_filename);
	for (unsigned int k = 0; k < NR_PAGES; k++) {
		if (pread(fd, buf, (size_t)page, (off_t)k * page) != page)
			return fail_perror("pread");
		if (datacmp(buf, (size_t)page, file_seed(k)) >= 0)
			fail("file page %u was modified through a private mapping", k);
	}
	close(fd);
	return pass();
}
