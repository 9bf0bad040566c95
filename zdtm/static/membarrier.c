/*
 * membarrier: the process registers for the private expedited membarrier commands (plain,
 * sync_core, rseq), and for global expedited barriers where the kernel can tell
 * (MEMBARRIER_CMD_GET_REGISTRATIONS, 6.6+). After restore each private expedited command
 * still succeeds (it fails with EPERM for an mm that did not register) and the kernel
 * reports the same registrations.
 */
#include <errno.h>
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "zdtmtst.h"

static const struct {
	int reg, cmd;
	const char *name;
} kinds[] = {
	{ MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, MEMBARRIER_CMD_PRIVATE_EXPEDITED,
	  "private expedited" },
	{ MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE,
	  MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE, "private expedited sync_core" },
	{ MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
	  "private expedited rseq" },
};

#define NR_KINDS (sizeof(kinds) / sizeof(kinds[0]))

/* not in every libc's headers yet */
#define CMD_GET_REGISTRATIONS (1 << 9)

static long membarrier(int cmd)
{
	return syscall(SYS_membarrier, cmd, 0, 0);
}

int main(int argc, char **argv)
{
	long supported, regs = -1, after;

	test_init(argc, argv);

	supported = membarrier(MEMBARRIER_CMD_QUERY);
	if (supported < 0)
		return skip("membarrier: %m");
	for (unsigned int i = 0; i < NR_KINDS; i++) {
		if (!(supported & kinds[i].reg))
			return skip("membarrier %s is not supported", kinds[i].name);
		if (membarrier(kinds[i].reg))
			return fail_perror("register membarrier %s", kinds[i].name);
	}
	if (supported & CMD_GET_REGISTRATIONS) {
		if (membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED))
			return fail_perror("register membarrier global expedited");
		regs = membarrier(CMD_GET_REGISTRATIONS);
		if (regs < 0)
			return fail_perror("membarrier get registrations");
	}

	test_daemon();
	test_waitsig();

	for (unsigned int i = 0; i < NR_KINDS; i++)
		if (membarrier(kinds[i].cmd))
			return fail_perror("membarrier %s after restore", kinds[i].name);
	if (regs >= 0) {
		after = membarrier(CMD_GET_REGISTRATIONS);
		if (after != regs)
			return fail("membarrier registrations %#lx, before %#lx", after, regs);
	}
	return pass();
}
