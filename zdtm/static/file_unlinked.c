/*
 * file_unlinked: a regular file that was unlinked while open, with content and an offset.
 * After restore the fd still refers to an unlinked file (st_nlink 0) with the same size,
 * content and offset.
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_FILENAME();

#define FILE_SIZE 20000
#define OFFSET 12345
#define SEED 0xde1eUL

int main(int argc, char **argv)
{
	static char data[FILE_SIZE], buf[FILE_SIZE];
	struct stat st;
	off_t pos;
	int fd;

	test_init(argc, argv);

	fd = open(test_filename, O_RDWR | O_CREAT | O_EXCL, 0600);
	if (fd < 0) {
		pr_perror("open %s", test_filename);
		return 1;
	}
	if (test_write_data(fd, data, FILE_SIZE, SEED, OFFSET))
		return 1;
	if (unlink(test_filename)) {
		pr_perror("unlink %s", test_filename);
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (fstat(fd, &st))
		return fail_perror("fstat");
	if (st.st_nlink != 0)
		return fail("the file has %lu links: it is not unlinked", (unsigned long)st.st_nlink);
	if (st.st_size != FILE_SIZE)
		return fail("size %lld, expected %d", (long long)st.st_size, FILE_SIZE);
	pos = lseek(fd, 0, SEEK_CUR);
	if (pos != OFFSET)
		return fail("offset %lld, expected %d", (long long)pos, OFFSET);
	if (pread(fd, buf, FILE_SIZE, 0) != FILE_SIZE)
		return fail_perror("pread");
	for (int i = 0; i < FILE_SIZE; i++)
		if (buf[i] != data[i])
			return fail("content differs at byte %d", i);
	return pass();
}
