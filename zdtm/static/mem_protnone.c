/*
 * mem_protnone: a PROT_NONE region that holds data from before its mprotect. After restore
 * it is still PROT_NONE (maps "---p") and, made readable again, still holds the data.
 */
#include <sys/mman.h>

#include "zdtmtst.h"

#define SIZE (128UL << 10)
#define SEED 0x9090UL

int main(int argc, char **argv)
{
	char *map;

	test_init(argc, argv);

	map = test_map_data(SIZE, SEED, PROT_NONE);
	if (!map)
		return 1;

	test_daemon();
	test_waitsig();

	if (check_vma(map, SIZE, "---p"))
		return 1;
	if (mprotect(map, SIZE, PROT_READ))
		return fail_perror("mprotect(PROT_READ)");
	if (check_data(map, SIZE, SEED))
		return 1;
	return pass();
}
