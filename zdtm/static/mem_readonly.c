/*
 * mem_readonly: a read-only private anonymous mapping that holds data (written before the
 * mprotect). The engine must restore content it cannot write with process_vm_writev, and
 * the mapping must come back read-only.
 */
#include <sys/mman.h>
#include <unistd.h>

#include "zdtmtst.h"

#define SIZE (64UL << 10)
#define SEED 0x2eadUL

int main(int argc, char **argv)
{
	char *map;

	test_init(argc, argv);

	map = test_map_data(SIZE, SEED, PROT_READ);
	if (!map)
		return 1;

	test_daemon();
	test_waitsig();

	if (check_vma(map, SIZE, "r--p"))
		return 1;
	if (check_data(map, SIZE, SEED))
		return 1;
	return pass();
}
