/*
 * file_offset_append: two open files of one regular file, one O_RDWR positioned in the
 * middle, one O_WRONLY|O_APPEND. After restore the flags and the offset are the same, a
 * read continues where it was, and an append still goes to the end of the file.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_FILENAME();

#define FILE_SIZE 10000
#define OFFSET 4321
#define TAIL 100
#define SEED 0xf11eUL

int main(int argc, char **argv)
{
	static char buf[FILE_SIZE], data[FILE_SIZE];
	int rw, ap, fl;
	struct stat st;
	off_t pos;

	test_init(argc, argv);

	rw = open(test_filename, O_RDWR | O_CREAT | O_TRUNC, 0600);
	ap = open(test_filename, O_WRONLY | O_APPEND);
	if (rw < 0 || ap < 0) {
		pr_perror("open %s", test_filename);
		return 1;
	}
	if (test_write_data(rw, data, FILE_SIZE, SEED, OFFSET))
		return 1;

	test_daemon();
	test_waitsig();

	fl = fcntl(rw, F_GETFL);
	if ((fl & O_ACCMODE) != O_RDWR || (fl & O_APPEND))
		fail("read-write fd has flags %#o", fl);
	fl = fcntl(ap, F_GETFL);
	if ((fl & O_ACCMODE) != O_WRONLY || !(fl & O_APPEND))
		return fail("append fd has flags %#o, not O_WRONLY|O_APPEND", fl);
	pos = lseek(rw, 0, SEEK_CUR);
	if (pos != OFFSET)
		return fail("offset is %lld, expected %d", (long long)pos, OFFSET);
	if (fstat(rw, &st) || st.st_size != FILE_SIZE)
		return fail("file size is %lld, expected %d", (long long)st.st_size, FILE_SIZE);
	if (read(rw, buf, FILE_SIZE) != FILE_SIZE - OFFSET)
		return fail_perror("read from the offset");
	for (int i = 0; i < FILE_SIZE - OFFSET; i++)
		if (buf[i] != data[OFFSET + i])
			return fail("data read at file offset %d differs", OFFSET + i);
	if (pread(rw, buf, OFFSET, 0) != OFFSET)
		return fail_perror("pread the head");
	for (int i = 0; i < OFFSET; i++)
		if (buf[i] != data[i])
			return fail("file content differs at offset %d", i);
	if (write(ap, "appended", 8) != 8)
		return fail_perror("append");
	if (fstat(rw, &st) || st.st_size != FILE_SIZE + 8)
		return fail("append did not go to the end: size %lld", (long long)st.st_size);
	return pass();
}
