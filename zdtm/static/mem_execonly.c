/*
 * mem_execonly: an execute-only (PROT_EXEC) private mapping holding code written at run time.
 * After restore it is still "--xp", its code still runs, and the rest of its data is intact.
 */
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "zdtmtst.h"

#define SIZE (16UL << 10)
#define SEED 0xe8ecUL
#define MAGIC 0x2a5a17

/* x86-64: mov $MAGIC, %eax; ret */
static const unsigned char code[] = { 0xb8, MAGIC & 0xff, (MAGIC >> 8) & 0xff,
				      (MAGIC >> 16) & 0xff, 0x00, 0xc3 };

/* The mapping's expected content: the test data with the code at its start. */
static char expect[SIZE];

static ssize_t first_diff(const char *a, const char *b, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (a[i] != b[i])
			return (ssize_t)i;
	return -1;
}

int main(int argc, char **argv)
{
	int (*fn)(void);
	ssize_t off;
	char *map;
	int ret;

	test_init(argc, argv);

	map = test_map_anon(SIZE, false);
	if (!map)
		return 1;
	datafill(expect, SIZE, SEED);
	memcpy(expect, code, sizeof(code));
	memcpy(map, expect, SIZE);
	if (mprotect(map, SIZE, PROT_EXEC)) {
		pr_perror("mprotect(PROT_EXEC)");
		return 1;
	}
	fn = (int (*)(void))map;
	ret = fn();
	if (ret != MAGIC) {
		pr_err("generated code returned %#x before C/R", ret);
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (check_vma(map, SIZE, "--xp"))
		return 1;
	ret = fn();
	if (ret != MAGIC)
		return fail("generated code returned %#x, not %#x", ret, MAGIC);
	if (mprotect(map, SIZE, PROT_READ))
		return fail_perror("mprotect(PROT_READ)");
	off = first_diff(map, expect, SIZE);
	if (off >= 0)
		return fail("data differs at offset %zd", off);
	return pass();
}
