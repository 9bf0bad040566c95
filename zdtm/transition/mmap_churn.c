/*
 * mmap_churn (transition): the memory map changes without pause while being dumped.
 *
 * A table of slots describes what each mapping should be (address, length, how many bytes
 * hold data from which seed, private or shared). Each step picks a slot and maps it,
 * unmaps it, moves and resizes it with mremap, or rewrites it. After SIGTERM every live
 * slot must be mapped over its whole length with its data and zeros after it.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "zdtmtst.h"

#define NR_SLOTS 64
#define MAX_PAGES 16

struct slot {
	char *addr;	/* NULL: not mapped */
	size_t len;
	size_t data_len; /* bytes [0, data_len) hold datafill(seed), the rest is zero */
	uint64_t seed;
	size_t obj_len;	/* MAP_SHARED: size of its shmem object (0: private) */
};

static struct slot slots[NR_SLOTS];
static long page;
static uint64_t rng = 88172645463325252ULL;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* One change of slot s at step n; -1 (with errno) on a failed syscall. */
static int churn(struct slot *s, uint64_t n)
{
	size_t len = (size_t)(1 + rnd() % MAX_PAGES) * (size_t)page;
	char *p;

	if (!s->addr) {
		int shared = rnd() & 1 ? MAP_SHARED : MAP_PRIVATE;

		p = mmap(NULL, len, PROT_READ | PROT_WRITE, shared | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return -1;
		datafill(p, len / 2, n);
		*s = (struct slot){ p, len, len / 2, n, shared == MAP_SHARED ? len : 0 };
		return 0;
	}
	switch (rnd() % 3) {
	case 0:
		if (munmap(s->addr, s->len))
			return -1;
		s->addr = NULL;
		return 0;
	case 1:
		/*
		 * Move (and resize) it to a fresh place. Shared memory keeps its size: its
		 * object outlives a shrink, and past the object's end it would SIGBUS.
		 */
		if (s->obj_len)
			len = s->len;
		p = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return -1;
		if (mremap(s->addr, s->len, len, MREMAP_MAYMOVE | MREMAP_FIXED, p) != p)
			return -1;
		s->addr = p;
		s->len = len;
		if (s->data_len > len)
			s->data_len = len;
		return 0;
	default:
		/* Rewrite: new data over a new prefix, zeros (as before) after it. */
		memset(s->addr, 0, s->data_len);
		s->data_len = s->len - (size_t)page;
		s->seed = n;
		datafill(s->addr, s->data_len, n);
		return 0;
	}
}

static int check_slot(int i, const struct slot *s)
{
	unsigned char *vec = malloc(MAX_PAGES);
	ssize_t off;
	int ret = 0;

	if (!vec || mincore(s->addr, s->len, vec)) {
		free(vec);
		return fail_perror("slot %d: %p+%zu is not mapped", i, s->addr, s->len);
	}
	free(vec);
	off = datacmp(s->addr, s->data_len, s->seed);
	if (off >= 0)
		return fail("slot %d: data differs at offset %zd", i, off);
	for (size_t j = s->data_len; j < s->len && !ret; j++)
		if (s->addr[j])
			ret = fail("slot %d: byte %zu is not zero", i, j);
	return ret;
}

int main(int argc, char **argv)
{
	struct timespec nap = { 0, 200 * 1000 };
	uint64_t n = 0;

	test_init(argc, argv);
	page = sysconf(_SC_PAGESIZE);

	test_daemon();

	while (test_go()) {
		struct slot *s = &slots[rnd() % NR_SLOTS];

		if (churn(s, ++n))
			return fail_perror("step %llu", (unsigned long long)n);
		nanosleep(&nap, NULL);
	}

	test_msg("%llu steps", (unsigned long long)n);
	for (int i = 0; i < NR_SLOTS; i++)
		if (slots[i].addr && check_slot(i, &slots[i]))
			return 1;
	return pass();
}
