/*
 * cwd: the working directory is a directory the test created (--dirname). After restore
 * getcwd() names it and "." is the same inode.
 */
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_DIRNAME();

int main(int argc, char **argv)
{
	char before[PATH_MAX], after[PATH_MAX];
	struct stat st0, st1;

	test_init(argc, argv);

	if (mkdir(test_dirname, 0700) || chdir(test_dirname)) {
		pr_perror("mkdir/chdir %s", test_dirname);
		return 1;
	}
	if (!getcwd(before, sizeof(before)) || stat(".", &st0)) {
		pr_perror("getcwd");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (!getcwd(after, sizeof(after)))
		return fail_perror("getcwd");
	if (strcmp(before, after))
		return fail("cwd is %s, expected %s", after, before);
	if (stat(".", &st1))
		return fail_perror("stat .");
	if (st0.st_dev != st1.st_dev || st0.st_ino != st1.st_ino)
		return fail("cwd is another directory of the same name");
	return pass();
}
