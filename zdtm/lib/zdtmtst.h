/*
 * zdtmtst.h - the zdtm test library: protocol, verdicts, options, test data.
 *
 * A test program looks like this:
 *
 *	static char *mode = "rw";
 *	TEST_OPTION(mode, string, "mapping mode", 0);
 *	TEST_NEEDS_FILENAME();
 *
 *	int main(int argc, char **argv)
 *	{
 *		test_init(argc, argv);		// options, outfile, fork; we are the child now
 *		... set up state; on error: pr_perror("what"); return 1;
 *		test_daemon();			// the starter writes the pidfile and exits 0
 *		test_waitsig();			// until SIGTERM (the harness has dumped/restored us)
 *		... verify; on mismatch: return fail("what, expected %d got %d", a, b);
 *		return pass();
 *	}
 *
 * The last line of the outfile is the verdict: "PASS", "FAIL: file:line: ..." or
 * "SKIP: file:line: ...". A skip() before test_daemon() makes the starter exit with
 * TEST_EXIT_SKIP; any other setup error makes it exit non-zero with the reason (and its
 * file:line) in the outfile.
 */
#ifndef ZDTMTST_H
#define ZDTMTST_H

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Exit status of the starter (and of the test) when the test skipped itself at setup. */
#define TEST_EXIT_SKIP 77

/* ---- options ------------------------------------------------------------------------- */

enum test_opt_type { TEST_OPT_int, TEST_OPT_uint, TEST_OPT_string, TEST_OPT_bool };

/* C types behind the option type names, checked at compile time by TEST_OPTION(). */
#define TEST_OPT_CTYPE_int int
#define TEST_OPT_CTYPE_uint unsigned int
#define TEST_OPT_CTYPE_string char *
#define TEST_OPT_CTYPE_bool bool

struct test_option {
	const char *name;
	enum test_opt_type type;
	void *ptr;
	const char *help;
	bool required;
	bool seen;
	struct test_option *next;
};

/* Add an option to the table test_init() parses (called from constructors). */
void test_register_option(struct test_option *opt);
/* Make a built-in option ("filename" or "dirname") mandatory (called from constructors). */
void test_require_option(const char *name);

/*
 * TEST_OPTION(var, type, "help", required): --var=VALUE sets the global variable `var`,
 * whose C type must match `type` (int, uint, string, bool). A bool option also accepts a
 * bare --var. A missing required option is a setup error.
 */
#define TEST_OPTION(var, opt_type, help_text, is_required)                                  \
	_Static_assert(__builtin_types_compatible_p(__typeof__(var), TEST_OPT_CTYPE_##opt_type), \
		       "TEST_OPTION(" #var "): variable is not of type " #opt_type);          \
	static struct test_option test_opt_##var = {                                         \
		.name = #var, .type = TEST_OPT_##opt_type, .ptr = &(var),                     \
		.help = (help_text), .required = (is_required),                               \
	};                                                                                   \
	__attribute__((constructor)) static void test_opt_register_##var(void)               \
	{                                                                                    \
		test_register_option(&test_opt_##var);                                        \
	}

/*
 * The test needs --filename / --dirname (its .desc then says `file: true` / `dir: true`,
 * which makes the harness pass NAME.test). The values land in test_filename/test_dirname.
 */
#define TEST_NEEDS_FILENAME()                                                               \
	__attribute__((constructor)) static void test_needs_filename(void)                   \
	{                                                                                    \
		test_require_option("filename");                                              \
	}
#define TEST_NEEDS_DIRNAME()                                                                \
	__attribute__((constructor)) static void test_needs_dirname(void)                    \
	{                                                                                    \
		test_require_option("dirname");                                               \
	}

extern char *test_filename;
extern char *test_dirname;

/* ---- protocol ------------------------------------------------------------------------ */

/*
 * Parse options, redirect stdout/stderr to the outfile and stdin from /dev/null, fork.
 * Returns in the child (the test), which is a session leader with SIGTERM caught; the
 * starter waits for test_daemon() and never returns. Exits on bad options.
 */
void test_init(int argc, char **argv);
/* Setup is done: the starter writes the pidfile and exits 0. Call once, in the test. */
void test_daemon(void);
/*
 * Sleep until SIGTERM arrives (sigsuspend; other blocked signals stay blocked). Call it
 * from the main thread; other threads must block SIGTERM, or the signal may be handled by
 * one of them while the main thread sleeps on.
 */
void test_waitsig(void);
/* True until SIGTERM arrived: the loop condition of transition tests. */
bool test_go(void);
/*
 * Wait for child `pid` with a deadline; 0 and *status filled when it was reaped,
 * -1 with errno (ETIMEDOUT when it did not exit in time).
 */
int test_waitpid(pid_t pid, int *status, int timeout_ms);

/* ---- messages and verdicts ----------------------------------------------------------- */

/* A timestamped line "HH:MM:SS.mmm PID: message" in the outfile. */
void test_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* An error line with file:line, plus ": strerror(err)" when err != 0. */
void test_log_err(const char *file, int line, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
int test_pass(void);
int test_fail(const char *file, int line, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
int test_skip(const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Verdicts return the exit status for main(): `return pass();`, `return fail(...);`. */
#define pass() test_pass()
#define fail(fmt, ...) test_fail(__FILE__, __LINE__, 0, fmt, ##__VA_ARGS__)
/* fail() with ": strerror(errno)" appended. */
#define fail_perror(fmt, ...) test_fail(__FILE__, __LINE__, errno, fmt, ##__VA_ARGS__)
/* "Unsupported here" (a missing kernel feature), distinct from a failure. */
#define skip(fmt, ...) test_skip(__FILE__, __LINE__, fmt, ##__VA_ARGS__)
#define pr_err(fmt, ...) test_log_err(__FILE__, __LINE__, 0, fmt, ##__VA_ARGS__)
#define pr_perror(fmt, ...) test_log_err(__FILE__, __LINE__, errno, fmt, ##__VA_ARGS__)

/* ---- test data ----------------------------------------------------------------------- */

/* CRC32 (IEEE 802.3, reflected 0xEDB88320) of buf, continuing from crc (start with 0). */
uint32_t crc32_update(uint32_t crc, const void *buf, size_t len);
/* Fill buf with the deterministic pseudo-random byte stream of `seed`. */
void datafill(void *buf, size_t len, uint64_t seed);
/* Offset of the first byte of buf that differs from datafill(seed), or -1 when none does. */
ssize_t datacmp(const void *buf, size_t len, uint64_t seed);
/* Fill buf from the seed *crc, then store the CRC32 of the content in *crc. */
void datagen(void *buf, size_t len, uint32_t *crc);
/* 0 when CRC32(buf) == *crc; else -1 with the actual CRC32 stored in *crc. */
int datachk(const void *buf, size_t len, uint32_t *crc);
int test_data_check(const char *file, int line, const void *buf, size_t len, uint64_t seed);
/* check_data(buf, len, seed): buf holds datafill(seed); else a FAIL line and 1. */
#define check_data(buf, len, seed) test_data_check(__FILE__, __LINE__, buf, len, seed)
/*
 * Fill data (len bytes) from seed, write it to fd and seek fd to pos: 0, or -1 after
 * logging why (a setup error). The caller keeps data to compare with after restore.
 */
int test_write_data(int fd, void *data, size_t len, uint64_t seed, off_t pos);
/*
 * Create (or truncate) the file at path with npages pages, page k holding datafill(seed(k)):
 * its O_RDWR|O_CLOEXEC fd, or -1 after logging why (a setup error).
 */
int test_create_file_pages(const char *path, unsigned int npages,
			   uint64_t (*seed)(unsigned int k));

/* ---- /proc/self views ---------------------------------------------------------------- */

struct vma_info {
	unsigned long start, end;
	char perms[5];		/* "rw-p" */
	unsigned long long pgoff; /* file offset in bytes */
	char path[256];		/* empty for anonymous memory */
	char vmflags[128];	/* "rd wr mr mw me gd ac" (smaps VmFlags) */
};

/* Describe the VMA of this process containing addr: 0, or -1 (errno ENOENT when none). */
int vma_find(const void *addr, struct vma_info *vi);
/* Whether the space-separated VmFlags list contains the two-letter flag. */
bool vma_has_flag(const struct vma_info *vi, const char *flag);
/* Whether [addr, addr+len) contains no mapping at all (mincore says ENOMEM everywhere). */
bool range_unmapped(const void *addr, size_t len);
/* A fresh read-write anonymous mapping (MAP_SHARED or MAP_PRIVATE); NULL after logging why. */
void *test_map_anon(size_t len, bool shared);
/*
 * A private anonymous mapping holding datafill(seed), then mprotect()ed to prot; NULL after
 * logging why.
 */
void *test_map_data(size_t len, uint64_t seed, int prot);
/* Map len bytes of fd from offset 0, read-write, with flags (MAP_SHARED...); NULL after logging. */
void *test_map_fd(int fd, size_t len, int flags);
int test_vma_check(const char *file, int line, const void *addr, size_t len,
		   const char *perms);
/*
 * check_vma(addr, len, "r--p"): after restore, every page of [addr, addr+len) is mapped with
 * these permissions (its VMAs may reach beyond it: merged with a like neighbour). 0 when it
 * is; else a FAIL line and -1 (a hole) or 1 (other permissions).
 */
#define check_vma(addr, len, perms) test_vma_check(__FILE__, __LINE__, addr, len, perms)

/* ---- /proc files ----------------------------------------------------------------------- */

/* Read the file at path into buf (no terminator added), up to size bytes: the length, or -1. */
ssize_t test_read_file(const char *path, char *buf, size_t size);
/* State letter and parent pid of process pid (/proc/PID/stat; either may be NULL): 0 or -1. */
int proc_stat(pid_t pid, char *state, pid_t *ppid);
/* The comm of thread tid of this process, without the newline; "" when unreadable. */
const char *task_comm(pid_t tid);
/* Whether uid and gid both exist in this user namespace (a smoke run may map root only). */
bool test_ids_mapped(uid_t uid, gid_t gid);

/* ---- child processes ------------------------------------------------------------------- */

enum test_pipe { TEST_NO_PIPE, TEST_PIPE_TO_CHILD, TEST_PIPE_FROM_CHILD };

/*
 * Fork a child that runs fn(fd, arg) and _exit()s with what it returns: its verdict, 0 when
 * all it checked was right (it says what was wrong with test_msg()). With TEST_PIPE_TO_CHILD
 * (TEST_PIPE_FROM_CHILD) an O_CLOEXEC pipe connects the two: the child gets its read (write)
 * end as fd, the parent the other end in *parent_fd, and each closes the end it does not
 * hold; with TEST_NO_PIPE, fd and *parent_fd are -1 (parent_fd may be NULL).
 * The child's pid, or -1 after logging why (a setup error).
 */
pid_t test_fork_child(enum test_pipe dir, int *parent_fd, int (*fn)(int fd, void *arg),
		      void *arg);
/* Read exactly len bytes from fd within timeout_ms: 0, or -1 with errno (ETIMEDOUT, EPIPE). */
int test_read_timeout(int fd, void *buf, size_t len, int timeout_ms);
/*
 * Read (write) exactly len bytes, waiting as long as it takes (a stream frozen across C/R
 * may stall for any time), retrying after signals: 0, or -1 with errno (EPIPE at EOF).
 */
int test_read_full(int fd, void *buf, size_t len);
int test_write_full(int fd, const void *buf, size_t len);

struct sockaddr_in;
/* A socket of `type` bound to 127.0.0.1 on a port the kernel picks (SO_REUSEADDR), its
 * address in *a; -1 with errno. */
int test_loopback_socket(int type, struct sockaddr_in *a);
/* Read strlen(want) bytes from fd: 0 when they are `want`, else -1 with errno (EPIPE at
 * EOF, EBADMSG for other bytes). */
int test_expect_bytes(int fd, const char *want);
/* SIGKILL child pid and reap it (with a deadline): the cleanup of error paths. */
void test_kill_child(pid_t pid);
/*
 * test_waitpid() that SIGKILLs and reaps a child that does not exit within timeout_ms:
 * 0 with *status filled, or -1 with errno.
 */
int test_wait_child(pid_t pid, int *status, int timeout_ms);
/* SIGTERM (the child's test_waitsig() returns and it checks its state), then test_wait_child(). */
int test_stop_child(pid_t pid, int *status, int timeout_ms);
int test_child_verdict(const char *file, int line, pid_t pid, bool stop, int timeout_ms);
/*
 * The verdict of a child forked by the test: 0 when it exits 0 within timeout_ms; else a
 * FAIL line (it is gone, did not exit - then it is killed and reaped - or failed) and 1.
 * stop_child_verdict() first sends it SIGTERM; wait_child_verdict() only waits.
 */
#define stop_child_verdict(pid, timeout_ms) \
	test_child_verdict(__FILE__, __LINE__, pid, true, timeout_ms)
#define wait_child_verdict(pid, timeout_ms) \
	test_child_verdict(__FILE__, __LINE__, pid, false, timeout_ms)

/* ---- POSIX message queues ---------------------------------------------------------------- */

#define TEST_MQ_MAX 8		/* messages a test queue holds at most */
#define TEST_MQ_MSGSIZE 128	/* the largest mq_msgsize of a test queue */

/* A queue: its limits, mode, and messages (priority, size) in the order sent; `order`
 * lists them in the order a receive gives them back. */
struct test_mq {
	char name[64];
	long maxmsg, msgsize;
	int mode;
	int count;
	unsigned int prios[TEST_MQ_MAX];
	size_t sizes[TEST_MQ_MAX];
	int order[TEST_MQ_MAX];
};

/*
 * Make queue "/zdtm-mq-PID-TAG" with q's limits and exact mode, send its messages (each
 * filled from its own seed), and return a description of it opened with `flags` (for
 * O_RDWR the maker's own); -1 after logging why.
 */
int test_mq_make(struct test_mq *q, const char *tag, int flags);
int test_mq_check_link(const char *file, int line, const struct test_mq *q, int fd,
		       bool unlinked);
int test_mq_check_fd(const char *file, int line, const struct test_mq *q, int fd, int flags,
		     long curmsgs);
int test_mq_check_messages(const char *file, int line, const struct test_mq *q, int fd);
/* After restore: fd links to the queue's name (" (deleted)" when unlinked). */
#define check_mq_link(q, fd, unlinked) test_mq_check_link(__FILE__, __LINE__, q, fd, unlinked)
/* fd's access mode and O_NONBLOCK are `flags`, the queue's limits, mode, owner are q's and
 * it holds curmsgs messages. */
#define check_mq_fd(q, fd, flags, curmsgs) \
	test_mq_check_fd(__FILE__, __LINE__, q, fd, flags, curmsgs)
/* Receiving through fd gives back every message of q in order, then nothing. */
#define check_mq_messages(q, fd) test_mq_check_messages(__FILE__, __LINE__, q, fd)

/* ---- threads --------------------------------------------------------------------------- */

/*
 * pthread_create() of a thread that starts with SIGTERM blocked (SIGTERM is the main
 * thread's, see test_waitsig()): 0, or -1 with errno.
 */
int test_thread_create(pthread_t *th, void *(*fn)(void *), void *arg);
/* pthread_join() with a deadline: 0, or -1 with errno (ETIMEDOUT). */
int test_thread_join(pthread_t th, void **ret, int timeout_ms);

/*
 * A sleeper: a thread that stays blocked in read() on a pipe through C/R until the main
 * thread wakes it. Its function sets itself up, calls test_sleeper_sleep(), then checks its
 * state after the wake-up.
 */
struct test_sleeper {
	pthread_t th;
	pid_t tid;	/* the thread's tid, set by test_sleeper_sleep() */
	int wake[2];
	int ready;
};

/* Start fn(arg) as sleeper s and wait (5 s) until it sleeps: 0, or -1 with errno. */
int test_sleeper_start(struct test_sleeper *s, void *(*fn)(void *), void *arg);
/* In the sleeper: say it is ready, block until woken. 0, or -1 with errno (EPIPE: EOF). */
int test_sleeper_sleep(struct test_sleeper *s);
/* In the main thread: wake sleeper s and join it within timeout_ms: 0, or -1 with errno. */
int test_sleeper_wake(struct test_sleeper *s, int timeout_ms);

#endif /* ZDTMTST_H */
