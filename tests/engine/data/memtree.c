/* A tree of N processes (argv[1]): the root and N-1 children, each with 256 KiB of
 * private memory filled with its own pattern, then asleep. The root prints "ready" once
 * every child has filled its memory. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SIZE (256 << 10)

static void fill(unsigned char seed)
{
	unsigned char *p = mmap(NULL, SIZE, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	for (size_t i = 0; i < SIZE; i++)
		p[i] = (unsigned char)(seed * 31 + i * 7);
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 5;
	int ready[2];
	char byte;

	if (pipe(ready)) {
		perror("pipe");
		return 1;
	}
	for (int i = 1; i < n; i++) {
		pid_t pid = fork();

		if (pid < 0) {
			perror("fork");
			return 1;
		}
		if (pid == 0) {
			fill((unsigned char)i);
			if (write(ready[1], "x", 1) != 1)
				_exit(1);
			close(ready[0]);
			close(ready[1]);
			for (;;)
				pause();
		}
	}
	fill(0);
	for (int i = 1; i < n; i++)
		if (read(ready[0], &byte, 1) != 1)
			return 1;
	close(ready[0]);
	close(ready[1]);
	printf("ready\n");
	fflush(stdout);
	for (;;)
		pause();
}
