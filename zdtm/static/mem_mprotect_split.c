/*
 * mem_mprotect_split: one anonymous mapping split by mprotect into three VMAs with
 * different protections (rw-, r--, ---). After restore each part has its own protection
 * throughout, and all of them still hold their data.
 */
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
	ssize_t off;
	char *map;

	test_init(argc, argv);

	map = test_map_data(3 * part, SEED, PROT_READ | PROT_WRITE);
	if (!map)
		return 1;
	for (int i = 1; i < 3; i++)
		if (mprotect(map + i * part, part, parts[i].prot)) {
			pr_perror("mprotect part %d", i);
			return 1;
		}

	test_daemon();
	test_waitsig();

	/* A part with other permissions is reported, and the next one checked. */
	for (int i = 0; i < 3; i++)
		if (check_vma(map + i * part, part, parts[i].perms) < 0)
			return 1;
	if (mprotect(map, 3 * part, PROT_READ))
		return fail_perror("mprotect(PROT_READ)");
	off = datacmp(map, 3 * part, SEED);
	if (off >= 0)
		return fail("data differs at offset %zd (part %zd)", off, off / (ssize_t)part);
	return pass();
}
