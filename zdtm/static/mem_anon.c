/*
 * mem_anon: private anonymous memory with data survives C/R byte for byte, and the
 * untouched part of the same mapping still reads zero.
 */
#include <string.h>

#include "zdtmtst.h"

#define AREA_SIZE (16UL << 20)
#define DATA_SIZE (12UL << 20) /* the last 4 MiB are never touched before C/R */
#define SEED 0xa11ceUL

int main(int argc, char **argv)
{
	unsigned char *area;
	ssize_t bad;

	test_init(argc, argv);

	area = test_map_anon(AREA_SIZE, false);
	if (!area)
		return 1;
	datafill(area, DATA_SIZE, SEED);

	test_daemon();
	test_waitsig();

	bad = datacmp(area, DATA_SIZE, SEED);
	if (bad >= 0)
		return fail("data differs at offset %#zx of %p: %#x", bad, area, area[bad]);
	for (unsigned long off = DATA_SIZE; off < AREA_SIZE; off++)
		if (area[off])
			return fail("untouched byte at offset %#lx is %#x, not 0", off, area[off]);
	return pass();
}
