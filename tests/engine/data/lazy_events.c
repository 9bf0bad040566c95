/*
 * Target of tests/engine/test_lazy_restore.py: memory whose pages a lazy restore leaves
 * to the lazy-pages daemon, then (on SIGUSR1, after the restore) a fork, an mremap, an
 * madvise(MADV_DONTNEED) and a munmap of such memory, each checked: the daemon must
 * follow the userfaultfd events (FORK, REMAP, REMOVE, UNMAP). The verdict ("PASS" or
 * "FAIL: why") is the last line of the file named by argv[1]; exit status 0 on PASS.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096UL
#define NP 64UL

static volatile sig_atomic_t go;
static FILE *out;

static void on_usr1(int sig) { (void)sig; go = 1; }

static void fill(unsigned char *p, unsigned long pages, unsigned seed)
{
	for (unsigned long i = 0; i < pages * PG; i++)
		p[i] = (unsigned char)(seed + i / PG * 7 + i % 251);
}

/* pages [from, to) of an area filled with fill(base, ..., seed) still hold that data */
static int same_range(const unsigned char *base, unsigned long from, unsigned long to,
		      unsigned seed)
{
	for (unsigned long i = from * PG; i < to * PG; i++)
		if (base[i] != (unsigned char)(seed + i / PG * 7 + i % 251))
			return 0;
	return 1;
}

static int same(const unsigned char *p, unsigned long pages, unsigned seed)
{
	return same_range(p, 0, pages, seed);
}

static int zero(const unsigned char *p, unsigned long len)
{
	for (unsigned long i = 0; i < len; i++)
		if (p[i])
			return 0;
	return 1;
}

static int verdict(const char *why)
{
	fprintf(out, "%s%s\n", why ? "FAIL: " : "PASS", why ? why : "");
	fclose(out);
	return why ? 1 : 0;
}

static void *anon(unsigned long len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	return p;
}

int main(int argc, char **argv)
{
	unsigned char *a, *b, *c, *d;
	int status;
	pid_t child;

	if (argc != 2)
		return 2;
	out = fopen(argv[1], "a");
	if (!out)
		return 2;
	setvbuf(out, NULL, _IOLBF, 0);
	signal(SIGUSR1, on_usr1);
	a = anon(NP * PG);
	b = anon(NP * PG);
	c = anon(NP * PG);
	d = anon(NP * PG);
	fill(a, NP, 1);
	fill(b, NP, 2);
	fill(c, NP, 3);
	fill(d, NP, 4);
	fprintf(out, "ready\n");
	while (!go)
		pause();

	/* FORK: the child's copy of pages not yet delivered must come from the daemon */
	child = fork();
	if (child == 0)
		_exit(same(a, NP, 1) && same(c, NP, 3) ? 0 : 1);
	if (child < 0 || waitpid(child, &status, 0) != child)
		return verdict("fork/wait failed");
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return verdict("the forked child saw wrong memory");
	/* REMAP: grown and moved; the old contents follow, the new tail is zeros */
	b = mremap(b, NP * PG, 4 * NP * PG, MREMAP_MAYMOVE);
	if (b == MAP_FAILED)
		return verdict("mremap failed");
	if (!same(b, NP, 2) || !zero(b + NP * PG, 3 * NP * PG))
		return verdict("memory moved by mremap is wrong");
	/* REMOVE: discarded pages read as zeros, the others keep their data */
	if (madvise(c, NP / 2 * PG, MADV_DONTNEED))
		return verdict("madvise failed");
	if (!zero(c, NP / 2 * PG))
		return verdict("MADV_DONTNEED pages are not zero");
	if (!same(a, NP, 1))
		return verdict("memory of the parent is wrong");
	/* UNMAP: the daemon must stop delivering there */
	if (munmap(d, NP * PG))
		return verdict("munmap failed");
	/* the tail of c is checked last, when the daemon may be copying in the background */
	if (!same_range(c, NP / 2, NP, 3))
		return verdict("the rest of the madvised area is wrong");
	return verdict(NULL);
}
