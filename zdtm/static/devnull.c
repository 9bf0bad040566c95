/*
 * devnull: /dev/null open read-write on a high fd number. After restore the fd is the same
 * character device (1:3) with the same flags, reads return EOF and writes are swallowed.
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "zdtmtst.h"

#define FD 42

int main(int argc, char **argv)
{
	struct stat st;
	char c;
	int fd, fl;

	test_init(argc, argv);

	fd = open("/dev/null", O_RDWR);
	if (fd < 0 || dup2(fd, FD) != FD || close(fd)) {
		pr_perror("open /dev/null as fd %d", FD);
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (fstat(FD, &st))
		return fail_perror("fstat(%d)", FD);
	if (!S_ISCHR(st.st_mode) || major(st.st_rdev) != 1 || minor(st.st_rdev) != 3)
		return fail("fd %d is not /dev/null (mode %#o, rdev %u:%u)", FD, st.st_mode,
			    major(st.st_rdev), minor(st.st_rdev));
	fl = fcntl(FD, F_GETFL);
	if ((fl & O_ACCMODE) != O_RDWR)
		return fail("flags %#o, expected O_RDWR", fl);
	if (read(FD, &c, 1) != 0)
		return fail("read from /dev/null did not return EOF");
	if (write(FD, "x", 1) != 1)
		return fail_perror("write to /dev/null");
	return pass();
}
