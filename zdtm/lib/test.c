/*
 * test.c - the zdtm start/stop protocol and the outfile messages.
 *
 * Start: the program the harness runs (the "starter") forks the test. The test sets its
 * state up and calls test_daemon(), which tells the starter through a pipe; only then does
 * the starter write the pidfile (temp file + rename, so a reader never sees half a pid)
 * and exit 0. If the test dies first, the starter exits with the test's status, and the
 * outfile holds the test's own error message.
 *
 * Stop: SIGTERM sets a flag that test_waitsig() and test_go() look at.
 *
 * All output goes through single write(2) calls on the O_APPEND outfile (no stdio
 * buffers that fork() would duplicate), so lines of several processes never interleave.
 */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "zdtmtst.h"
#include "zdtmtst_int.h"

/* How long the starter waits for test_daemon(); the harness has its own, shorter, deadline. */
#define SETUP_TIMEOUT_MS (300 * 1000)

static volatile sig_atomic_t sigterm_seen;
static int ready_fd = -1;
static unsigned int fail_count;

/* ---- output -------------------------------------------------------------------------- */

static void out_write(const char *buf, size_t len)
{
	while (len) {
		ssize_t n = write(STDOUT_FILENO, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return; /* nowhere left to report to */
		buf += n;
		len -= (size_t)n;
	}
}

/* Append printf-style text to buf at *pos, never past size (truncating long messages). */
static void buf_vadd(char *buf, size_t size, size_t *pos, const char *fmt, va_list ap)
{
	int n;

	if (*pos >= size)
		return;
	n = vsnprintf(buf + *pos, size - *pos, fmt, ap);
	if (n > 0)
		*pos = *pos + (size_t)n < size ? *pos + (size_t)n : size - 1;
}

static void buf_add(char *buf, size_t size, size_t *pos, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	buf_vadd(buf, size, pos, fmt, ap);
	va_end(ap);
}

static void add_stamp(char *buf, size_t size, size_t *pos)
{
	struct timespec ts;
	struct tm tm;

	/* gmtime_r, not localtime_r: the latter may open /etc/localtime (an fd, a file). */
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	buf_add(buf, size, pos, "%02d:%02d:%02d.%03ld %d: ", tm.tm_hour, tm.tm_min, tm.tm_sec,
		ts.tv_nsec / 1000000, (int)getpid());
}

/* One line: [stamp] prefix [file:line: ] message [: strerror(err)] newline. */
static void out_line(bool stamp, const char *prefix, const char *file, int line, int err,
		     const char *fmt, va_list ap)
{
	char buf[4096];
	size_t pos = 0;

	if (stamp)
		add_stamp(buf, sizeof(buf) - 1, &pos);
	buf_add(buf, sizeof(buf) - 1, &pos, "%s", prefix);
	if (file)
		buf_add(buf, sizeof(buf) - 1, &pos, "%s:%d: ", file, line);
	buf_vadd(buf, sizeof(buf) - 1, &pos, fmt, ap);
	if (err)
		buf_add(buf, sizeof(buf) - 1, &pos, ": %s", strerror(err));
	/* Callers may or may not end fmt with a newline: exactly one ends the line. */
	while (pos && buf[pos - 1] == '\n')
		pos--;
	buf[pos++] = '\n';
	out_write(buf, pos);
}

void test_msg(const char *fmt, ...)
{
	int saved = errno;
	va_list ap;

	va_start(ap, fmt);
	out_line(true, "", NULL, 0, 0, fmt, ap);
	va_end(ap);
	errno = saved;
}

void test_log_err(const char *file, int line, int err, const char *fmt, ...)
{
	int saved = errno;
	va_list ap;

	va_start(ap, fmt);
	out_line(true, "ERROR: ", file, line, err, fmt, ap);
	va_end(ap);
	errno = saved;
}

int test_fail(const char *file, int line, int err, const char *fmt, ...)
{
	va_list ap;

	fail_count++;
	va_start(ap, fmt);
	out_line(false, "FAIL: ", file, line, err, fmt, ap);
	va_end(ap);
	return 1;
}

int test_skip(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	out_line(false, "SKIP: ", file, line, 0, fmt, ap);
	va_end(ap);
	return TEST_EXIT_SKIP;
}

int test_pass(void)
{
	char buf[128];
	int n;

	/* A PASS after a recorded failure would hide it: the last line must stay a FAIL. */
	if (fail_count) {
		n = snprintf(buf, sizeof(buf), "FAIL: %u check(s) failed, see above\n", fail_count);
		out_write(buf, (size_t)n);
		return 1;
	}
	out_write("PASS\n", 5);
	return 0;
}

/* ---- crashes ------------------------------------------------------------------------- */

/* Async-signal-safe number formatting for the crash handler (no stdio there). */
static size_t fmt_num(char *buf, size_t pos, unsigned long v, unsigned int base)
{
	char tmp[24];
	size_t n = 0;

	do
		tmp[n++] = "0123456789abcdef"[v % base];
	while ((v /= base));
	while (n)
		buf[pos++] = tmp[--n];
	return pos;
}

static size_t fmt_str(char *buf, size_t pos, const char *s)
{
	while (*s)
		buf[pos++] = *s++;
	return pos;
}

/*
 * A test whose restored state is broken may fault while verifying it: say so in the
 * outfile (the last line becomes a FAIL with the signal and address), then die of the
 * signal as before (SA_RESETHAND: the faulting instruction runs again, unhandled).
 */
static void crash_handler(int sig, siginfo_t *si, void *uc)
{
	char buf[160];
	size_t pos = 0;

	(void)uc;
	pos = fmt_str(buf, pos, "FAIL: process ");
	pos = fmt_num(buf, pos, (unsigned long)getpid(), 10);
	pos = fmt_str(buf, pos, " crashed: signal ");
	pos = fmt_num(buf, pos, (unsigned long)sig, 10);
	pos = fmt_str(buf, pos, " (");
	pos = fmt_str(buf, pos, sigabbrev_np(sig) ? sigabbrev_np(sig) : "?");
	pos = fmt_str(buf, pos, ") at address 0x");
	pos = fmt_num(buf, pos, (unsigned long)si->si_addr, 16);
	buf[pos++] = '\n';
	out_write(buf, pos);
	/* Sent with kill(): no faulting instruction to run again, so deliver it once more. */
	if (si->si_code <= 0)
		raise(sig);
}

static void catch_crashes(void)
{
	static const int sigs[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE };
	struct sigaction sa = {
		.sa_sigaction = crash_handler,
		.sa_flags = SA_SIGINFO | SA_RESETHAND | SA_NODEFER,
	};

	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		if (sigaction(sigs[i], &sa, NULL)) {
			pr_perror("sigaction(%d)", sigs[i]);
			exit(1);
		}
}

/* ---- start --------------------------------------------------------------------------- */

static void sigterm_handler(int sig)
{
	(void)sig;
	sigterm_seen = 1;
}

/* Redirect stdin from /dev/null and stdout/stderr into the outfile; exits on failure. */
static void redirect_stdio(void)
{
	int fd;

	fd = open(test_outfile, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0) {
		fprintf(stderr, "zdtm: cannot open outfile %s: %s\n", test_outfile,
			strerror(errno));
		exit(1);
	}
	if (dup2(fd, STDOUT_FILENO) < 0 || dup2(fd, STDERR_FILENO) < 0) {
		fprintf(stderr, "zdtm: dup2 of outfile: %s\n", strerror(errno));
		exit(1);
	}
	close(fd);
	/* The test must not depend on (or hold) whatever stdin the harness had. */
	fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || dup2(fd, STDIN_FILENO) < 0) {
		pr_perror("cannot put /dev/null on stdin");
		exit(1);
	}
	close(fd);
}

static void write_pidfile(pid_t pid)
{
	char tmp[4096], buf[32];
	int fd, len;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", test_pidfile) >= (int)sizeof(tmp)) {
		pr_err("pidfile name too long");
		goto err;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		pr_perror("open %s", tmp);
		goto err;
	}
	len = snprintf(buf, sizeof(buf), "%d\n", (int)pid);
	if (write(fd, buf, (size_t)len) != len) {
		pr_perror("write %s", tmp);
		close(fd);
		goto err;
	}
	close(fd);
	if (rename(tmp, test_pidfile)) {
		pr_perror("rename %s to %s", tmp, test_pidfile);
		goto err;
	}
	return;
err:
	/* The harness cannot find a test it has no pid of: take the test down with us. */
	test_kill_child(pid);
	unlink(tmp);
	exit(1);
}

/* The starter: wait until the test is ready or dead; never returns. */
static void starter(pid_t child, int rfd)
{
	struct pollfd pfd = { .fd = rfd, .events = POLLIN };
	int status, r;
	char c;

	do
		r = poll(&pfd, 1, SETUP_TIMEOUT_MS);
	while (r < 0 && errno == EINTR);
	if (r == 0) {
		pr_err("test did not reach test_daemon() in %d s", SETUP_TIMEOUT_MS / 1000);
		test_kill_child(child);
		exit(1);
	}
	if (r > 0 && read(rfd, &c, 1) == 1) {
		write_pidfile(child);
		exit(0);
	}
	/* EOF: the test exited (or was killed) during setup. */
	if (test_wait_child(child, &status, 10000)) {
		pr_perror("test closed the start pipe but did not exit");
		exit(1);
	}
	if (WIFEXITED(status)) {
		if (WEXITSTATUS(status) == 0)
			pr_err("test exited 0 before test_daemon()");
		exit(WEXITSTATUS(status) ? WEXITSTATUS(status) : 1);
	}
	pr_err("test killed by signal %d during setup", WTERMSIG(status));
	exit(1);
}

/* Children the test forks during setup must not keep the starter's pipe open. */
static void close_ready_fd_in_child(void)
{
	if (ready_fd >= 0) {
		close(ready_fd);
		ready_fd = -1;
	}
}

void test_init(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = sigterm_handler, .sa_flags = SA_RESTART };
	pid_t starter_pid = getpid(), pid;
	int pfd[2];

	test_parse_options(argc, argv);
	if (starter_pid == 1) {
		/* Our exit would end the pid namespace and kill the test with it. */
		fprintf(stderr, "%s: the starter cannot be pid 1 of a pid namespace: "
			"run it under an init (a shell, the harness's nsinit)\n", argv[0]);
		exit(2);
	}
	/* Whatever fds the caller leaked to us are not the test's state: start from 0, 1, 2. */
	close_range(3, ~0U, 0);
	redirect_stdio();

	if (pipe2(pfd, O_CLOEXEC)) {
		pr_perror("pipe");
		exit(1);
	}
	pid = fork();
	if (pid < 0) {
		pr_perror("fork");
		exit(1);
	}
	if (pid) {
		close(pfd[1]);
		starter(pid, pfd[0]);
	}
	close(pfd[0]);
	ready_fd = pfd[1];
	if (pthread_atfork(NULL, NULL, close_ready_fd_in_child)) {
		pr_err("pthread_atfork failed");
		exit(1);
	}

	/* Until test_daemon(), a killed starter (harness deadline) takes the test with it. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != starter_pid) {
		pr_perror("starter gone or PR_SET_PDEATHSIG failed");
		exit(1);
	}
	/* Own session and process group: the test tree is self-contained for C/R. */
	if (setsid() < 0) {
		pr_perror("setsid");
		exit(1);
	}
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL)) {
		pr_perror("sigaction(SIGTERM)");
		exit(1);
	}
	catch_crashes();
}

void test_daemon(void)
{
	if (ready_fd < 0) {
		pr_err("test_daemon() called twice or without test_init()");
		exit(1);
	}
	if (prctl(PR_SET_PDEATHSIG, 0)) {
		pr_perror("PR_SET_PDEATHSIG");
		exit(1);
	}
	if (write(ready_fd, "R", 1) != 1) {
		pr_perror("cannot tell the starter we are ready");
		exit(1);
	}
	close(ready_fd);
	ready_fd = -1;
}

/* ---- stop ---------------------------------------------------------------------------- */

void test_waitsig(void)
{
	sigset_t term, old, wait_mask;

	/* Block SIGTERM so the flag check and the sleep cannot race with the signal. */
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, &old);
	/* Sleep with the test's own mask, minus SIGTERM: its blocked signals stay blocked. */
	wait_mask = old;
	sigdelset(&wait_mask, SIGTERM);
	while (!sigterm_seen)
		sigsuspend(&wait_mask);
	sigprocmask(SIG_SETMASK, &old, NULL);
}

bool test_go(void)
{
	return !sigterm_seen;
}

void test_deadline(clockid_t clk, int timeout_ms, struct timespec *end)
{
	clock_gettime(clk, end);
	end->tv_sec += timeout_ms / 1000;
	end->tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (end->tv_nsec >= 1000000000) {
		end->tv_sec++;
		end->tv_nsec -= 1000000000;
	}
}

long test_ms_left(clockid_t clk, const struct timespec *end)
{
	struct timespec now;

	clock_gettime(clk, &now);
	return (long)(end->tv_sec - now.tv_sec) * 1000 + (end->tv_nsec - now.tv_nsec) / 1000000;
}

int test_waitpid(pid_t pid, int *status, int timeout_ms)
{
	struct timespec end, nap = { .tv_sec = 0, .tv_nsec = 2 * 1000 * 1000 };
	int st;

	test_deadline(CLOCK_MONOTONIC, timeout_ms, &end);
	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);

		if (r == pid) {
			if (status)
				*status = st;
			return 0;
		}
		if (r < 0 && errno != EINTR)
			return -1;
		if (test_ms_left(CLOCK_MONOTONIC, &end) <= 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		nanosleep(&nap, NULL);
	}
}
