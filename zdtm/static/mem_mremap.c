/*
 * mem_mremap: an anonymous mapping with data moved by mremap(MREMAP_FIXED) to another
 * address and grown on the way. After restore the old range is still unmapped, the new
 * VMA has the moved data and the zero-filled growth.
 */
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "zdtmtst.h"

#define OLD_PAGES 8
#define NEW_PAGES 12
#define SEED 0x3e3aUL

int main(int argc, char **argv)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t old_len = OLD_PAGES * (size_t)page, new_len = NEW_PAGES * (size_t)page;
	struct vma_info vi;
	char *old, *dst;
	ssize_t off;

	test_init(argc, argv);

	/* A destination far from the source: reserve both, free the destination again. */
	old = mmap(NULL, old_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	dst = mmap(NULL, new_len + (64UL << 20), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (old == MAP_FAILED || dst == MAP_FAILED) {
		pr_perror("mmap");
		return 1;
	}
	munmap(dst, new_len + (64UL << 20));
	dst += 32UL << 20;
	datafill(old, old_len, SEED);
	if (mremap(old, old_len, new_len, MREMAP_MAYMOVE | MREMAP_FIXED, dst) != dst) {
		pr_perror("mremap");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (!range_unmapped(old, old_len))
		fail("the old range %p-%p is mapped again", old, old + old_len);
	if (vma_find(dst, &vi))
		return fail_perror("no VMA at %p", dst);
	if (vi.start != (unsigned long)dst || vi.end != (unsigned long)dst + new_len ||
	    strcmp(vi.perms, "rw-p"))
		return fail("VMA %lx-%lx %s, expected %p-%p rw-p", vi.start, vi.end, vi.perms, dst,
			    dst + new_len);
	off = datacmp(dst, old_len, SEED);
	if (off >= 0)
		return fail("moved data differs at offset %zd", off);
	for (size_t i = old_len; i < new_len; i++)
		if (dst[i])
			return fail("grown part is not zero at offset %zu", i);
	return pass();
}
