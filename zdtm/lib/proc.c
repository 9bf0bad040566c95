/*
 * proc.c - small /proc files read whole: a task's stat line, comm, environ, id maps.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "zdtmtst.h"

ssize_t test_read_file(const char *path, char *buf, size_t size)
{
	ssize_t n = 0;
	size_t len = 0;
	int fd, err;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	/* /proc files may come in several reads: read to EOF (or a full buffer). */
	while (len < size && (n = read(fd, buf + len, size - len)) > 0)
		len += (size_t)n;
	err = errno;
	close(fd);
	errno = err;
	return n < 0 ? -1 : (ssize_t)len;
}

int proc_stat(pid_t pid, char *state, pid_t *ppid)
{
	char path[64], buf[512], *s;
	ssize_t n;
	int pp;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	n = test_read_file(path, buf, sizeof(buf) - 1);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	/* "pid (comm) state ppid ...": comm may hold anything, so start after its last ')'. */
	s = strrchr(buf, ')');
	if (!s || s[1] != ' ' || sscanf(s + 2, "%*c %d", &pp) != 1) {
		errno = EINVAL;
		return -1;
	}
	if (state)
		*state = s[2];
	if (ppid)
		*ppid = pp;
	return 0;
}

const char *task_comm(pid_t tid)
{
	static char buf[64];
	char path[64];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/task/%d/comm", tid);
	n = test_read_file(path, buf, sizeof(buf) - 1);
	buf[n > 0 ? n : 0] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	return buf;
}

/* Whether `id` is inside one of the ranges of an id map file (uid_map, gid_map). */
static bool id_in_map(const char *map, unsigned int id)
{
	char buf[4096], *line, *save;
	unsigned int in, out, count;
	ssize_t n = test_read_file(map, buf, sizeof(buf) - 1);

	if (n < 0)
		return false;
	buf[n] = '\0';
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		if (sscanf(line, "%u %u %u", &in, &out, &count) == 3 && id >= in && id - in < count)
			return true;
	return false;
}

bool test_ids_mapped(uid_t uid, gid_t gid)
{
	return id_in_map("/proc/self/uid_map", uid) && id_in_map("/proc/self/gid_map", gid);
}
