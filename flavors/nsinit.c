/*
 * nsinit: start a zdtm test under a pid-1 init of fresh namespaces (flavours ns and uns).
 *
 *   nsinit [-u] [-H HOSTNAME] -r ROOTPIDFILE -- TEST ARGS...
 *
 * The outer process clones the init into new pid, mount, net, uts and ipc namespaces
 * (-u: a new user namespace too, whose uid/gid maps the outer process writes, because only
 * a process outside the new namespace may map ids other than its own).  The init makes
 * mounts private, mounts its own /proc, sets the hostname, brings lo up, then forks and
 * execs the test starter.  When the starter exits, the init reports its wait status to the
 * outer process, which writes the init's pid (host view) to ROOTPIDFILE and exits with the
 * starter's exit status (1 when it was killed).  The init then only reaps children and exits once none is
 * left, i.e. when the test tree is gone.  It stays tiny on purpose: the C/R engine dumps
 * and restores it together with the test.
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

/* Runs as pid 1 of the new namespaces; never returns. */
static void init_main(int sync_rd, int ready_wr, int exe, int uns, const char *hostname,
		      char **argv)
{
	char c;
	int status;
	pid_t starter, pid;

	/* wait until the outer process has written the id maps */
	if (read(sync_rd, &c, 1) != 1)
		die("sync");
	close(sync_rd);
	/* own session and process group: nothing of the dumped tree points outside it */
	if (setsid() < 0)
		die("setsid");
	if (uns && (setgroups(0, NULL) || setresgid(0, 0, 0) || setresuid(0, 0, 0)))
		die("become root in the user namespace");
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
		die("make / private");
	if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
		die("mount /proc");
	if (sethostname(hostname, strlen(hostname)))
		die("sethostname");
	lo_up();

	starter = fork();
	if (starter < 0)
		die("fork");
	if (starter == 0) {
		fexecve(exe, argv, environ);
		die(argv[0]);
	}
	close(exe);
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
	const char *hostname = "zdtm-ns", *rootpidfile = NULL;
	int sync_p[2], ready_p[2], uns = 0, opt, status, exe;
	unsigned long flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWUTS |
			      CLONE_NEWIPC | SIGCHLD;
	char path[64], map[64];
	FILE *f;
	pid_t pid;

	while ((opt = getopt(argc, argv, "+uH:r:")) != -1) {
		switch (opt) {
		case 'u': uns = 1; break;
		case 'H': hostname = optarg; break;
		case 'r': rootpidfile = optarg; break;
		default: goto usage;
		}
	}
	if (!rootpidfile || optind >= argc)
		goto usage;
	/*
	 * Open the test binary as host root: in uns the starter runs as uid 100000, which may
	 * not be able to walk the path (a checkout under a 0700 home); exec through the fd.
	 */
	exe = open(argv[optind], O_PATH | O_CLOEXEC);
	if (exe < 0)
		die(argv[optind]);
	if (uns)
		flags |= CLONE_NEWUSER;
	if (pipe2(sync_p, O_CLOEXEC) || pipe2(ready_p, O_CLOEXEC))
		die("pipe");

	/* raw clone without a new stack behaves like fork() with namespace flags */
	pid = syscall(SYS_clone, flags, NULL, NULL, NULL, 0);
	if (pid < 0)
		die("clone");
	if (pid == 0) {
		close(sync_p[1]);
		close(ready_p[0]);
		init_main(sync_p[0], ready_p[1], exe, uns, hostname, argv + optind);
	}
	close(sync_p[0]);
	close(ready_p[1]);
	close(exe);

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
	fprintf(stderr, "usage: nsinit [-u] [-H HOSTNAME] -r ROOTPIDFILE -- TEST ARGS...\n");
	return 2;
}
