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
#include <unistd.h>

#include "zdtmtst.h"

#define NAME "zdtm-memfd"
#define SIZE (4UL << 20)
#define SEALS (F_SEAL_SHRINK | F_SEAL_GROW)
#define MARK_OFF 12345
#define SEED 0x3e3fdUL

/* The state both processes check. */
static int fd;
static unsigned char *map;
static uint32_t crc;

/* What both processes check: the fd and the mapping. 0 when right, else a message. */
static const char *check(void)
{
	static char why[128];
	char path[64], link[PATH_MAX];
	uint32_t now = crc;
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
	if (datachk(map, SIZE, &now))
		return "the mapping's CRC changed";
	return NULL;
}

/* The child: the same checks after SIGTERM, then a write the parent must see. */
static int child_main(int pipe_fd, void *arg)
{
	const char *why;

	(void)pipe_fd;
	(void)arg;
	test_waitsig();
	why = check();
	if (why) {
		test_msg("child: %s", why);
		return 1;
	}
	return pwrite(fd, "M", 1, MARK_OFF) == 1 ? 0 : 1;
}

int main(int argc, char **argv)
{
	const char *why;
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
	map = test_map_fd(fd, SIZE, MAP_SHARED);
	if (!map)
		return 1;
	crc = SEED;
	datagen(map, SIZE, &crc);
	child = test_fork_child(TEST_NO_PIPE, NULL, child_main, NULL);
	if (child < 0)
		return 1;

	test_daemon();
	test_waitsig();

	why = check();
	if (why)
		fail("parent: %s", why);
	if (stop_child_verdict(child, 10000))
		return 1;
	if (map[MARK_OFF] != 'M')
		return fail("the child's pwrite() is not in the parent's mapping");
	return pass();
}
