/*
 * memfd_shared: a sealed memfd mapped MAP_SHARED by a parent and its child, both keeping
 * the fd. After restore the fd is still the memfd (name, size, seals), both mappings hold
 * the data, and they and the fd are still one object: the child's pwrite() is seen in the
 * parent's mapping.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtmtst.h"

#define NAME "zdtm-memfd"
#define SIZE (4UL << 20)
#define SEALS (F_SEAL_SHRINK | F_SEAL_GROW)
#define MARK_OFF 12345
#define SEED 0x3e3fdUL

/* What both processes check: the fd and the mapping. 0 when right, else a message. */
static const char *check(int fd, const unsigned char *map, uint32_t crc)
{
	static char why[128];
	char path[64], link[PATH_MAX];
	struct stat st;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		return "the memfd fd is gone";
	link[n] = '\0';
	if (strcmp(link, "/memfd:" NAME " (deleted)")) {
		snprintf(why, sizeof(why), "fd points to %.100s", link);
		return why;
	}
	if (fstat(fd, &st) || st.st_size != (off_t)SIZE)
		return "memfd size changed";
	if (fcntl(fd, F_GET_SEALS) != SEALS)
		return "memfd seals changed";
	if (datachk(map, SIZE, &crc))
		return "the mapping's CRC changed";
	return NULL;
}

int main(int argc, char **argv)
{
	uint32_t crc = SEED;
	unsigned char *map;
	const char *why;
	int fd, status;
	pid_t child;

	test_init(argc, argv);

	fd = memfd_create(NAME, MFD_ALLOW_SEALING);
	if (fd < 0) {
		pr_perror("memfd_create");
		return 1;
	}
	if (ftruncate(fd, SIZE) || fcntl(fd, F_ADD_SEALS, SEALS)) {
		pr_perror("ftruncate/seal");
		return 1;
	}
	map = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED) {
		pr_perror("mmap");
		return 1;
	}
	datagen(map, SIZE, &crc);
	child = fork();
	if (child < 0) {
		pr_perror("fork");
		return 1;
	}
	if (!child) {
		test_waitsig();
		why = check(fd, map, crc);
		if (why) {
			test_msg("child: %s", why);
			_exit(1);
		}
		_exit(pwrite(fd, "M", 1, MARK_OFF) == 1 ? 0 : 1);
	}

	test_daemon();
	test_waitsig();

	why = check(fd, map, crc);
	if (why)
		fail("parent: %s", why);
	kill(child, SIGTERM);
	if (test_waitpid(child, &status, 10000)) {
		kill(child, SIGKILL);
		test_waitpid(child, NULL, 5000);
		return fail_perror("child %d did not exit", child);
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		return fail("child failed (status %#x), see above", status);
	if (map[MARK_OFF] != 'M')
		return fail("the child's pwrite() is not in the parent's mapping");
	return pass();
}
