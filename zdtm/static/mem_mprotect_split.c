/*
 * mem_mprotect_split: one anonymous mapping split by mprotect into three VMAs with
 * different protections (rw-, r--, ---). After restore the three VMAs have the same bounds
 * and protections, and all of them still hold their data.
 */
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "zdtmtst.h"

#define PART_PAGES 4
#define SEED 0x5b1fUL

static const struct {
	int prot;
	const char *perms;
} parts[3] = {
	{ PROT_READ | PROT_WRITE, "rw-p" },
	{ PROT_READ, "r--p" },
	{ PROT_NONE, "---p" },
};

int main(int argc, char **argv)
{
	size_t part = PART_PAGES * (size_t)sysconf(_SC_PAGESIZE);
	struct vma_info vi;
	ssize_t off;
	char *map;

	test_init(argc, argv);

	map = mmap(NULL, 3 * part, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (map == MAP_FAILED) {
		pr_perror("mmap");
		return 1;
	}
	datafill(map, 3 * part, SEED);
	for (int i = 1; i < 3; i++)
		if (mprotect(map + i * part, part, parts[i].prot)) {
			pr_perror("mprotect part %d", i);
			return 1;
		}

	test_daemon();
	test_waitsig();

	for (int i = 0; i < 3; i++) {
		char *p = map + i * part;

		if (vma_find(p, &vi))
			return fail_perror("no VMA at %p", p);
		if (vi.start != (unsigned long)p || vi.end != (unsigned long)p + part ||
		    strcmp(vi.perms, parts[i].perms))
			fail("part %d: VMA %lx-%lx %s, expected %p-%p %s", i, vi.start, vi.end,
			     vi.perms, p, p + part, parts[i].perms);
	}
	if (mprotect(map, 3 * part, PROT_READ))
		return fail_perror("mprotect(PROT_READ)");
	off = datacmp(map, 3 * part, SEED);
	if (off >= 0)
		return fail("data differs at offset %zd (part %zd)", off, off / (ssize_t)part);
	return pass();
}
