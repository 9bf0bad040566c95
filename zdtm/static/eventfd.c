/*
 * eventfd: two eventfds, one counting (value above 2^32, beyond eventfd()'s initial value)
 * and one in semaphore mode, one of them non-blocking and dup'ed so the two fds share one
 * open file description. After restore the counters, the modes and the sharing are as
 * before, and both still count.
 */
#include <fcntl.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "zdtmtst.h"

#define BIG_COUNT 0x123456789ULL
#define SEM_COUNT 3

static int read_count(int fd, uint64_t *v)
{
	return read(fd, v, sizeof(*v)) == sizeof(*v) ? 0 : -1;
}

int main(int argc, char **argv)
{
	uint64_t v = BIG_COUNT;
	int cnt, sem, dup_fd;

	test_init(argc, argv);

	cnt = eventfd(0, EFD_NONBLOCK);
	sem = eventfd(SEM_COUNT, EFD_SEMAPHORE | EFD_CLOEXEC);
	if (cnt < 0 || sem < 0) {
		pr_perror("eventfd");
		return 1;
	}
	if (write(cnt, &v, sizeof(v)) != sizeof(v)) {
		pr_perror("write eventfd");
		return 1;
	}
	dup_fd = dup(cnt);
	if (dup_fd < 0) {
		pr_perror("dup");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (!(fcntl(dup_fd, F_GETFL) & O_NONBLOCK))
		fail("the dup of the counting eventfd lost O_NONBLOCK");
	if (!(fcntl(sem, F_GETFD) & FD_CLOEXEC))
		fail("the semaphore eventfd lost FD_CLOEXEC");
	/* Semaphore mode: each read takes one. */
	for (int i = 0; i < SEM_COUNT; i++) {
		if (read_count(sem, &v) || v != 1)
			return fail_perror("semaphore read %d gave %llu", i, (unsigned long long)v);
	}
	if (fcntl(sem, F_SETFL, O_NONBLOCK) || read(sem, &v, sizeof(v)) != -1 || errno != EAGAIN)
		return fail("the semaphore eventfd holds more than %d", SEM_COUNT);
	/* Counting mode, read through the dup: one read takes the whole value. */
	if (read_count(dup_fd, &v))
		return fail_perror("read counting eventfd");
	if (v != BIG_COUNT)
		return fail("counter %#llx, expected %#llx", (unsigned long long)v, BIG_COUNT);
	if (read(cnt, &v, sizeof(v)) != -1 || errno != EAGAIN)
		return fail("the dup does not share the counter with the original fd");
	v = 7;
	if (write(cnt, &v, sizeof(v)) != sizeof(v) || read_count(dup_fd, &v) || v != 7)
		return fail("the eventfd does not count after restore");
	return pass();
}
