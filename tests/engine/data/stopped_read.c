/*
 * Target of tests/engine/test_restart_syscall.py: blocks in read() on a pipe of its own
 * (fd 3 the read end, fd 4 the write end). The test stops it there and fills the pipe while
 * it is stopped, so that the dump finds the read interrupted with its data queued. After
 * the restore and SIGCONT, the read must return exactly that data: the verdict ("PASS" or
 * "FAIL: why") is written to the file named by argv[1]; exit status 0 on PASS.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define WANT "0123456789abcdef"

int main(int argc, char **argv)
{
	char buf[sizeof(WANT)] = { 0 };
	ssize_t n;
	FILE *out;
	int p[2];

	if (argc != 2 || pipe(p) || p[0] != 3 || p[1] != 4)
		return 2;
	n = read(p[0], buf, sizeof(WANT) - 1);
	out = fopen(argv[1], "w");
	if (!out)
		return 2;
	if (n == (ssize_t)sizeof(WANT) - 1 && !memcmp(buf, WANT, sizeof(WANT) - 1))
		fprintf(out, "PASS\n");
	else
		fprintf(out, "FAIL: read %zd bytes '%s'\n", n, buf);
	return fclose(out) || n != (ssize_t)sizeof(WANT) - 1 || memcmp(buf, WANT, n) ? 1 : 0;
}
