/*
 * Trees whose shared kernel tables the bundled engine cannot restore: its dump must refuse
 * each one while the tree runs on (tests/engine/test_dump_refusals.py). Usage: MODE; prints
 * "ready PID..." (the tasks the refusal names, in the order the test expects) once set up,
 * then every task waits until killed.
 *
 *   files-siblings   A and B share an fd table their parent P no longer has
 *   vm-children      V shares P's address space and has a child W
 *   vm-session       V shares P's address space and leads a session of its own
 *   vm-group         V shares P's address space and leads a group C joins
 *   vm-pidfd         P holds a pidfd of V, which shares its address space
 *   vm-own-pidfd     V shares P's address space, not its fd table, and holds a pidfd
 *
 * Tasks sharing P's memory make raw system calls only (they share its TLS too).
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define STACK_SIZE (64 * 1024)

static char stacks[4][STACK_SIZE] __attribute__((aligned(16)));
static int sync_pipe[2];
static volatile pid_t w_pid;

static int idle(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return 0;
}

static pid_t spawn(int (*fn)(void *), int n, int flags)
{
	return clone(fn, stacks[n] + STACK_SIZE, flags | SIGCHLD, NULL);
}

static int done(void)
{
	char c = 'r';

	if (write(sync_pipe[1], &c, 1) != 1)
		return 1;
	return idle(NULL);
}

static int v_children(void *arg)
{
	(void)arg;
	w_pid = spawn(idle, 1, 0);
	return w_pid < 0 ? 1 : done();
}

static int v_session(void *arg)
{
	(void)arg;
	return setsid() < 0 ? 1 : done();
}

static int v_group(void *arg)
{
	(void)arg;
	return setpgid(0, 0) ? 1 : done();
}

static int v_own_pidfd(void *arg)
{
	(void)arg;
	return syscall(SYS_pidfd_open, getppid(), 0) < 0 ? 1 : done();
}

static int wait_ready(void)
{
	char c;

	return read(sync_pipe[0], &c, 1) == 1 ? 0 : -1;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";
	pid_t a, b;

	if (pipe(sync_pipe))
		return 2;
	if (!strcmp(mode, "files-siblings")) {
		a = spawn(idle, 0, CLONE_FILES);
		b = spawn(idle, 1, CLONE_FILES);
		if (a < 0 || b < 0 || unshare(CLONE_FILES))
			return 3;
		printf("ready %d %d\n", a, b);
	} else if (!strcmp(mode, "vm-children")) {
		a = spawn(v_children, 0, CLONE_VM);
		if (a < 0 || wait_ready())
			return 3;
		printf("ready %d %d %d\n", a, getpid(), w_pid);
	} else if (!strcmp(mode, "vm-session") || !strcmp(mode, "vm-own-pidfd")) {
		a = spawn(mode[3] == 's' ? v_session : v_own_pidfd, 0, CLONE_VM);
		if (a < 0 || wait_ready())
			return 3;
		printf("ready %d %d\n", a, getpid());
	} else if (!strcmp(mode, "vm-group")) {
		a = spawn(v_group, 0, CLONE_VM);
		if (a < 0 || wait_ready())
			return 3;
		b = spawn(idle, 1, 0);
		if (b < 0 || setpgid(b, a))
			return 4;
		printf("ready %d %d %d\n", a, getpid(), b);
	} else if (!strcmp(mode, "vm-pidfd")) {
		a = spawn(idle, 0, CLONE_VM);
		if (a < 0 || syscall(SYS_pidfd_open, a, 0) < 0)
			return 3;
		printf("ready %d\n", a);
	} else {
		fprintf(stderr, "unknown mode %s\n", mode);
		return 2;
	}
	fflush(stdout);
	return idle(NULL);
}
