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
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/wait.h>
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
static int shmem_child(unsigned char *area, int wfd)
{
	volatile unsigned char sink = 0;
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

/* Read the child's CRC with a deadline: -1 when the child died or hung in its setup. */
static int read_child_crc(int rfd, uint32_t *crc)
{
	struct pollfd pfd = { .fd = rfd, .events = POLLIN };

	if (poll(&pfd, 1, 30000) != 1 || read(rfd, crc, sizeof(*crc)) != sizeof(*crc))
		return -1;
	return 0;
}

static int shmem_test(int argc, char **argv, bool with_child)
{
	uint32_t crc = SEED, child_crc;
	unsigned char *area;
	pid_t child = 0;
	int pfd[2], status;

	test_init(argc, argv);

	area = mmap(NULL, SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED) {
		pr_perror("mmap");
		return 1;
	}
	datagen(area, SHM_SIZE, &crc);
	if (with_child) {
		if (pipe2(pfd, O_CLOEXEC)) {
			pr_perror("pipe");
			return 1;
		}
		child = fork();
		if (child < 0) {
			pr_perror("fork");
			return 1;
		}
		if (!child) {
			close(pfd[0]);
			_exit(shmem_child(area, pfd[1]));
		}
		close(pfd[1]);
		if (read_child_crc(pfd[0], &child_crc)) {
			pr_perror("no CRC from the child");
			kill(child, SIGKILL);
			test_waitpid(child, NULL, 5000);
			return 1;
		}
		close(pfd[0]);
		crc = crc32_update(0, area, SHM_SIZE);
		if (crc != child_crc) {
			pr_err("parent sees CRC %#x, child %#x: the area is not shared", crc,
			       child_crc);
			kill(child, SIGKILL);
			test_waitpid(child, NULL, 5000);
			return 1;
		}
	}

	/* Shared memory keeps its data: only the page table entries go. */
	if (madvise(area + UNMAPPED_OFF, UNMAPPED_LEN, MADV_DONTNEED)) {
		pr_perror("madvise(MADV_DONTNEED)");
		if (child) {
			kill(child, SIGKILL);
			test_waitpid(child, NULL, 5000);
		}
		return 1;
	}

	test_daemon();
	test_waitsig();

	child_crc = crc;
	if (datachk(area, SHM_SIZE, &child_crc))
		fail("parent: CRC of the shared area is %#x, expected %#x", child_crc, crc);
	if (!with_child)
		return pass();
	kill(child, SIGTERM);
	if (test_waitpid(child, &status, 20000)) {
		kill(child, SIGKILL);
		test_waitpid(child, NULL, 5000);
		return fail_perror("child %d did not exit", child);
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		return fail("child failed (status %#x), see its message above", status);
	if (*(volatile uint64_t *)(area + MARKER_OFF) != MARKER)
		return fail("the child's write is not visible in the parent: memory not shared");
	return pass();
}
