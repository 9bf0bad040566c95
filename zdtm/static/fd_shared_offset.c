/*
 * fd_shared_offset: one open file description shared by two processes and two fds.
 *
 * The test opens its file, dups the fd, and forks: parent fd, parent dup and child fd are
 * one description with one offset. A second open() of the same file has its own offset.
 * After restore the child reads from the shared description, and the parent must see the
 * offset move on both of its fds, but not on the independent one.
 */
#include <fcntl.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_FILENAME();

#define FILE_SIZE 8192
#define OFFSET 100
#define CHILD_READ 50
#define DUP_FD 17
#define SEED 0x0ff5UL

static char data[FILE_SIZE];
static int fd, other;

/* The child (fd only): check the shared offset, read through it; 0 when all was right. */
static int child_main(int pipe_fd, void *arg)
{
	char buf[CHILD_READ];
	off_t pos;

	(void)pipe_fd;
	(void)arg;
	close(DUP_FD);
	close(other);
	test_waitsig();
	pos = lseek(fd, 0, SEEK_CUR);
	if (pos != OFFSET) {
		test_msg("child: offset %lld, expected %d", (long long)pos, OFFSET);
		return 1;
	}
	if (read(fd, buf, CHILD_READ) != CHILD_READ) {
		test_msg("child: read failed");
		return 1;
	}
	for (int i = 0; i < CHILD_READ; i++)
		if (buf[i] != data[OFFSET + i]) {
			test_msg("child: data at offset %d differs", OFFSET + i);
			return 1;
		}
	return 0;
}

int main(int argc, char **argv)
{
	pid_t child;
	off_t pos;

	test_init(argc, argv);

	fd = open(test_filename, O_RDWR | O_CREAT | O_TRUNC, 0600);
	other = open(test_filename, O_RDONLY);
	if (fd < 0 || other < 0 || dup2(fd, DUP_FD) != DUP_FD) {
		pr_perror("open/dup %s", test_filename);
		return 1;
	}
	if (test_write_data(fd, data, FILE_SIZE, SEED, OFFSET))
		return 1;
	child = test_fork_child(TEST_NO_PIPE, NULL, child_main, NULL);
	if (child < 0)
		return 1;

	test_daemon();
	test_waitsig();

	pos = lseek(DUP_FD, 0, SEEK_CUR);
	if (pos != OFFSET)
		fail("offset %lld before the child read, expected %d", (long long)pos, OFFSET);
	if (stop_child_verdict(child, 10000))
		return 1;
	if (lseek(fd, 0, SEEK_CUR) != OFFSET + CHILD_READ ||
	    lseek(DUP_FD, 0, SEEK_CUR) != OFFSET + CHILD_READ)
		return fail("the child's read did not move the parent's offsets to %d: the "
			    "description is not shared", OFFSET + CHILD_READ);
	pos = lseek(other, 0, SEEK_CUR);
	if (pos != 0)
		return fail("the independent description's offset is %lld, not 0",
			    (long long)pos);
	return pass();
}
