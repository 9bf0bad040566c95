/*
 * grow_stack: a MAP_GROWSDOWN region with data in its lowest page and an accessible
 * neighbour mapped below it, beyond the kernel's stack guard gap (256 pages). After
 * restore the data is intact, the VMA still has VmFlags "gd", and touching below its start
 * grows it downwards. An engine that reads below vm_start (or drops MAP_GROWSDOWN) fails.
 */
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "zdtmtst.h"

#define NEIGHBOUR_PAGES 16
#define GAP_PAGES 512	   /* twice stack_guard_gap: growth by GROW_PAGES stays allowed */
#define STACK_PAGES 4
#define GROW_PAGES 8
#define SEED 0x57acUL

int main(int argc, char **argv)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t total = (NEIGHBOUR_PAGES + GAP_PAGES + STACK_PAGES) * (size_t)page;
	char *base, *neighbour, *stack, *below;
	struct vma_info vi;

	test_init(argc, argv);

	/* Find room for the whole layout, then place both mappings inside it. */
	base = mmap(NULL, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED || munmap(base, total)) {
		pr_perror("reserve");
		return 1;
	}
	neighbour = mmap(base, NEIGHBOUR_PAGES * (size_t)page, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	stack = mmap(base + (NEIGHBOUR_PAGES + GAP_PAGES) * (size_t)page,
		     STACK_PAGES * (size_t)page, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN | MAP_FIXED_NOREPLACE, -1, 0);
	if (neighbour == MAP_FAILED || stack == MAP_FAILED) {
		pr_perror("mmap");
		return 1;
	}
	datafill(neighbour, NEIGHBOUR_PAGES * (size_t)page, SEED + 1);
	datafill(stack, STACK_PAGES * (size_t)page, SEED);
	if (vma_find(stack, &vi) || !vma_has_flag(&vi, "gd") || vi.start != (unsigned long)stack) {
		pr_err("no growsdown VMA at %p (VmFlags: %s)", stack, vi.vmflags);
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (vma_find(stack, &vi))
		return fail_perror("no VMA at %p", stack);
	if (vi.start != (unsigned long)stack || !vma_has_flag(&vi, "gd"))
		return fail("VMA %lx-%lx VmFlags '%s': expected start %p and 'gd'", vi.start,
			    vi.end, vi.vmflags, stack);
	if (check_data(stack, STACK_PAGES * (size_t)page, SEED) ||
	    check_data(neighbour, NEIGHBOUR_PAGES * (size_t)page, SEED + 1))
		return 1;

	/* Touch below the start: the kernel must grow the VMA down to cover it. */
	below = stack - GROW_PAGES * (size_t)page;
	*(volatile char *)below = 1;
	if (vma_find(below, &vi))
		return fail_perror("no VMA at %p after touching it", below);
	if (vi.start > (unsigned long)below || vi.end != (unsigned long)stack + STACK_PAGES * page
	    || !vma_has_flag(&vi, "gd"))
		return fail("after growth: VMA %lx-%lx '%s', expected it to cover %p-%p", vi.start,
			    vi.end, vi.vmflags, below, stack + STACK_PAGES * page);
	return pass();
}
