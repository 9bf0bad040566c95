/*
 * mem_protnone: a PROT_NONE region that holds data from before its mprotect. After restore
 * it is still PROT_NONE (maps "---p") and, made readable again, still holds the data.
 */
#include <string.h>
#include <sys/mman.h>

#include "zdtmtst.h"

#define SIZE (128UL << 10)
#define SEED 0x9090UL

int main(int argc, char **argv)
{
	struct vma_info vi;
	ssize_t off;
	char *map;

	test_init(argc, argv);

	map = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (map == MAP_FAILED) {
		pr_perror("mmap");
		return 1;
	}
	datafill(map, SIZE, SEED);
	if (mprotect(map, SIZE, PROT_NONE)) {
		pr_perror("mprotect");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (vma_find(map, &vi))
		return fail_perror("no VMA at %p", map);
	if (strcmp(vi.perms, "---p") || vi.start != (unsigned long)map ||
	    vi.end != (unsigned long)map + SIZE)
		return fail("VMA %lx-%lx %s, expected %p-%p ---p", vi.start, vi.end, vi.perms,
			    map, map + SIZE);
	if (mprotect(map, SIZE, PROT_READ))
		return fail_perror("mprotect(PROT_READ)");
	off = datacmp(map, SIZE, SEED);
	if (off >= 0)
		return fail("data differs at offset %zd", off);
	return pass();
}
