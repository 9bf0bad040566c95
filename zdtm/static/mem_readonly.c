/*
 * mem_readonly: a read-only private anonymous mapping that holds data (written before the
 * mprotect). The engine must restore content it cannot write with process_vm_writev, and
 * the mapping must come back read-only.
 */
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "zdtmtst.h"

#define SIZE (64UL << 10)
#define SEED 0x2eadUL

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
	if (mprotect(map, SIZE, PROT_READ)) {
		pr_perror("mprotect");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (vma_find(map, &vi))
		return fail_perror("no VMA at %p", map);
	if (strcmp(vi.perms, "r--p") || vi.start != (unsigned long)map ||
	    vi.end != (unsigned long)map + SIZE)
		return fail("VMA %lx-%lx %s, expected %p-%p r--p", vi.start, vi.end, vi.perms,
			    map, map + SIZE);
	off = datacmp(map, SIZE, SEED);
	if (off >= 0)
		return fail("data differs at offset %zd", off);
	return pass();
}
