/*
 * vdso_moved: the vdso/vvar block moved elsewhere (mremap) in the test process, and
 * unmapped altogether in its child. Neither calls into the vdso afterwards (glibc's
 * pointers into it are stale): no clock_gettime, no test_msg time stamps, plain waitpid.
 * After restore the parent's vdso is still at its new place and the child has none.
 */
#include <signal.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtmtst.h"

#define NEW_PLACE 0x7e0000000000UL

/* The vvar/vdso block around the vdso: its start and end, 0 on success. */
static int vdso_block(unsigned long *start, unsigned long *end)
{
	unsigned long vdso = getauxval(AT_SYSINFO_EHDR);
	struct vma_info vi;

	if (!vdso || vma_find((void *)vdso, &vi))
		return -1;
	*start = vi.start;
	*end = vi.end;
	/* [vvar] (and [vvar_vclock] on newer kernels) sit right below the vdso. */
	while (!vma_find((void *)(*start - 1), &vi) && !strncmp(vi.path, "[vvar", 5))
		*start = vi.start;
	return 0;
}

/*
 * One VMA at a time (mremap moves more than one only from 6.17 on), keeping the block's
 * layout; nothing may call into the vdso until its [vvar] is next to it again.
 */
static int move_block(unsigned long start, unsigned long end, unsigned long to)
{
	struct vma_info vi;
	unsigned long at = start;

	while (at < end) {
		if (vma_find((void *)at, &vi))
			return -1;
		if (mremap((void *)vi.start, vi.end - vi.start, vi.end - vi.start,
			   MREMAP_MAYMOVE | MREMAP_FIXED, (void *)(to + vi.start - start)) == MAP_FAILED)
			return -1;
		at = vi.end;
	}
	return 0;
}

static int child_main(int fd, void *arg)
{
	unsigned long start, end;
	struct vma_info vi;

	(void)arg;
	if (vdso_block(&start, &end) || munmap((void *)start, end - start))
		return 1;
	/* Ready only now: vma_find() keeps /proc/self/smaps open while it reads. */
	if (write(fd, "r", 1) != 1)
		return 1;
	close(fd);
	test_waitsig();
	return vma_find((void *)(end - 1), &vi) ? 0 : 2;
}

int main(int argc, char **argv)
{
	unsigned long start, end;
	struct vma_info vi;
	int status, rfd;
	pid_t child;
	char c;

	test_init(argc, argv);
	child = test_fork_child(TEST_PIPE_FROM_CHILD, &rfd, child_main, NULL);
	if (child < 0)
		return 1;
	if (test_read_timeout(rfd, &c, 1, 10000)) {
		pr_perror("child %d did not unmap its vdso", child);
		test_kill_child(child);
		return 1;
	}
	close(rfd);
	if (vdso_block(&start, &end) || move_block(start, end, NEW_PLACE)) {
		pr_perror("move the vdso");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (vma_find((void *)(NEW_PLACE + (end - start) - 1), &vi) || strcmp(vi.path, "[vdso]"))
		fail("the vdso is no longer at %#lx", NEW_PLACE);
	if (!range_unmapped((void *)start, end - start))
		fail("something is mapped at the vdso's old place");
	if (kill(child, SIGTERM) || waitpid(child, &status, 0) != child)
		return fail_perror("child %d", child);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		fail("child: status %#x (2: a vdso came back)", status);
	return pass();
}
