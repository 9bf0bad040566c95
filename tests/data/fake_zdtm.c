/*
 * A zdtm-protocol test program for the harness's own tests, built once per behaviour:
 *   -DBEHAVE_PASS     PASS on SIGTERM              -DBEHAVE_FAIL    FAIL on SIGTERM
 *   -DBEHAVE_NOSTART  starter never gets ready     -DBEHAVE_HANG    ignores SIGTERM
 *   -DBEHAVE_ESCAPE   also leaves a setsid()ed grandchild running (cleanup must kill it)
 *   -DBEHAVE_ENV      PASS, and first writes what it sees of its namespaces to the outfile
 *   -DBEHAVE_SKIP     skips itself at setup: "SKIP: ..." in the outfile, starter exits 77
 *   -DBEHAVE_DIRFD    PASS, holding an fd of its work dir opened with O_DIRECTORY
 *   -DBEHAVE_SUBDIR   PASS, its daemon's cwd a new directory "sub" of the work dir
 *   -DBEHAVE_SUBDIR_CHILD  with BEHAVE_SUBDIR: also a child (pausing) in that cwd
 *   -DBEHAVE_FLAKY    FAIL on SIGTERM the first time (it leaves BINARY.ran), PASS after
 */
#include <fcntl.h>
#include <net/if.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void __attribute__((unused)) on_term(int sig)
{
	(void)sig;
	stop = 1;
}

/* "env host=H uid=U pid=P lo_up=0|1 init=COMM": what the flavour set up, as seen inside */
static void __attribute__((unused)) report_env(void)
{
	char host[65] = "", comm[64] = "";
	struct ifreq ifr;
	int sk;
	FILE *f;

	gethostname(host, sizeof(host) - 1);
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	sk = socket(AF_INET, SOCK_DGRAM, 0);
	if (sk < 0 || ioctl(sk, SIOCGIFFLAGS, &ifr) < 0)
		ifr.ifr_flags = 0;
	close(sk);
	f = fopen("/proc/1/comm", "r");	/* our own /proc shows our own pid 1 */
	if (f) {
		if (!fgets(comm, sizeof(comm), f))
			comm[0] = 0;
		fclose(f);
	}
	comm[strcspn(comm, "\n")] = 0;
	printf("env host=%s uid=%d pid=%d lo_up=%d init=%s\n", host, (int)getuid(), (int)getpid(),
	       !!(ifr.ifr_flags & IFF_UP), comm);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	const char *pidfile = NULL, *outfile = NULL;
	char tmp[4096], c;
	int i, p[2], fd;
	sigset_t term, waitmask;
	pid_t pid;
	FILE *f;

	for (i = 1; i < argc; i++) {
		if (!strncmp(argv[i], "--pidfile=", 10))
			pidfile = argv[i] + 10;
		else if (!strncmp(argv[i], "--outfile=", 10))
			outfile = argv[i] + 10;
	}
	if (!pidfile || !outfile || pipe(p))
		return 2;
#ifdef BEHAVE_SKIP
	f = fopen(outfile, "w");
	if (f) {
		fprintf(f, "SKIP: fake_zdtm.c:%d: no such kernel feature\n", __LINE__);
		fclose(f);
	}
	return 77;
#endif
	pid = fork();
	if (pid < 0)
		return 2;
	if (pid > 0) {
		close(p[1]);
#ifdef BEHAVE_NOSTART
		pause();
#endif
		if (read(p[0], &c, 1) != 1)
			return 1;
		snprintf(tmp, sizeof(tmp), "%s.tmp", pidfile);
		f = fopen(tmp, "w");
		if (!f || fprintf(f, "%d\n", pid) < 0 || fclose(f) || rename(tmp, pidfile))
			return 1;
		return 0;
	}
	setsid();
	fd = open(outfile, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		return 1;
	dup2(fd, 1);
	dup2(fd, 2);
	close(fd);
	close(p[0]);
#ifdef BEHAVE_ENV
	report_env();
#endif
#ifdef BEHAVE_SUBDIR
	if (mkdir("sub", 0755) || chdir("sub"))
		return 1;
#endif
#ifdef BEHAVE_SUBDIR_CHILD
	if (fork() == 0)
		for (;;)
			pause();
#endif
#ifdef BEHAVE_DIRFD
	if (open(".", O_RDONLY | O_DIRECTORY) < 0)
		return 1;
#endif
	/* blocked until sigsuspend: a SIGTERM between the check of stop and the wait is kept */
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, &waitmask);
	sigdelset(&waitmask, SIGTERM);
#ifndef BEHAVE_HANG
	signal(SIGTERM, on_term);
#else
	signal(SIGTERM, SIG_IGN);
#endif
#ifdef BEHAVE_ESCAPE
	if (fork() == 0) {
		setsid();
		for (;;)
			pause();
	}
#endif
	if (write(p[1], "1", 1) != 1)
		return 1;
	close(p[1]);
	while (!stop)
		sigsuspend(&waitmask);
#ifdef BEHAVE_FLAKY
	snprintf(tmp, sizeof(tmp), "%s.ran", argv[0]);
	if (access(tmp, F_OK)) {
		close(open(tmp, O_WRONLY | O_CREAT, 0644));
		printf("FAIL: fake_zdtm.c:%d: first run fails\n", __LINE__);
		return 0;
	}
#endif
#ifdef BEHAVE_FAIL
	printf("FAIL: fake_zdtm.c:%d: state broken on purpose\n", __LINE__);
#else
	printf("PASS\n");
#endif
	return 0;
}
