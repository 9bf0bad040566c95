/*
 * madv_flags: madvise() flags kept in the VMA: MADV_DONTFORK (VmFlags "dc"),
 * MADV_WIPEONFORK ("wf") and MADV_DONTDUMP ("dd"), each on its own region with data.
 * After restore each region has its flag and its data, and the flags still work: a forked
 * child has no DONTFORK region and reads zeros in the WIPEONFORK one.
 */
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtmtst.h"

#define REGION (64UL << 10)
#define SEED 0x3ad7UL

static const struct {
	int advice;
	const char *flag;
} regions[3] = {
	{ MADV_DONTFORK, "dc" },
	{ MADV_WIPEONFORK, "wf" },
	{ MADV_DONTDUMP, "dd" },
};

/* In a forked child: 0 when DONTFORK is gone and WIPEONFORK reads zero. */
static int child_view(char *map[3])
{
	if (!range_unmapped(map[0], REGION))
		return 1;
	for (size_t i = 0; i < REGION; i++)
		if (map[1][i])
			return 2;
	return datacmp(map[2], REGION, SEED + 2) >= 0 ? 3 : 0;
}

int main(int argc, char **argv)
{
	struct vma_info vi;
	char *map[3];
	int status;
	pid_t pid;

	test_init(argc, argv);

	for (int i = 0; i < 3; i++) {
		map[i] = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			      -1, 0);
		if (map[i] == MAP_FAILED || madvise(map[i], REGION, regions[i].advice)) {
			pr_perror("mmap/madvise %s", regions[i].flag);
			return 1;
		}
		datafill(map[i], REGION, SEED + (uint64_t)i);
	}

	test_daemon();
	test_waitsig();

	for (int i = 0; i < 3; i++) {
		if (vma_find(map[i], &vi))
			return fail_perror("no VMA at %p", map[i]);
		if (!vma_has_flag(&vi, regions[i].flag))
			fail("region %p lost VmFlags '%s': '%s'", map[i], regions[i].flag,
			     vi.vmflags);
		if (datacmp(map[i], REGION, SEED + (uint64_t)i) >= 0)
			fail("region %p ('%s') lost its data", map[i], regions[i].flag);
	}
	pid = fork();
	if (pid < 0)
		return fail_perror("fork");
	if (!pid)
		_exit(child_view(map));
	if (test_wait_child(pid, &status, 10000))
		return fail_perror("child %d", pid);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		return fail("in a forked child: %s", !WIFEXITED(status) ? "crashed" :
			    WEXITSTATUS(status) == 1 ? "the DONTFORK region is mapped" :
			    WEXITSTATUS(status) == 2 ? "the WIPEONFORK region is not zero" :
			    "the plain region lost its data");
	return pass();
}
