/*
 * pidfd_outside: a pidfd of pid 1, the host's init in flavour h (in ns and uns pid 1 is the
 * tree's own init, and no process outside the tree is visible). Only the dumped tree is
 * restored, so the dump must refuse the pidfd (crfail), naming it, and leave the task
 * running: the pidfd still refers to pid 1.
 */
#include <sys/syscall.h>
#include <unistd.h>

#include "zdtmtst.h"

int main(int argc, char **argv)
{
	int fd;

	test_init(argc, argv);
	fd = syscall(SYS_pidfd_open, 1, 0);
	if (fd < 0) {
		pr_perror("pidfd_open(1)");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (syscall(SYS_pidfd_send_signal, fd, 0, NULL, 0))
		return fail_perror("the pidfd of pid 1 no longer works");
	return pass();
}
