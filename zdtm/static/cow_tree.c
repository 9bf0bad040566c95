/*
 * cow_tree: a parent, its child and a grandchild still share a large private region
 * copy-on-write since their forks, each having rewritten a part of it after its fork.
 * The harness's sharing check compares which pages each pair shares before and after
 * restore (a restore that gives each process its own copy doubles the memory: same bytes,
 * not the same pages); each process checks its own bytes here.
 *
 * The region is PARTS parts; the parent fills all of them and keeps part RO read-only.
 *   child:      rewrites part 1, then forks the grandchild
 *   grandchild: rewrites part 2
 *   parent:     rewrites part 3 once both are set up (after its fork)
 * So parent/child share parts 0, 2 and RO, child/grandchild parts 0, 1, 3 and RO, parent/
 * grandchild parts 0 and RO. The region's address is logged ("region 0x...").
 */
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include "zdtmtst.h"

#define PART (4UL << 20)
#define PARTS 5
#define RO 4 /* the read-only part: a VMA of its own */
#define SEED(who, part) (0xc0f0000UL + (who) * 16 + (part))
#define ORIG 0
#define CHILD 1
#define GRANDCHILD 2
#define PARENT 3

static unsigned char *region;

/* The writer of each part as seen by `who`: its own rewrite, else its ancestors'. */
static int check_parts(int who)
{
	static const int writer[4][PARTS] = {
		[PARENT] = { ORIG, ORIG, ORIG, PARENT, ORIG },
		[CHILD] = { ORIG, CHILD, ORIG, ORIG, ORIG },
		[GRANDCHILD] = { ORIG, CHILD, GRANDCHILD, ORIG, ORIG },
	};
	for (int part = 0; part < PARTS; part++) {
		ssize_t bad = datacmp(region + part * PART, PART, SEED(writer[who][part], part));
		if (bad >= 0) {
			test_msg("process %d: part %d differs at offset %#zx", who, part, bad);
			return 1;
		}
	}
	return check_vma(region + RO * PART, PART, "r--p") ? 1 : 0;
}

static int grandchild_main(int wfd, void *arg)
{
	(void)arg;
	datafill(region + 2 * PART, PART, SEED(GRANDCHILD, 2));
	if (write(wfd, "g", 1) != 1)
		return 2;
	test_waitsig();
	return check_parts(GRANDCHILD);
}

static int child_main(int wfd, void *arg)
{
	pid_t grandchild;
	int rfd;
	char c;

	(void)arg;
	datafill(region + 1 * PART, PART, SEED(CHILD, 1));
	grandchild = test_fork_child(TEST_PIPE_FROM_CHILD, &rfd, grandchild_main, NULL);
	if (grandchild < 0)
		return 2;
	if (test_read_timeout(rfd, &c, 1, 10000) || write(wfd, "c", 1) != 1) {
		test_kill_child(grandchild);
		return 2;
	}
	test_waitsig();
	if (stop_child_verdict(grandchild, 10000))
		return 1;
	return check_parts(CHILD);
}

int main(int argc, char **argv)
{
	pid_t child;
	int rfd;
	char c;

	test_init(argc, argv);
	signal(SIGPIPE, SIG_IGN);

	region = test_map_anon(PARTS * PART, false);
	if (!region)
		return 1;
	/*
	 * No transparent huge pages: where THP is "always" (Debian's 6.1), khugepaged copies
	 * 2 MiB ranges with a few shared pages into a huge page of its own and so ends the
	 * sharing this test builds, whenever it comes by.
	 */
	if (madvise(region, PARTS * PART, MADV_NOHUGEPAGE))
		return fail_perror("madvise(MADV_NOHUGEPAGE)");
	for (int part = 0; part < PARTS; part++)
		datafill(region + part * PART, PART, SEED(ORIG, part));
	if (mprotect(region + RO * PART, PART, PROT_READ))
		return fail_perror("mprotect");
	test_msg("region %p", region);

	child = test_fork_child(TEST_PIPE_FROM_CHILD, &rfd, child_main, NULL);
	if (child < 0)
		return 1;
	if (test_read_timeout(rfd, &c, 1, 10000)) {
		test_kill_child(child);
		return fail_perror("the child did not get ready");
	}
	datafill(region + 3 * PART, PART, SEED(PARENT, 3));

	test_daemon();
	test_waitsig();

	if (stop_child_verdict(child, 20000))
		return 1;
	if (check_parts(PARENT))
		return fail("the parent's region is not as it wrote it");
	return pass();
}
