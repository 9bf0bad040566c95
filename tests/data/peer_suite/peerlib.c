#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "peerlib.h"

static const char *pidfile, *outfile;
static volatile sig_atomic_t term;
static int ready_pipe[2] = { -1, -1 };

static void on_term(int sig)
{
	(void)sig;
	term = 1;
}

static int set_opt(struct peer_opt *opts, const char *arg)
{
	const char *eq = strchr(arg, '=');
	size_t len;

	if (strncmp(arg, "--", 2) || !eq)
		return -1;
	arg += 2;
	len = (size_t)(eq - arg);
	if (len == 7 && !strncmp(arg, "pidfile", 7))
		return pidfile = eq + 1, 0;
	if (len == 7 && !strncmp(arg, "outfile", 7))
		return outfile = eq + 1, 0;
	for (; opts && opts->name; opts++)
		if (strlen(opts->name) == len && !strncmp(arg, opts->name, len))
			return *opts->value = eq + 1, 0;
	return -1;
}

static void write_pidfile(pid_t pid)
{
	char tmp[4096];
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s.tmp", pidfile);
	f = fopen(tmp, "w");
	if (!f || fprintf(f, "%d\n", (int)pid) < 0 || fclose(f) || rename(tmp, pidfile)) {
		perror("pidfile");
		exit(1);
	}
}

void peer_init(int argc, char **argv, struct peer_opt *opts)
{
	struct peer_opt *o;
	pid_t pid;
	char c;
	int i, fd;

	for (i = 1; i < argc; i++)
		if (set_opt(opts, argv[i])) {
			fprintf(stderr, "%s: unknown option %s\n", argv[0], argv[i]);
			exit(2);
		}
	for (o = opts; o && o->name; o++)
		if (o->mandatory && !*o->value) {
			fprintf(stderr, "mandatory flag --%s not given\n", o->name);
			exit(2);
		}
	if (!pidfile || !outfile) {
		fprintf(stderr, "usage: %s --pidfile=F --outfile=O\n", argv[0]);
		exit(2);
	}
	if (pipe(ready_pipe))
		exit(1);
	pid = fork();
	if (pid < 0)
		exit(1);
	if (pid > 0) {	/* the starter: ready once the daemon says so */
		close(ready_pipe[1]);
		if (read(ready_pipe[0], &c, 1) != 1) {
			waitpid(pid, &i, 0);
			exit(1);
		}
		write_pidfile(pid);
		exit(0);
	}
	close(ready_pipe[0]);
	setsid();
	fd = open(outfile, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd < 0)
		exit(1);
	dup2(fd, 1);
	dup2(fd, 2);
	close(fd);
	setvbuf(stdout, NULL, _IONBF, 0);
	signal(SIGTERM, on_term);
}

void peer_ready(void)
{
	if (write(ready_pipe[1], "R", 1) != 1)
		exit(1);
	close(ready_pipe[1]);
}

int peer_term_requested(void)
{
	return term;
}

void peer_wait_term(void)
{
	sigset_t block, old;

	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigprocmask(SIG_BLOCK, &block, &old);
	while (!term)
		sigsuspend(&old);
	sigprocmask(SIG_SETMASK, &old, NULL);
}

void peer_pass(void)
{
	printf("PASS\n");
	exit(0);
}

void peer_fail(const char *fmt, ...)
{
	va_list ap;

	printf("FAIL: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf(" (errno %d)\n", errno);
	exit(1);
}
