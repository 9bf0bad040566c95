/*
 * nsinit: start a zdtm test under a pid-1 init of fresh namespaces (flavours ns and uns).
 *
 *   nsinit [-u] [-H HOSTNAME] -R ROOT -i INIT [-l LOG] -r ROOTPIDFILE -- TEST ARGS...
 *
 * INIT is the path of this binary inside ROOT, TEST a path inside ROOT, LOG too.
 *
 * The outer process clones the init into new pid, mount, net, uts and ipc namespaces
 * (-u: a new user namespace too, created first by the same clone so that it owns
 * the others; the outer process writes its uid/gid maps, because only a process
 * outside may map ids other than its own).  The init enters a time namespace of its own.  The init makes mounts private, bind-mounts ROOT
 * onto itself and pivots into it, so that everything the tree maps or holds open lives in
 * its own mount namespace: the test, this init and their libraries are copies inside ROOT
 * (made by the harness), and TEST is a path inside it.  It then mounts its own /proc, sets
 * the hostname, brings lo up, points its stdio at /dev/null and LOG (paths inside ROOT) and
 * re-executes itself from inside ROOT (so that its own text is mapped from there, not from
 * the outer mount namespace), forks and execs the test starter.  When the starter exits,
 * the init reports its wait status to the outer process, which writes the init's pid (host
 * view) to ROOTPIDFILE and exits with the starter's exit status (1 when it was killed).
 * The init then only reaps children and exits once none is left.  It stays tiny on
 * purpose: the C/R engine dumps and restores it together with the test.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

/* uns: root inside is uid/gid 100000 outside, 65536 ids mapped. */
#define UNS_BASE 100000
#define UNS_COUNT 65536

static void die(const char *what)
{
	fprintf(stderr, "nsinit: %s: %s\n", what, strerror(errno));
	_exit(3);
}

static void write_file(const char *path, const char *data)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);

	if (fd < 0 || write(fd, data, strlen(data)) != (ssize_t)strlen(data))
		die(path);
	close(fd);
}

static void lo_up(void)
{
	struct ifreq ifr;
	int sk = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (sk < 0)
		die("socket");
	memset(&ifr, 0, sizeof(ifr));
	strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
	if (ioctl(sk, SIOCGIFFLAGS, &ifr) < 0)
		die("SIOCGIFFLAGS lo");
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ioctl(sk, SIOCSIFFLAGS, &ifr) < 0)
		die("SIOCSIFFLAGS lo");
	close(sk);
}

/* stdin from /dev/null, stdout/stderr to LOG (or /dev/null): paths inside the new root */
static void reopen_stdio(const char *log)
{
	int in = open("/dev/null", O_RDONLY), out;

	out = log ? open(log, O_WRONLY | O_APPEND | O_CREAT, 0644) : open("/dev/null", O_WRONLY);
	if (in < 0 || out < 0)
		die("reopen stdio in the new root");
	if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0)
		die("dup2 stdio");
	close(in);
	close(out);
}

/*
 * Enter a time namespace of its own (offsets 0): an engine that restores a tree into a new
 * time namespace, as CRIU does to keep clocks monotonic, then compares like with like.
 * unshare() only affects children; setns() moves the caller itself.
 */
static void enter_time_ns(void)
{
	int fd;

	if (unshare(CLONE_NEWTIME))
		die("unshare a time namespace");
	fd = open("/proc/self/ns/time_for_children", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || setns(fd, CLONE_NEWTIME))
		die("enter the new time namespace");
	close(fd);
}

/* Make ROOT the root of this mount namespace with a /proc and a /dev/pts of its own; the
 * old root is detached. */
static void enter_root(const char *root)
{
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
		die("make / private");
	if (mount(root, root, NULL, MS_BIND, NULL))
		die("bind-mount the new root");
	if (chdir(root))
		die("chdir to the new root");
	/* before the old root goes: in a user namespace proc may be mounted only while a
	 * fully visible one is in the mount namespace */
	if (mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
		die("mount /proc");
	/* the old root ends up on top of the new one at "/": detach it */
	if (syscall(SYS_pivot_root, ".", "."))
		die("pivot_root");
	if (umount2(".", MNT_DETACH))
		die("detach the old root");
	if (chdir("/"))
		die("chdir /");
	/* a pty instance of its own (/dev/ptmx is a link to pts/ptmx in the root) */
	if (mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		  "newinstance,ptmxmode=0666,mode=0620"))
		die("mount /dev/pts");
}

/* Runs as pid 1 of the new namespaces; ends by re-executing itself from the new root. */
static void init_main(int sync_rd, int ready_wr, int uns, const char *hostname,
		      const char *root, const char *self, const char *log, char **argv, int argc)
{
	char c, fdbuf[16];
	char **args = calloc(argc + 5, sizeof(*args));
	int i;

	/* wait until the outer process has written the id maps */
	if (read(sync_rd, &c, 1) != 1)
		die("sync");
	close(sync_rd);
	/* own session and process group: nothing of the dumped tree points outside it */
	if (setsid() < 0)
		die("setsid");
	if (uns && (setgroups(0, NULL) || setresgid(0, 0, 0) || setresuid(0, 0, 0)))
		die("become root in the user namespace");
	enter_time_ns();
	enter_root(root);
	if (sethostname(hostname, strlen(hostname)))
		die("sethostname");
	lo_up();
	reopen_stdio(log);
	if (!args)
		die("calloc");
	/* the report pipe survives the exec; everything else of the outer world is gone */
	if (fcntl(ready_wr, F_SETFD, 0))
		die("fcntl");
	snprintf(fdbuf, sizeof(fdbuf), "%d", ready_wr);
	args[0] = (char *)self;
	args[1] = "-S";
	args[2] = fdbuf;
	args[3] = "--";
	for (i = 0; i < argc; i++)
		args[4 + i] = argv[i];
	execv(self, args);
	die(self);
}

/* Stage 2, pid 1 running from the new root: start the test, report, then reap. */
static int init_stage2(int ready_wr, char **argv)
{
	int status;
	pid_t starter, pid;

	starter = fork();
	if (starter < 0)
		die("fork");
	if (starter == 0) {
		close(ready_wr);
		execv(argv[0], argv);
		die(argv[0]);
	}
	/* the test daemon is re-parented to us when the starter exits: keep reaping */
	while ((pid = waitpid(starter, &status, 0)) < 0 && errno == EINTR)
		;
	if (pid < 0)
		die("waitpid starter");
	if (write(ready_wr, &status, sizeof(status)) != sizeof(status))
		die("report");
	close(ready_wr);
	for (;;) {
		if (wait(NULL) < 0 && errno == ECHILD)
			_exit(0);
	}
}

int main(int argc, char **argv)
{
	const char *hostname = "zdtm-ns", *rootpidfile = NULL, *root = NULL, *self = NULL;
	const char *log = NULL;
	int sync_p[2], ready_p[2], uns = 0, opt, status, stage2_fd = -1;
	unsigned long flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWUTS |
			      CLONE_NEWIPC | SIGCHLD;
	char path[64], map[64];
	FILE *f;
	pid_t pid;

	while ((opt = getopt(argc, argv, "+uH:r:R:i:l:S:")) != -1) {
		switch (opt) {
		case 'u': uns = 1; break;
		case 'H': hostname = optarg; break;
		case 'r': rootpidfile = optarg; break;
		case 'R': root = optarg; break;
		case 'i': self = optarg; break;
		case 'l': log = optarg; break;
		case 'S': stage2_fd = atoi(optarg); break;
		default: goto usage;
		}
	}
	if (optind >= argc)
		goto usage;
	if (stage2_fd >= 0)
		return init_stage2(stage2_fd, argv + optind);
	if (!rootpidfile || !root || !self)
		goto usage;
	if (uns)
		flags |= CLONE_NEWUSER;
	if (pipe2(sync_p, O_CLOEXEC) || pipe2(ready_p, O_CLOEXEC))
		die("pipe");

	/* raw clone without a new stack behaves like fork() with namespace flags; with
	 * CLONE_NEWUSER the kernel creates the user namespace first, so it owns the others */
	pid = syscall(SYS_clone, flags, NULL, NULL, NULL, 0);
	if (pid < 0)
		die("clone");
	if (pid == 0) {
		close(sync_p[1]);
		close(ready_p[0]);
		init_main(sync_p[0], ready_p[1], uns, hostname, root, self, log, argv + optind,
			  argc - optind);
	}
	close(sync_p[0]);
	close(ready_p[1]);

	f = fopen(rootpidfile, "we");
	if (!f || fprintf(f, "%d\n", pid) < 0 || fclose(f))
		die(rootpidfile);
	if (uns) {
		snprintf(map, sizeof(map), "0 %d %d\n", UNS_BASE, UNS_COUNT);
		snprintf(path, sizeof(path), "/proc/%d/uid_map", pid);
		write_file(path, map);
		snprintf(path, sizeof(path), "/proc/%d/gid_map", pid);
		write_file(path, map);
	}
	if (write(sync_p[1], "1", 1) != 1)
		die("sync");
	close(sync_p[1]);

	if (read(ready_p[0], &status, sizeof(status)) != sizeof(status)) {
		fprintf(stderr, "nsinit: the init died before the test started\n");
		return 2;
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	if (WIFEXITED(status)) {
		/* pass the starter's status on: 77 is the zdtm "skipped at setup" */
		fprintf(stderr, "nsinit: test starter exited with %d\n", WEXITSTATUS(status));
		return WEXITSTATUS(status);
	}
	fprintf(stderr, "nsinit: test starter killed by signal %d\n", WTERMSIG(status));
	return 1;

usage:
	fprintf(stderr, "usage: nsinit [-u] [-H HOSTNAME] -R ROOT -i INIT [-l LOG] "
			"-r ROOTPIDFILE -- TEST ARGS...\n");
	return 2;
}
