/*
 * madv_hints: VMA hints set by madvise() and mlock(), each on its own region with data:
 * MADV_SEQUENTIAL ("sr"), MADV_RANDOM ("rr"), mlock ("lo"), MADV_HUGEPAGE ("hg"),
 * MADV_NOHUGEPAGE ("nh"), MADV_MERGEABLE ("mg"); and PR_SET_THP_DISABLE for the whole
 * process. After restore each region has its flag and its data, and THP is still disabled.
 * A hint the kernel refuses here (no THP, no KSM) is left out, with a message saying so.
 */
#include <errno.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "zdtmtst.h"

#define REGION (64UL << 10)
#define SEED 0x5e91UL
#define NR 6

static const struct {
	int advice; /* -1: mlock() */
	const char *flag;
} regions[NR] = {
	{ MADV_SEQUENTIAL, "sr" },
	{ MADV_RANDOM, "rr" },
	{ -1, "lo" },
	{ MADV_HUGEPAGE, "hg" },
	{ MADV_NOHUGEPAGE, "nh" },
	{ MADV_MERGEABLE, "mg" },
};

/* Apply region i's hint: 0, 1 when this kernel does not have it, -1 on error. */
static int advise(char *map, int i)
{
	int ret = regions[i].advice < 0 ? mlock(map, REGION) :
		  madvise(map, REGION, regions[i].advice);

	if (!ret)
		return 0;
	if (errno == EINVAL) {
		test_msg("kernel refuses '%s' here: not tested", regions[i].flag);
		return 1;
	}
	pr_perror("madvise/mlock '%s'", regions[i].flag);
	return -1;
}

int main(int argc, char **argv)
{
	bool used[NR];
	struct vma_info vi;
	char *map[NR];

	test_init(argc, argv);

	if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)) {
		pr_perror("PR_SET_THP_DISABLE");
		return 1;
	}
	for (int i = 0; i < NR; i++) {
		int r;

		/* A guard page between regions keeps equal neighbours from merging. */
		map[i] = mmap(NULL, REGION + 4096, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (map[i] == MAP_FAILED || munmap(map[i] + REGION, 4096)) {
			pr_perror("mmap");
			return 1;
		}
		datafill(map[i], REGION, SEED + (uint64_t)i);
		r = advise(map[i], i);
		if (r < 0)
			return 1;
		used[i] = r == 0;
	}

	test_daemon();
	test_waitsig();

	if (prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) != 1)
		fail("PR_GET_THP_DISABLE is no longer 1");
	for (int i = 0; i < NR; i++) {
		if (vma_find(map[i], &vi))
			return fail_perror("no VMA at %p", map[i]);
		if (used[i] && !vma_has_flag(&vi, regions[i].flag))
			fail("region %p lost VmFlags '%s': '%s'", map[i], regions[i].flag,
			     vi.vmflags);
		if (vi.start != (unsigned long)map[i] || vi.end != (unsigned long)map[i] + REGION)
			fail("region %p ('%s') is now %lx-%lx", map[i], regions[i].flag,
			     vi.start, vi.end);
		if (datacmp(map[i], REGION, SEED + (uint64_t)i) >= 0)
			fail("region %p ('%s') lost its data", map[i], regions[i].flag);
	}
	return pass();
}
