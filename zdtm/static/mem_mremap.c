/*
 * mem_mremap: an anonymous mapping with data moved by mremap(MREMAP_FIXED) to another
 * address and grown on the way. After restore the old range is still unmapped, the new
 * VMA has the moved data and the zero-filled growth.
 */
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
	char *old, *dst;

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
	if (check_vma(dst, new_len, "rw-p"))
		return 1;
	if (check_data(dst, old_len, SEED))
		return 1;
	for (size_t i = old_len; i < new_len; i++)
		if (dst[i])
			return fail("grown part is not zero at offset %zu", i);
	return pass();
}
