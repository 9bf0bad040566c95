/*
 * shared_tables_tree: kernel tables shared between processes in more shapes than
 * shared_tables.
 *
 *   P (the test)
 *   +- F1  clone(CLONE_FILES): P's fd table, fs info of its own (cwd: the test dir)
 *   |  +- F2  clone(CLONE_FILES | CLONE_FS): the same fd table, F1's fs info
 *   |  +- N   clone(): an fd table of its own, copied while F1 held everything
 *   |  +- VF  clone(CLONE_VM): F1's memory, an fd table of its own with an fd only it has
 *   +- V1  clone(CLONE_VM): P's memory, everything else its own: an fd P closed since,
 *   |      one only it opened, cwd, umask, its own process group, a lower RLIMIT_NOFILE,
 *   |      a POSIX lock
 *   +- V2  clone(CLONE_VM | CLONE_SIGHAND | CLONE_FS): an fd table of its own
 *   +- V3  clone(CLONE_VM | CLONE_SIGHAND | CLONE_FILES | CLONE_FS): a process sharing
 *          everything with P, as LinuxThreads made them
 *
 * After restore kcmp finds the same sharing, and each task still has what it set up; a
 * change through one task shows in the tasks sharing the table with it. The tasks
 * sharing P's memory only make raw system calls (they share its TLS, so no malloc/stdio).
 * V2 runs on a small stack right above read-only memory: an engine injecting syscalls
 * into it must not take the memory below its stack for scratch space.
 */
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_DIRNAME();

#define STACK_SIZE (256 * 1024)
#define KCMP_VM 1
#define KCMP_FILES 2
#define KCMP_FS 3
#define KCMP_SIGHAND 4
#define V1_FD 40      /* an fd only V1 has */
#define VF_FD 41      /* and one only VF has */
#define V1_NOFILE 200 /* V1's RLIMIT_NOFILE soft limit */
#define V1_UMASK 027
#define F1_UMASK 077
#define SMALL_STACK (4 * 4096) /* V2's, above BELOW_SMALL read-only bytes */
#define BELOW_SMALL (32 * 4096)

static char stacks[6][STACK_SIZE] __attribute__((aligned(16)));
static char dir[PATH_MAX], lockpath[PATH_MAX + 16];
static int ready[2]; /* each child writes one byte once set up */

static void idle_forever(void)
{
	for (;;)
		pause();
}

static int say_ready(void)
{
	char c = 'r';

	return write(ready[1], &c, 1) == 1 ? 0 : -1;
}

/* F2 and N: idle until killed. */
static int idle(void *arg)
{
	(void)arg;
	if (say_ready())
		return 1;
	idle_forever();
	return 0;
}

/* VF: F1's memory, an fd table of its own. Raw system calls only. */
static int vf_main(void *arg)
{
	int fd;

	(void)arg;
	fd = open("/dev/zero", O_RDONLY);
	if (fd < 0 || dup2(fd, VF_FD) != VF_FD || close(fd) || say_ready())
		return 1;
	idle_forever();
	return 0;
}

/* F1: shares P's fd table; its own cwd and umask, shared with F2. */
static int f1_main(void *arg)
{
	pid_t kids[3];
	int status, i, ok = 1;

	(void)arg;
	if (chdir(dir) < 0)
		return 2;
	umask(F1_UMASK);
	kids[0] = clone(idle, stacks[2] + STACK_SIZE, CLONE_FILES | CLONE_FS | SIGCHLD, NULL);
	kids[1] = clone(idle, stacks[4] + STACK_SIZE, SIGCHLD, NULL);
	kids[2] = clone(vf_main, stacks[5] + STACK_SIZE, CLONE_VM | SIGCHLD, NULL);
	if (kids[0] < 0 || kids[1] < 0 || kids[2] < 0 || say_ready())
		return 3;
	test_waitsig();
	for (i = 0; i < 3; i++)
		kill(kids[i], SIGKILL);
	for (i = 0; i < 3; i++)
		if (waitpid(kids[i], &status, 0) != kids[i])
			ok = 0;
	return ok ? 0 : 4;
}

/* V1: P's memory, nothing else of P's. Raw system calls only. */
static int v1_main(void *arg)
{
	struct rlimit rl;
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 4096 };
	int fd;

	(void)arg;
	fd = open("/dev/zero", O_RDONLY);
	if (fd < 0 || dup2(fd, V1_FD) != V1_FD || close(fd))
		return 1;
	if (chdir(dir) || setpgid(0, 0))
		return 2;
	umask(V1_UMASK);
	if (getrlimit(RLIMIT_NOFILE, &rl))
		return 3;
	rl.rlim_cur = V1_NOFILE;
	if (setrlimit(RLIMIT_NOFILE, &rl))
		return 4;
	fd = open(lockpath, O_RDWR);
	if (fd < 0 || fcntl(fd, F_SETLK, &fl))
		return 5;
	if (say_ready())
		return 6;
	idle_forever();
	return 0;
}

static int v_idle(void *arg)
{
	return idle(arg);
}

static int shares(pid_t a, pid_t b, int type, int want, const char *what)
{
	long res = syscall(SYS_kcmp, a, b, type, 0, 0);

	if ((res == 0) != want) {
		fail("%s of %d and %d: %s (kcmp %ld)", what, a, b,
		     want ? "no longer shared" : "shared now", res);
		return 0;
	}
	return 1;
}

static int link_is(pid_t pid, const char *what, const char *want)
{
	char path[64], buf[PATH_MAX];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/%s", pid, what);
	n = readlink(path, buf, sizeof(buf) - 1);
	if (n < 0)
		buf[0] = '\0';
	else
		buf[n] = '\0';
	if (strcmp(buf, want)) {
		fail("%s of %d is '%s', expected '%s'", what, pid, buf, want);
		return 0;
	}
	return 1;
}

static int v1_state(pid_t v1, int only_p)
{
	struct rlimit rl;
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 4096 };
	char buf[4096], fdname[32], *umask_line;
	int fd, ok = 1;

	snprintf(fdname, sizeof(fdname), "fd/%d", V1_FD);
	ok &= link_is(v1, fdname, "/dev/zero") && link_is(v1, "cwd", dir);
	snprintf(fdname, sizeof(fdname), "fd/%d", only_p);
	ok &= link_is(v1, fdname, "/dev/null"); /* P closed it after cloning V1 */
	if (getpgid(v1) != v1)
		ok = fail("V1's process group is %d, not its own", getpgid(v1));
	if (prlimit(v1, RLIMIT_NOFILE, NULL, &rl) || rl.rlim_cur != V1_NOFILE)
		ok = fail("V1's RLIMIT_NOFILE is %llu, not %d", (unsigned long long)rl.rlim_cur,
			  V1_NOFILE);
	snprintf(fdname, sizeof(fdname), "/proc/%d/status", v1);
	if (test_read_file(fdname, buf, sizeof(buf)) < 0 ||
	    !(umask_line = strstr(buf, "Umask:")) || strtol(umask_line + 6, NULL, 8) != V1_UMASK)
		ok = fail("V1's umask is not %o", V1_UMASK);
	fd = open(lockpath, O_RDWR);
	if (fd < 0 || fcntl(fd, F_GETLK, &fl) || fl.l_type != F_WRLCK || fl.l_pid != v1)
		ok = fail("V1's POSIX lock is gone (type %d, pid %d)", fl.l_type, fl.l_pid);
	if (fd >= 0)
		close(fd);
	return ok;
}

static int vf_state(pid_t f1, pid_t vf)
{
	char fdname[32];

	snprintf(fdname, sizeof(fdname), "fd/%d", VF_FD);
	return shares(f1, vf, KCMP_VM, 1, "address space") &
	       shares(f1, vf, KCMP_FILES, 0, "fd table") & link_is(vf, fdname, "/dev/zero");
}

static int verify(pid_t me, pid_t f1, pid_t f2, pid_t n, pid_t v1, pid_t v2, pid_t v3,
		  int only_p)
{
	char here[PATH_MAX], fdname[32];
	int ok = 1, fd;

	ok &= shares(me, f1, KCMP_FILES, 1, "fd table") & shares(me, f2, KCMP_FILES, 1, "fd table");
	ok &= shares(me, f1, KCMP_FS, 0, "fs info") & shares(f1, f2, KCMP_FS, 1, "fs info");
	ok &= shares(me, n, KCMP_FILES, 0, "fd table") & shares(f1, n, KCMP_FS, 0, "fs info");
	ok &= shares(me, v1, KCMP_VM, 1, "address space") & shares(me, v1, KCMP_FILES, 0, "fd table");
	ok &= shares(me, v1, KCMP_FS, 0, "fs info") & shares(me, v1, KCMP_SIGHAND, 0, "signal handlers");
	ok &= shares(me, v2, KCMP_VM, 1, "address space") & shares(me, v2, KCMP_SIGHAND, 1, "signal handlers");
	ok &= shares(me, v2, KCMP_FS, 1, "fs info") & shares(me, v2, KCMP_FILES, 0, "fd table");
	ok &= shares(me, v3, KCMP_VM, 1, "address space") & shares(me, v3, KCMP_SIGHAND, 1, "signal handlers");
	ok &= shares(me, v3, KCMP_FS, 1, "fs info") & shares(me, v3, KCMP_FILES, 1, "fd table");
	ok &= shares(v1, v2, KCMP_VM, 1, "address space");
	if (!ok)
		return 0;
	ok &= link_is(f1, "cwd", dir) & link_is(f2, "cwd", dir);
	if (!getcwd(here, sizeof(here)))
		return fail_perror("getcwd");
	ok &= link_is(v2, "cwd", here) & link_is(v3, "cwd", here);
	snprintf(fdname, sizeof(fdname), "fd/%d", only_p);
	ok &= link_is(v2, fdname, "/dev/null");
	ok &= v1_state(v1, only_p);
	/* A change through one holder of a table is every holder's. */
	fd = open(lockpath, O_RDONLY);
	if (fd < 0)
		return fail_perror("open %s", lockpath);
	snprintf(fdname, sizeof(fdname), "fd/%d", fd);
	ok &= link_is(f2, fdname, lockpath) & link_is(v3, fdname, lockpath);
	close(fd);
	return ok;
}

/* F1's three children: F2 shares F1's fd table, VF its memory, N neither. */
static int f1_children(pid_t f1, pid_t *f2, pid_t *n, pid_t *vf)
{
	char path[64], buf[256];
	pid_t kids[3];
	int i;

	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", f1, f1);
	if (test_read_file(path, buf, sizeof(buf)) < 0 ||
	    sscanf(buf, "%d %d %d", &kids[0], &kids[1], &kids[2]) != 3)
		return fail("F1's children not found");
	for (i = 0; i < 3; i++) {
		if (syscall(SYS_kcmp, f1, kids[i], KCMP_FILES, 0, 0) == 0)
			*f2 = kids[i];
		else if (syscall(SYS_kcmp, f1, kids[i], KCMP_VM, 0, 0) == 0)
			*vf = kids[i];
		else
			*n = kids[i];
	}
	return 0;
}

int main(int argc, char **argv)
{
	pid_t me, f1, v1, v2, v3;
	int only_p, status, ok, fd, i;
	pid_t f2 = -1, n = -1, vf = -1;
	char c, *small;

	test_init(argc, argv);
	me = getpid();
	if (mkdir(test_dirname, 0700) || !realpath(test_dirname, dir))
		return fail_perror("mkdir %s", test_dirname);
	snprintf(lockpath, sizeof(lockpath), "%s/lock", dir);
	fd = open(lockpath, O_RDWR | O_CREAT, 0600);
	if (fd < 0 || ftruncate(fd, 4096) || close(fd) || pipe(ready))
		return fail_perror("set up %s", lockpath);
	only_p = open("/dev/null", O_RDONLY); /* V1 and V2 keep it, P closes it */
	if (only_p < 0)
		return fail_perror("open /dev/null");
	small = mmap(NULL, BELOW_SMALL + SMALL_STACK, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (small == MAP_FAILED || mprotect(small, BELOW_SMALL, PROT_READ))
		return fail_perror("mmap a small stack");

	f1 = clone(f1_main, stacks[0] + STACK_SIZE, CLONE_FILES | SIGCHLD, NULL);
	v1 = clone(v1_main, stacks[1] + STACK_SIZE, CLONE_VM | SIGCHLD, NULL);
	v2 = clone(v_idle, small + BELOW_SMALL + SMALL_STACK, CLONE_VM | CLONE_SIGHAND | CLONE_FS | SIGCHLD,
		   NULL);
	v3 = clone(v_idle, stacks[3] + STACK_SIZE,
		   CLONE_VM | CLONE_SIGHAND | CLONE_FILES | CLONE_FS | SIGCHLD, NULL);
	if (f1 < 0 || v1 < 0 || v2 < 0 || v3 < 0)
		return fail_perror("clone");
	/* F1, F2, N, VF, V1, V2, V3 */
	for (i = 0; i < 7; i++)
		if (test_read_timeout(ready[0], &c, 1, 10000))
			return fail("a child was not set up in time");
	if (close(only_p) || close(ready[0]) || close(ready[1]))
		return fail_perror("close");
	if (f1_children(f1, &f2, &n, &vf))
		return 1;

	test_daemon();
	test_waitsig();

	ok = verify(me, f1, f2, n, v1, v2, v3, only_p) && vf_state(f1, vf);
	kill(v1, SIGKILL);
	kill(v2, SIGKILL);
	kill(v3, SIGKILL);
	kill(f1, SIGTERM);
	for (i = 0; i < 3; i++)
		test_waitpid((pid_t[]){ v1, v2, v3 }[i], NULL, 5000);
	if (test_waitpid(f1, &status, 5000) || !WIFEXITED(status) || WEXITSTATUS(status))
		ok = fail("F1 ended with status %#x", status);
	return ok ? pass() : 1;
}
