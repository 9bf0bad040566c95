/*
 * mem_file_shared: a MAP_SHARED file mapping written through memory. The writes are in the
 * file before and after C/R, and after restore the mapping is still the file: a new write
 * through it is seen by read(2), and a pwrite(2) is seen through it.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_FILENAME();

#define NR_PAGES 16

static uint64_t seed(unsigned int k, unsigned int gen) { return 0x5ad0000ULL + gen * 100 + k; }

/* Every page of the file equals the generation-`gen` data; -1 (and fail()) if not. */
static int check_file(int fd, char *buf, long page, unsigned int gen)
{
	for (unsigned int k = 0; k < NR_PAGES; k++) {
		if (pread(fd, buf, (size_t)page, (off_t)k * page) != page)
			return fail_perror("pread"), -1;
		if (datacmp(buf, (size_t)page, seed(k, gen)) >= 0)
			return fail("file page %u does not hold generation %u", k, gen), -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	long page = sysconf(_SC_PAGESIZE);
	char *map, *buf;
	int fd;

	test_init(argc, argv);

	buf = malloc((size_t)page);
	fd = open(test_filename, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (!buf || fd < 0 || ftruncate(fd, NR_PAGES * page)) {
		pr_perror("create %s", test_filename);
		return 1;
	}
	map = test_map_fd(fd, NR_PAGES * (size_t)page, MAP_SHARED);
	if (!map)
		return 1;
	close(fd);
	for (unsigned int k = 0; k < NR_PAGES; k++)
		datafill(map + k * page, (size_t)page, seed(k, 0));

	test_daemon();
	test_waitsig();

	for (unsigned int k = 0; k < NR_PAGES; k++)
		if (datacmp(map + k * page, (size_t)page, seed(k, 0)) >= 0)
			return fail("mapped page %u lost its data", k);
	fd = open(test_filename, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return fail_perror("reopen %s", test_filename);
	if (check_file(fd, buf, page, 0))
		return 1;
	/* Still shared with the file, both ways. */
	for (unsigned int k = 0; k < NR_PAGES; k++)
		datafill(map + k * page, (size_t)page, seed(k, 1));
	if (check_file(fd, buf, page, 1))
		return 1;
	datafill(buf, (size_t)page, seed(0, 2));
	if (pwrite(fd, buf, (size_t)page, 0) != page)
		return fail_perror("pwrite");
	if (memcmp(map, buf, (size_t)page))
		return fail("a pwrite to the file is not seen through the mapping");
	close(fd);
	return pass();
}
