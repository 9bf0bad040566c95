/*
 * pipe_data: a pipe holding unread data, its read end non-blocking and its capacity raised.
 * After restore exactly the same bytes are in it (nothing lost, nothing extra), the flags
 * and the capacity are the same, and both ends still work as one pipe.
 */
#include <fcntl.h>
#include <unistd.h>

#include "zdtmtst.h"

#define DATA_LEN 3000
#define PIPE_SIZE (128 * 1024)
#define SEED 0x919eUL

int main(int argc, char **argv)
{
	char data[DATA_LEN], buf[DATA_LEN + 1];
	int p[2], fl, sz;
	ssize_t n;

	test_init(argc, argv);

	if (pipe(p)) {
		pr_perror("pipe");
		return 1;
	}
	if (fcntl(p[0], F_SETFL, O_NONBLOCK) || fcntl(p[1], F_SETPIPE_SZ, PIPE_SIZE) < 0) {
		pr_perror("fcntl");
		return 1;
	}
	datafill(data, DATA_LEN, SEED);
	if (write(p[1], data, DATA_LEN) != DATA_LEN) {
		pr_perror("write");
		return 1;
	}

	test_daemon();
	test_waitsig();

	fl = fcntl(p[0], F_GETFL);
	if ((fl & O_ACCMODE) != O_RDONLY || !(fl & O_NONBLOCK))
		fail("read end flags %#o, expected O_RDONLY|O_NONBLOCK", fl);
	fl = fcntl(p[1], F_GETFL);
	if ((fl & O_ACCMODE) != O_WRONLY || (fl & O_NONBLOCK))
		fail("write end flags %#o, expected O_WRONLY", fl);
	sz = fcntl(p[1], F_GETPIPE_SZ);
	if (sz != PIPE_SIZE)
		fail("pipe capacity %d, expected %d", sz, PIPE_SIZE);
	n = read(p[0], buf, sizeof(buf));
	if (n != DATA_LEN)
		return fail("read %zd bytes from the pipe, expected %d", n, DATA_LEN);
	for (int i = 0; i < DATA_LEN; i++)
		if (buf[i] != data[i])
			return fail("pipe data differs at byte %d", i);
	if (read(p[0], buf, 1) != -1 || errno != EAGAIN)
		return fail("the pipe is not empty after reading the data back");
	if (write(p[1], "x", 1) != 1 || read(p[0], buf, 1) != 1 || buf[0] != 'x')
		return fail("the two ends are not one pipe any more");
	return pass();
}
