/*
 * membarrier: the process registers for the private expedited membarrier commands (plain,
 * sync_core, rseq). After restore each expedited command still succeeds: it fails with
 * EPERM for an mm that did not register.
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

static long membarrier(int cmd)
{
	return syscall(SYS_membarrier, cmd, 0, 0);
}

int main(int argc, char **argv)
{
	long supported;

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

	test_daemon();
	test_waitsig();

	for (unsigned int i = 0; i < NR_KINDS; i++)
		if (membarrier(kinds[i].cmd))
			return fail_perror("membarrier %s after restore", kinds[i].name);
	return pass();
}
