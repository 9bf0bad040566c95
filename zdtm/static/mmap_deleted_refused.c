/*
 * mmap_deleted_refused: a MAP_SHARED mapping of a file that was then unlinked. The engine
 * cannot map it back, so its dump must refuse it (crfail), naming the mapping, and leave
 * the task running unchanged: the mapping still holds its data and still writes through.
 */
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_FILENAME();

#define SIZE (4 * 4096)
#define SEED 0xde1e7edUL

int main(int argc, char **argv)
{
	char *map;
	int fd;

	test_init(argc, argv);
	fd = open(test_filename, O_RDWR | O_CREAT | O_EXCL, 0600);
	if (fd < 0 || ftruncate(fd, SIZE)) {
		pr_perror("create %s", test_filename);
		return 1;
	}
	map = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED || close(fd) || unlink(test_filename)) {
		pr_perror("map and unlink");
		return 1;
	}
	datafill(map, SIZE, SEED);

	test_daemon();
	test_waitsig();

	if (datacmp(map, SIZE, SEED) >= 0)
		fail("the mapping of the deleted file lost its data");
	return pass();
}
