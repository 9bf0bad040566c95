/*
 * shared_tables: two children made with clone() sharing kernel tables with the parent:
 * one shares the fd table and the fs info (CLONE_FILES | CLONE_FS), the other the address
 * space and the signal handlers (CLONE_VM | CLONE_SIGHAND), without being threads.
 * After restore the same tables are still shared (kcmp), and a change through one task is
 * seen by the other: an fd opened by the parent is open in the first child, and a handler
 * installed by the parent is the second child's too.
 */
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "zdtmtst.h"

#define STACK_SIZE (256 * 1024)
#define KCMP_VM 1
#define KCMP_FILES 2
#define KCMP_FS 3
#define KCMP_SIGHAND 4

static char stack_files[STACK_SIZE] __attribute__((aligned(16)));
static char stack_vm[STACK_SIZE] __attribute__((aligned(16)));

static int idle(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return 0;
}

static int shares(pid_t child, int type, const char *what)
{
	long res = syscall(SYS_kcmp, getpid(), child, type, 0, 0);

	if (res != 0) {
		fail("%s no longer shared with child %d (kcmp %ld)", what, child, res);
		return 0;
	}
	return 1;
}

static void on_usr1(int sig)
{
	(void)sig;
}

int main(int argc, char **argv)
{
	pid_t files, vm;
	struct sigaction sa;
	char path[64], link[64];
	ssize_t n;
	int fd, ok;

	test_init(argc, argv);

	files = clone(idle, stack_files + STACK_SIZE, CLONE_FILES | CLONE_FS | SIGCHLD, NULL);
	if (files < 0)
		return fail_perror("clone(CLONE_FILES | CLONE_FS)");
	vm = clone(idle, stack_vm + STACK_SIZE, CLONE_VM | CLONE_SIGHAND | SIGCHLD, NULL);
	if (vm < 0)
		return fail_perror("clone(CLONE_VM | CLONE_SIGHAND)");

	test_daemon();
	test_waitsig();

	ok = shares(files, KCMP_FILES, "fd table") && shares(files, KCMP_FS, "fs info") &&
	     shares(vm, KCMP_VM, "address space") && shares(vm, KCMP_SIGHAND, "signal handlers");
	if (ok) {
		fd = open("/dev/null", O_RDONLY);
		snprintf(path, sizeof(path), "/proc/%d/fd/%d", files, fd);
		n = readlink(path, link, sizeof(link) - 1);
		if (fd < 0 || n < 0)
			ok = fail("an fd the parent opened is not in the child sharing its table");
	}
	if (ok) {
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = on_usr1;
		if (sigaction(SIGUSR1, &sa, NULL))
			return fail_perror("sigaction");
	}
	kill(files, SIGKILL);
	kill(vm, SIGKILL);
	test_waitpid(files, NULL, 5000);
	test_waitpid(vm, NULL, 5000);
	return ok ? pass() : 1;
}
