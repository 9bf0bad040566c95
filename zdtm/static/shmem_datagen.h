/*
 * shmem_datagen.h - the shared memory datagen test, with or without a second task.
 *
 * The parent fills 32 MiB of MAP_SHARED|MAP_ANONYMOUS memory with test data. With a child,
 * the child inherits it, rewrites one 4 MiB part, reads another, and touches nothing else:
 * most pages are then mapped in the parent's page tables only. Finally the parent drops its
 * page table entries of one 8 MiB part (MADV_DONTNEED): those pages live only in the shmem
 * object, mapped by no task, and must still be dumped. After restore each task checks the
 * CRC of the whole area; the child then writes a marker that the parent must see, so the
 * memory is still ONE object.
 */
#include <sys/mman.h>
#include <unistd.h>

#include "zdtmtst.h"

#define SHM_SIZE (32UL << 20)
#define CHILD_WRITE_OFF (4UL << 20)
#define CHILD_PART (4UL << 20)
#define UNMAPPED_OFF (16UL << 20)
#define UNMAPPED_LEN (8UL << 20)
#define MARKER_OFF (SHM_SIZE - 64)
#define MARKER 0x5a5a1e55c0ffee00ULL
#define SEED 0x5e3dUL

/* The child: rewrite and read its parts, report the CRC, verify after SIGTERM. */
static int shmem_child(int wfd, void *arg)
{
	volatile unsigned char sink = 0;
	unsigned char *area = arg;
	uint32_t crc;

	datafill(area + CHILD_WRITE_OFF, CHILD_PART, SEED + 1);
	for (size_t off = 0; off < CHILD_PART; off += 4096)
		sink ^= area[off];
	(void)sink;
	crc = crc32_update(0, area, SHM_SIZE);
	if (write(wfd, &crc, sizeof(crc)) != sizeof(crc)) {
		pr_perror("child: write crc");
		return 1;
	}
	close(wfd);

	test_waitsig();

	if (datachk(area, SHM_SIZE, &crc)) {
		test_msg("child: CRC of the shared area is %#x after restore", crc);
		return 1;
	}
	*(volatile uint64_t *)(area + MARKER_OFF) = MARKER;
	return 0;
}

/*
 * Fork the child and check that it sees the same area as the parent, whose CRC (with the
 * child's rewrite) lands in *crc: the child's pid, or -1 (a setup error).
 */
static pid_t start_child(unsigned char *area, uint32_t *crc)
{
	uint32_t child_crc;
	pid_t child;
	int rfd;

	child = test_fork_child(TEST_PIPE_FROM_CHILD, &rfd, shmem_child, area);
	if (child < 0)
		return -1;
	/* With a deadline: the child may die or hang in its setup. */
	if (test_read_timeout(rfd, &child_crc, sizeof(child_crc), 30000)) {
		pr_perror("no CRC from the child");
		test_kill_child(child);
		return -1;
	}
	close(rfd);
	*crc = crc32_update(0, area, SHM_SIZE);
	if (*crc != child_crc) {
		pr_err("parent sees CRC %#x, child %#x: the area is not shared", *crc, child_crc);
		test_kill_child(child);
		return -1;
	}
	return child;
}

static int shmem_test(int argc, char **argv, bool with_child)
{
	uint32_t crc = SEED, now;
	unsigned char *area;
	pid_t child = 0;

	test_init(argc, argv);

	area = test_map_anon(SHM_SIZE, true);
	if (!area)
		return 1;
	datagen(area, SHM_SIZE, &crc);
	if (with_child) {
		child = start_child(area, &crc);
		if (child < 0)
			return 1;
	}

	/* Shared memory keeps its data: only the page table entries go. */
	if (madvise(area + UNMAPPED_OFF, UNMAPPED_LEN, MADV_DONTNEED)) {
		pr_perror("madvise(MADV_DONTNEED)");
		if (child)
			test_kill_child(child);
		return 1;
	}

	test_daemon();
	test_waitsig();

	now = crc;
	if (datachk(area, SHM_SIZE, &now))
		fail("parent: CRC of the shared area is %#x, expected %#x", now, crc);
	if (!with_child)
		return pass();
	if (stop_child_verdict(child, 20000))
		return 1;
	if (*(volatile uint64_t *)(area + MARKER_OFF) != MARKER)
		return fail("the child's write is not visible in the parent: memory not shared");
	return pass();
}
