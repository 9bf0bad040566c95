/*
 * memload: benchmark workloads for checkpoint/restore.
 *
 *   memload anon --pidfile F --outfile O [--mib N] [--ackfile A]
 *   memload maps --pidfile F --outfile O --filename PATH [--vmas N]
 *   memload shm  --pidfile F --outfile O [--mib N]
 *   memload fds  --pidfile F --outfile O [--fds N]
 *   memload tree --pidfile F --outfile O [--procs N]
 *
 * The starter forks a worker, the worker sets up its memory, writes the
 * pidfile atomically and only then tells the starter to exit 0, so "starter
 * exited 0 and the pidfile exists" means "ready" (the zdtm convention).
 * The worker then sleeps until SIGTERM, verifies every byte it wrote, writes
 * "PASS" or "FAIL: ..." to the outfile and exits 0 or 1.
 *
 * anon: N MiB (default 1024) of private anonymous memory, every word written
 *       with a pseudo-random pattern (incompressible, never zero).  SIGUSR1
 *       rewrites the first eighth of it with a new generation and then writes
 *       the generation number to the ackfile, so a benchmark can dirty a known
 *       amount of memory between a pre-dump and a dump.
 * maps: a maps06-scale address space: --vmas (default 30000) one-page
 *       mappings of one small file, two private (written, so COW'ed: ~80 MiB)
 *       to one shared (read-only), at offsets that never let neighbours merge.
 *       The fd is closed once everything is mapped.
 * writer: as anon, then keeps rewriting its pages one after the other (wrapping
 *       around) at --rate MiB/s (default 10) until SIGTERM, each page with the next
 *       generation of its own (kept in a table of its own memory): a live
 *       program for pre-dumps. After a stop (frozen, restored) it does not catch
 *       up more than 10 ms of writes. Verifies every page against its generation.
 * shm:  N MiB (default 64) of MAP_SHARED|MAP_ANONYMOUS memory in two tasks.
 *       On SIGTERM the root verifies, writes a token into the memory and
 *       forwards SIGTERM to the child, which must see the token (one object,
 *       not two copies) and the pattern; the root exits 0 only if both pass.
 * fds:  N (default 10000) unix stream sockets in N/2 connected pairs, 8 bytes
 *       waiting in one end of each, and one epoll instance watching all N for
 *       input (the ends with data ready, with their index as epoll data).  On
 *       SIGTERM: epoll reports exactly those ends, each holds its bytes, and the
 *       pairs are still connected.
 * tree: N (default 50) tasks in a binary tree (task i is the parent of 2i+1 and
 *       2i+2), each with 64 KiB of private anonymous memory of its own, written.
 *       Ready once every task is set up.  On SIGTERM each task passes SIGTERM on
 *       to its children, checks its memory and its parent (getppid() as when it
 *       started), waits for its children and exits with the number of failed tasks
 *       in its subtree; a failed task appends its own FAIL line, and the root writes
 *       the verdict (repeating the first FAIL line), so it is the outfile's last.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PG 4096UL
#define WORDS_PER_PG (PG / sizeof(uint64_t))
#define FILE_PAGES 16UL       /* pages of the maps file */
#define SHM_TOKEN_BASE 0x5eed5eed00000000ULL
#define CHILD_DEADLINE_S 60   /* root waits this long for the shm child */
#define TREE_TASK_PAGES 16UL  /* private pages of each task of the tree */
#define TREE_MAX_PROCS 10000

static const char *pidfile, *outfile, *ackfile, *filename;
static int ready_fd = -1;  /* worker's end of the readiness pipe */
static volatile sig_atomic_t got_term, got_usr1;

/* splitmix64 of (seed, word index): cheap, incompressible, never all-zero pages. */
static inline uint64_t pattern(uint64_t seed, uint64_t idx)
{
	uint64_t z = seed * 0xD1B54A32D192ED03ULL + idx * 0x9E3779B97F4A7C15ULL + 1;

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

static void fill(uint64_t *p, size_t words, uint64_t seed, uint64_t first_idx)
{
	for (size_t i = 0; i < words; i++)
		p[i] = pattern(seed, first_idx + i);
}

/* Index of the first wrong word, or -1 when all match. */
static long check(const uint64_t *p, size_t words, uint64_t seed, uint64_t first_idx)
{
	for (size_t i = 0; i < words; i++)
		if (p[i] != pattern(seed, first_idx + i))
			return (long)i;
	return -1;
}

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, ": %s\n", strerror(errno));
	exit(2);
}

/* Append one verdict line; opened only now so no fd is open while being dumped. */
static void verdict(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	ssize_t w;
	int fd, n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	fd = open(outfile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	/* A short write shows up as a missing verdict; nothing better to do here. */
	w = write(fd, buf, n);
	(void)w;
	close(fd);
}

/* Write "text\n" to path via a temp file and rename, so readers never see half a file. */
static void write_atomic(const char *path, const char *text)
{
	char tmp[4096];
	int fd;
	size_t len = strlen(text);

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		die("open %s", tmp);
	if (write(fd, text, len) != (ssize_t)len || write(fd, "\n", 1) != 1)
		die("write %s", tmp);
	close(fd);
	if (rename(tmp, path))
		die("rename %s", tmp);
}

static void on_signal(int sig)
{
	if (sig == SIGTERM)
		got_term = 1;
	else
		got_usr1 = 1;
}

/*
 * Block SIGTERM/SIGUSR1 outside sigsuspend() so a signal is never lost between
 * the flag test and the sleep.  Returns the mask to sleep with.
 */
static sigset_t setup_signals(void)
{
	struct sigaction sa;
	sigset_t block, old;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGUSR1);
	sigprocmask(SIG_BLOCK, &block, &old);
	sigdelset(&old, SIGTERM);
	sigdelset(&old, SIGUSR1);
	return old;
}

static void *map_anon(size_t len, int flags)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die("mmap %zu bytes", len);
	return p;
}

/* ---- anon ---- */

struct anon {
	uint64_t *mem;
	size_t words;
	uint64_t gen;  /* generation of the first eighth; 0 = as first written */
};

static void anon_setup(struct anon *a, unsigned long mib)
{
	a->words = mib * (1UL << 20) / sizeof(uint64_t);
	a->mem = map_anon(mib << 20, MAP_PRIVATE);
	a->gen = 0;
	fill(a->mem, a->words, 0, 0);
}

static void anon_dirty(struct anon *a)
{
	char buf[32];

	a->gen++;
	fill(a->mem, a->words / 8, a->gen, 0);
	snprintf(buf, sizeof(buf), "%lu", (unsigned long)a->gen);
	if (ackfile)
		write_atomic(ackfile, buf);
}

static int anon_verify(struct anon *a)
{
	size_t head = a->words / 8;
	long bad = check(a->mem, head, a->gen, 0);

	if (bad < 0) {
		bad = check(a->mem + head, a->words - head, 0, head);
		if (bad >= 0)
			bad += head;
	}
	if (bad >= 0) {
		verdict("FAIL: anon word %ld (byte offset %#lx) wrong (generation %lu)",
			bad, (unsigned long)bad * 8, (unsigned long)a->gen);
		return 1;
	}
	verdict("PASS");
	return 0;
}

/* ---- writer ---- */

struct writer {
	uint64_t *mem;
	uint32_t *gen;   /* generation of each page */
	size_t pages, next;
	double pages_per_s;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void writer_setup(struct writer *w, unsigned long mib, unsigned long rate_mib)
{
	w->pages = (mib << 20) / PG;
	w->mem = map_anon(mib << 20, MAP_PRIVATE);
	w->gen = map_anon(w->pages * sizeof(uint32_t), MAP_PRIVATE);
	fill(w->mem, w->pages * WORDS_PER_PG, 0, 0);
	w->pages_per_s = (double)(rate_mib << 20) / PG;
}

static void writer_run(struct writer *w, sigset_t waitmask)
{
	const struct timespec tick = { 0, 1000 * 1000 };
	double burst = w->pages_per_s / 100 + 1, t0 = now_s(), done = 0;

	while (!got_term) {
		double due = (now_s() - t0) * w->pages_per_s;

		if (due - done > burst)
			done = due - burst;  /* was stopped: do not catch up */
		for (; done < due; done++) {
			size_t p = w->next;

			fill(w->mem + p * WORDS_PER_PG, WORDS_PER_PG, w->gen[p] + 1, p * WORDS_PER_PG);
			w->gen[p]++;
			w->next = (p + 1) % w->pages;
		}
		ppoll(NULL, 0, &tick, &waitmask);  /* SIGTERM is let in only here */
	}
}

static int writer_verify(struct writer *w)
{
	for (size_t p = 0; p < w->pages; p++) {
		long bad = check(w->mem + p * WORDS_PER_PG, WORDS_PER_PG, w->gen[p],
				 p * WORDS_PER_PG);

		if (bad >= 0) {
			verdict("FAIL: writer page %zu word %ld wrong (generation %u)", p, bad,
				w->gen[p]);
			return 1;
		}
	}
	verdict("PASS");
	return 0;
}

/* ---- maps ---- */

struct maps {
	char *base;
	unsigned long vmas;
};

static int maps_is_shared(unsigned long i) { return i % 3 == 2; }
/* Stride 7 in a 16-page file: neighbours never have consecutive offsets. */
static unsigned long maps_off(unsigned long i) { return (i * 7) % FILE_PAGES; }
static uint64_t file_seed(unsigned long page) { return (1ULL << 32) + page; }

static void maps_setup(struct maps *m, unsigned long vmas)
{
	uint64_t buf[WORDS_PER_PG];
	int fd;

	fd = open(filename, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		die("open %s", filename);
	for (unsigned long p = 0; p < FILE_PAGES; p++) {
		fill(buf, WORDS_PER_PG, file_seed(p), 0);
		if (pwrite(fd, buf, PG, p * PG) != (ssize_t)PG)
			die("pwrite %s", filename);
	}
	m->vmas = vmas;
	/* Reserve the whole range first so the mappings land side by side. */
	m->base = mmap(NULL, vmas * PG, PROT_NONE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (m->base == MAP_FAILED)
		die("reserve %lu pages", vmas);
	for (unsigned long i = 0; i < vmas; i++) {
		int shared = maps_is_shared(i);
		char *want = m->base + i * PG;
		void *p = mmap(want, PG, shared ? PROT_READ : PROT_READ | PROT_WRITE,
			       (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_FIXED,
			       fd, maps_off(i) * PG);

		if (p != want)
			die("mmap vma %lu", i);
		if (!shared)
			fill((uint64_t *)p, WORDS_PER_PG, i, 0);
	}
	close(fd);
}

/* Number of /proc/self/maps lines inside [lo, hi): catches VMAs merged or dropped. */
static long count_vmas(unsigned long lo, unsigned long hi)
{
	char line[512];
	long n = 0;
	FILE *f = fopen("/proc/self/maps", "re");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;

		if (sscanf(line, "%lx-%lx", &s, &e) == 2 && s >= lo && e <= hi)
			n++;
	}
	fclose(f);
	return n;
}

static int maps_verify(struct maps *m)
{
	unsigned long lo = (unsigned long)m->base, hi = lo + m->vmas * PG;
	long n;

	for (unsigned long i = 0; i < m->vmas; i++) {
		const uint64_t *p = (const uint64_t *)(m->base + i * PG);
		long bad = maps_is_shared(i) ? check(p, WORDS_PER_PG, file_seed(maps_off(i)), 0)
					     : check(p, WORDS_PER_PG, i, 0);

		if (bad >= 0) {
			verdict("FAIL: maps vma %lu (%s) word %ld wrong", i,
				maps_is_shared(i) ? "shared" : "private", bad);
			return 1;
		}
	}
	n = count_vmas(lo, hi);
	if (n != (long)m->vmas) {
		verdict("FAIL: maps: %ld VMAs in the range, expected %lu", n, m->vmas);
		return 1;
	}
	verdict("PASS");
	return 0;
}

/* ---- shm ---- */

struct shm {
	uint64_t *mem;
	size_t words;
	pid_t child;
};

static void sleep_until_term(sigset_t waitmask)
{
	while (!got_term)
		sigsuspend(&waitmask);
}

static void shm_child(struct shm *s, sigset_t waitmask)
{
	volatile uint64_t sum = 0;
	uint64_t token;
	long bad;

	close(ready_fd);  /* only the root reports readiness */
	/* Fault every page in, so both tasks really map the object. */
	for (size_t i = 0; i < s->words; i += WORDS_PER_PG)
		sum += s->mem[i];
	sleep_until_term(waitmask);
	token = SHM_TOKEN_BASE | (uint64_t)getppid();
	if (s->mem[0] != token)
		_exit(3);  /* the root's write is not visible: two objects */
	bad = check(s->mem + 1, s->words - 1, 0, 1);
	_exit(bad < 0 ? 0 : 4);
}

static void shm_setup(struct shm *s, unsigned long mib, sigset_t waitmask)
{
	s->words = mib * (1UL << 20) / sizeof(uint64_t);
	s->mem = map_anon(mib << 20, MAP_SHARED);
	fill(s->mem, s->words, 0, 0);
	s->child = fork();
	if (s->child < 0)
		die("fork");
	if (s->child == 0)
		shm_child(s, waitmask);
}

static int shm_verify(struct shm *s)
{
	long bad = check(s->mem, s->words, 0, 0);
	int status;

	s->mem[0] = SHM_TOKEN_BASE | (uint64_t)getpid();
	kill(s->child, SIGTERM);
	alarm(CHILD_DEADLINE_S);  /* default action ends us if the child never exits */
	if (waitpid(s->child, &status, 0) != s->child) {
		verdict("FAIL: shm: waitpid child %d: %s", s->child, strerror(errno));
		return 1;
	}
	alarm(0);
	if (bad >= 0) {
		verdict("FAIL: shm root: word %ld wrong", bad);
		return 1;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		verdict("FAIL: shm child %s (status %#x; 3 = token not seen, 4 = data wrong)",
			WIFEXITED(status) ? "failed" : "killed", status);
		return 1;
	}
	verdict("PASS");
	return 0;
}

/* ---- tree ---- */

struct tree {
	unsigned long n;       /* tasks in the whole tree */
	unsigned long idx;     /* this task's index; 0 is the root */
	pid_t parent;          /* getppid() at setup (not checked for the root) */
	pid_t child[2];
	int nchild;
	uint64_t *mem;
	int ready[2];          /* every non-root task writes one byte once set up */
};

static uint64_t tree_seed(unsigned long idx) { return (2ULL << 32) + idx; }

/* Set up task t->idx: fork its subtree first, so no child inherits this task's
 * memory, then map and write its own pages. */
static void tree_node(struct tree *t)
{
	for (unsigned long c = 2 * t->idx + 1; c <= 2 * t->idx + 2 && c < t->n; c++) {
		pid_t pid = fork();

		if (pid < 0)
			die("fork tree task %lu", c);
		if (pid == 0) {
			t->parent = getppid();
			t->idx = c;
			t->nchild = 0;
			if (ready_fd >= 0) {
				close(ready_fd);  /* only the root reports readiness */
				ready_fd = -1;
			}
			close(t->ready[0]);
			tree_node(t);
			return;
		}
		t->child[t->nchild++] = pid;
	}
	t->mem = map_anon(TREE_TASK_PAGES * PG, MAP_PRIVATE);
	fill(t->mem, TREE_TASK_PAGES * WORDS_PER_PG, tree_seed(t->idx), 0);
}

static void tree_setup(struct tree *t, unsigned long n)
{
	char buf[256];
	unsigned long got = 0;

	if (n < 1 || n > TREE_MAX_PROCS) {
		errno = EINVAL;
		die("tree: --procs %lu not in 1..%d", n, TREE_MAX_PROCS);
	}
	t->n = n;
	t->idx = 0;
	if (pipe2(t->ready, O_CLOEXEC))
		die("pipe");
	tree_node(t);
	if (t->idx) {
		if (write(t->ready[1], "r", 1) != 1)
			die("tree: ready pipe");
		close(t->ready[1]);
		return;
	}
	close(t->ready[1]);
	while (got < n - 1) {
		ssize_t r = read(t->ready[0], buf, sizeof(buf));

		if (r <= 0)
			die("tree: %lu of %lu tasks ready", got, n - 1);
		got += r;
	}
	close(t->ready[0]);
}

/* First FAIL line a task of the tree appended to the outfile, for the root's verdict. */
static void tree_first_fail(char *line, size_t len)
{
	FILE *f = fopen(outfile, "re");

	snprintf(line, len, "(no FAIL line)");
	if (!f)
		return;
	while (fgets(line, len, f))
		if (!strncmp(line, "FAIL", 4)) {
			line[strcspn(line, "\n")] = 0;
			fclose(f);
			return;
		}
	snprintf(line, len, "(no FAIL line)");
	fclose(f);
}

/* Failed tasks in this task's subtree (this one included). */
static int tree_verify(struct tree *t)
{
	long bad = check(t->mem, TREE_TASK_PAGES * WORDS_PER_PG, tree_seed(t->idx), 0);
	int failed = 0, status;

	for (int i = 0; i < t->nchild; i++)
		kill(t->child[i], SIGTERM);
	if (bad >= 0) {
		verdict("FAIL: tree task %lu (pid %d): word %ld wrong", t->idx, getpid(), bad);
		failed++;
	} else if (t->idx && getppid() != t->parent) {
		verdict("FAIL: tree task %lu (pid %d): parent is %d, was %d", t->idx, getpid(),
			getppid(), t->parent);
		failed++;
	}
	alarm(CHILD_DEADLINE_S);  /* default action ends us if a child never exits */
	for (int i = 0; i < t->nchild; i++) {
		if (waitpid(t->child[i], &status, 0) != t->child[i]) {
			verdict("FAIL: tree task %lu: waitpid child %d: %s", t->idx, t->child[i],
				strerror(errno));
			failed++;
		} else if (!WIFEXITED(status)) {
			verdict("FAIL: tree task %lu: child %d killed (status %#x)", t->idx,
				t->child[i], status);
			failed++;
		} else {
			failed += WEXITSTATUS(status);
		}
	}
	alarm(0);
	if (failed > 255)
		failed = 255;
	if (t->idx == 0) {
		char first[512];

		if (failed) {
			tree_first_fail(first, sizeof(first));
			verdict("FAIL: tree: %d of %lu tasks failed; first: %s", failed, t->n, first);
		} else {
			verdict("PASS");
		}
	}
	return failed;
}

/* ---- fds ---- */

struct fds {
	int *sk;   /* sk[2i], sk[2i+1]: pair i; data waits in sk[2i+1] */
	unsigned long n;
	int ep;
};

static void fds_setup(struct fds *f, unsigned long n)
{
	struct rlimit rl = { n + 64, n + 64 };
	struct epoll_event ev = { .events = EPOLLIN };
	uint64_t v;

	f->n = n & ~1UL;
	f->sk = calloc(f->n, sizeof(int));
	if (!f->sk || setrlimit(RLIMIT_NOFILE, &rl))
		die("fds: memory or RLIMIT_NOFILE");
	f->ep = epoll_create1(0);
	if (f->ep < 0)
		die("epoll_create1");
	for (unsigned long i = 0; i < f->n; i += 2) {
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, f->sk + i))
			die("socketpair");
		v = pattern(7, i);
		if (write(f->sk[i], &v, sizeof(v)) != sizeof(v))
			die("fds: write");
		for (unsigned long j = i; j < i + 2; j++) {
			ev.data.u64 = j;
			if (epoll_ctl(f->ep, EPOLL_CTL_ADD, f->sk[j], &ev))
				die("epoll_ctl");
		}
	}
}

static int fds_verify(struct fds *f)
{
	struct epoll_event *evs = calloc(f->n, sizeof(*evs));
	uint64_t v;
	int ready;

	if (!evs)
		die("calloc");
	ready = epoll_wait(f->ep, evs, f->n, 0);
	if (ready != (int)(f->n / 2)) {
		verdict("FAIL: epoll reports %d ready fds, expected %lu", ready, f->n / 2);
		return 1;
	}
	for (int k = 0; k < ready; k++) {
		if (evs[k].data.u64 % 2 != 1) {
			verdict("FAIL: epoll reports socket %lu, which has no data",
				(unsigned long)evs[k].data.u64);
			return 1;
		}
	}
	for (unsigned long i = 0; i < f->n; i += 2) {
		if (read(f->sk[i + 1], &v, sizeof(v)) != sizeof(v) || v != pattern(7, i)) {
			verdict("FAIL: pair %lu lost its data", i / 2);
			return 1;
		}
		if (write(f->sk[i + 1], &v, 1) != 1 || read(f->sk[i], &v, 1) != 1) {
			verdict("FAIL: pair %lu is not connected any more", i / 2);
			return 1;
		}
	}
	verdict("PASS");
	return 0;
}

/* ---- main ---- */

static void usage(void)
{
	fprintf(stderr, "usage: memload anon|maps|shm|fds|writer|tree --pidfile F --outfile O "
			"[--mib N] [--vmas N] [--fds N] [--procs N] [--filename P] [--ackfile A] "
			"[--rate MIBS]\n");
	exit(2);
}

/* Worker side of the daemon handshake: detach from the starter's session and stdio. */
static void detach(void)
{
	int fd = open("/dev/null", O_RDWR);

	if (fd < 0)
		die("open /dev/null");
	setsid();  /* own session: the shell's Ctrl-C must not reach the workload */
	dup2(fd, 0);
	dup2(fd, 1);
	dup2(fd, 2);
	if (fd > 2)
		close(fd);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "pidfile", required_argument, NULL, 'p' },
		{ "outfile", required_argument, NULL, 'o' },
		{ "mib", required_argument, NULL, 'm' },
		{ "vmas", required_argument, NULL, 'v' },
		{ "filename", required_argument, NULL, 'f' },
		{ "ackfile", required_argument, NULL, 'a' },
		{ "fds", required_argument, NULL, 'n' },
		{ "rate", required_argument, NULL, 'r' },
		{ "procs", required_argument, NULL, 't' },
		{ NULL, 0, NULL, 0 },
	};
	unsigned long mib = 0, vmas = 30000, nfds = 10000, rate = 10, nprocs = 50;
	const char *mode;
	struct anon a = { 0 };
	struct maps m = { 0 };
	struct shm s = { 0 };
	struct fds f = { 0 };
	struct writer wr = { 0 };
	struct tree t = { 0 };
	sigset_t waitmask;
	char buf[32], ready = 0;
	int pfd[2], c, rc;
	pid_t pid;

	if (argc < 2)
		usage();
	mode = argv[1];
	optind = 2;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'p': pidfile = optarg; break;
		case 'o': outfile = optarg; break;
		case 'm': mib = strtoul(optarg, NULL, 0); break;
		case 'v': vmas = strtoul(optarg, NULL, 0); break;
		case 'f': filename = optarg; break;
		case 'a': ackfile = optarg; break;
		case 'n': nfds = strtoul(optarg, NULL, 0); break;
		case 'r': rate = strtoul(optarg, NULL, 0); break;
		case 't': nprocs = strtoul(optarg, NULL, 0); break;
		default: usage();
		}
	}
	if (!pidfile || !outfile)
		usage();
	if (strcmp(mode, "anon") && strcmp(mode, "maps") && strcmp(mode, "shm") &&
	    strcmp(mode, "fds") && strcmp(mode, "writer") && strcmp(mode, "tree"))
		usage();
	if (!strcmp(mode, "maps") && (!filename || vmas == 0))
		usage();
	if (!mib)
		mib = strcmp(mode, "shm") ? 1024 : 64;

	if (pipe2(pfd, O_CLOEXEC))
		die("pipe");
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid > 0) {
		/* Starter: exit 0 only once the worker says it is ready and has closed
		 * its end (EOF), so no caller ever sees the pipe in the worker's fds. */
		close(pfd[1]);
		rc = read(pfd[0], &ready, 1) == 1 && ready == 'R' ? 0 : 1;
		if (!rc && read(pfd[0], &ready, 1) != 0)
			rc = 1;
		return rc;
	}
	close(pfd[0]);
	ready_fd = pfd[1];
	detach();
	waitmask = setup_signals();
	if (!strcmp(mode, "anon"))
		anon_setup(&a, mib);
	else if (!strcmp(mode, "maps"))
		maps_setup(&m, vmas);
	else if (!strcmp(mode, "fds"))
		fds_setup(&f, nfds);
	else if (!strcmp(mode, "writer"))
		writer_setup(&wr, mib, rate);
	else if (!strcmp(mode, "tree"))
		tree_setup(&t, nprocs);
	else
		shm_setup(&s, mib, waitmask);
	if (!strcmp(mode, "tree") && t.idx) {
		sleep_until_term(waitmask);
		return tree_verify(&t);
	}
	snprintf(buf, sizeof(buf), "%d", getpid());
	write_atomic(pidfile, buf);
	if (write(ready_fd, "R", 1) != 1)
		die("ready pipe");
	close(ready_fd);

	if (!strcmp(mode, "writer")) {
		writer_run(&wr, waitmask);
		return writer_verify(&wr);
	}
	for (;;) {
		sigsuspend(&waitmask);
		if (got_usr1) {
			got_usr1 = 0;
			if (!strcmp(mode, "anon"))
				anon_dirty(&a);
		}
		if (got_term)
			break;
	}
	if (!strcmp(mode, "anon"))
		return anon_verify(&a);
	if (!strcmp(mode, "maps"))
		return maps_verify(&m);
	if (!strcmp(mode, "fds"))
		return fds_verify(&f);
	if (!strcmp(mode, "tree"))
		return tree_verify(&t) ? 1 : 0;
	return shm_verify(&s);
}
