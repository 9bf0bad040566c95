/*
 * umask: an unusual umask. After restore it is the same, and files get created with it.
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_FILENAME();

#define MASK 0352

int main(int argc, char **argv)
{
	struct stat st;
	mode_t m;
	int fd;

	test_init(argc, argv);

	umask(MASK);

	test_daemon();
	test_waitsig();

	m = umask(MASK);
	if (m != MASK)
		return fail("umask is %#o, expected %#o", m, MASK);
	fd = open(test_filename, O_WRONLY | O_CREAT | O_EXCL, 0777);
	if (fd < 0 || fstat(fd, &st))
		return fail_perror("create %s", test_filename);
	close(fd);
	if ((st.st_mode & 0777) != (0777 & ~MASK))
		return fail("new file has mode %#o, expected %#o", st.st_mode & 0777, 0777 & ~MASK);
	return pass();
}
