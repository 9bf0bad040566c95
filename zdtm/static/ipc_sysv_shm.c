/*
 * ipc_sysv_shm: SysV shared memory segments of the test's ipc namespace.
 *
 * A: a key of its own, 5 pages and 100 bytes (a size that is not a page multiple), mode
 *    0640, its owner changed with IPC_SET (where the user namespace maps the ids), pages
 *    0, 2 and the partial last one written, 1 and 3 never touched (holes); attached twice,
 *    read-write and SHM_RDONLY, and a forked child inherits both attaches and writes
 *    page 3 through its own.
 * B: a key of its own, 3 pages, mode 0600, filled, then detached: attached by nobody.
 * C: IPC_PRIVATE, attached by the test and its child, then marked for removal (IPC_RMID)
 *    while attached: key 0, SHM_DEST, gone with its last attach.
 *
 * After restore: every id, key, mode (SHM_DEST too), owner, creator, size and attach
 * count as before, the content of each segment (holes still zero), the attaches at their
 * addresses with their permissions, and C removed once both detach.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <unistd.h>

#include "zdtmtst.h"

#define PAGE 4096
#define A_SIZE (5 * PAGE + 100)
#define B_SIZE (3 * PAGE)
#define C_SIZE (2 * PAGE)
#define OWNER_UID 1234
#define OWNER_GID 2345

struct seg {
	const char *name;
	key_t key;
	int id;
	size_t size;
	int mode;	/* shm_perm.mode as the kernel keeps it (SHM_DEST included) */
	uid_t uid;
	gid_t gid;
	unsigned long nattch;
};

static struct seg A = { "A", 0, -1, A_SIZE, 0640, 0, 0, 4 };
static struct seg B = { "B", 0, -1, B_SIZE, 0600, 0, 0, 0 };
static struct seg C = { "C", IPC_PRIVATE, -1, C_SIZE, 0600 | SHM_DEST, 0, 0, 2 };
static char *a_rw, *a_ro, *c_rw;
static uid_t creator_uid;
static gid_t creator_gid;

/* Seeds of the written parts: one per page, holes have none. */
static uint64_t seed(const struct seg *s, unsigned int page)
{
	return ((uint64_t)s->name[0] << 32) | page;
}

/* Pages of A the test writes; page 3 is the child's, page 1 a hole. */
static bool a_by_test(unsigned int page)
{
	return page != 1 && page != 3;
}

static bool a_written(unsigned int page)
{
	return page != 1;
}

static size_t page_len(const struct seg *s, unsigned int page)
{
	size_t left = s->size - (size_t)page * PAGE;

	return left < PAGE ? left : PAGE;
}

static int make(struct seg *s, int key_no)
{
	struct shmid_ds ds;

	if (key_no)	/* 0: IPC_PRIVATE */
		s->key = 0x40000000 | (getpid() << 4) | key_no;
	s->id = shmget(s->key, s->size, IPC_CREAT | IPC_EXCL | (s->mode & 0777));
	if (s->id < 0) {
		pr_perror("shmget %s", s->name);
		return -1;
	}
	s->uid = creator_uid;
	s->gid = creator_gid;
	if (s == &A && test_ids_mapped(OWNER_UID, OWNER_GID)) {
		if (shmctl(s->id, IPC_STAT, &ds)) {
			pr_perror("IPC_STAT %s", s->name);
			return -1;
		}
		ds.shm_perm.uid = s->uid = OWNER_UID;
		ds.shm_perm.gid = s->gid = OWNER_GID;
		if (shmctl(s->id, IPC_SET, &ds)) {
			pr_perror("IPC_SET %s", s->name);
			return -1;
		}
	}
	return 0;
}

static char *attach(struct seg *s, int flags)
{
	char *p = shmat(s->id, NULL, flags);

	if (p == (void *)-1) {
		pr_perror("shmat %s", s->name);
		return NULL;
	}
	return p;
}

static void fill(const struct seg *s, char *p, bool (*written)(unsigned int))
{
	for (unsigned int pg = 0; pg * PAGE < s->size; pg++)
		if (!written || written(pg))
			datafill(p + pg * PAGE, page_len(s, pg), seed(s, pg));
}

/* Every page of the segment as written (a hole: zeros). */
static int check_content(const struct seg *s, const char *p, bool (*written)(unsigned int))
{
	for (unsigned int pg = 0; pg * PAGE < s->size; pg++) {
		const char *q = p + pg * PAGE;
		size_t len = page_len(s, pg);

		if (!written || written(pg)) {
			if (datacmp(q, len, seed(s, pg)) >= 0)
				return fail("segment %s: page %u changed", s->name, pg);
			continue;
		}
		for (size_t i = 0; i < len; i++)
			if (q[i])
				return fail("segment %s: hole page %u holds data at %zu", s->name, pg, i);
	}
	return 0;
}

static int check_seg(const struct seg *s)
{
	struct shmid_ds ds;

	if (shmctl(s->id, IPC_STAT, &ds))
		return fail_perror("segment %s (id %d) is gone", s->name, s->id);
	if (s->key != IPC_PRIVATE && shmget(s->key, 0, 0) != s->id)
		return fail("segment %s: key %#x names id %d, expected %d", s->name, s->key,
			    shmget(s->key, 0, 0), s->id);
	if (ds.shm_perm.__key != (s->mode & SHM_DEST ? IPC_PRIVATE : s->key))
		return fail("segment %s: key %#x", s->name, ds.shm_perm.__key);
	if ((int)(ds.shm_perm.mode & (0777 | SHM_DEST | SHM_LOCKED)) != s->mode)
		return fail("segment %s: mode %#o, expected %#o", s->name, ds.shm_perm.mode, s->mode);
	if (ds.shm_perm.uid != s->uid || ds.shm_perm.gid != s->gid)
		return fail("segment %s: owner %u:%u, expected %u:%u", s->name, ds.shm_perm.uid,
			    ds.shm_perm.gid, s->uid, s->gid);
	if (ds.shm_perm.cuid != creator_uid || ds.shm_perm.cgid != creator_gid)
		return fail("segment %s: creator %u:%u, expected %u:%u", s->name, ds.shm_perm.cuid,
			    ds.shm_perm.cgid, creator_uid, creator_gid);
	if (ds.shm_segsz != s->size)
		return fail("segment %s: size %zu, expected %zu", s->name, ds.shm_segsz, s->size);
	if (ds.shm_nattch != s->nattch)
		return fail("segment %s: %lu attaches, expected %lu", s->name, ds.shm_nattch,
			    s->nattch);
	return 0;
}

/* An attach of s at p as before: a SysV mapping of the whole segment with these perms. */
static int check_attach(const struct seg *s, const char *p, const char *perms)
{
	struct vma_info vi;
	char want[32];

	if (vma_find(p, &vi))
		return fail("segment %s: nothing mapped at %p", s->name, p);
	snprintf(want, sizeof(want), "/SYSV%08x", s->mode & SHM_DEST ? 0 : s->key);
	if (strncmp(vi.path, want, strlen(want)) || vi.start != (unsigned long)p || vi.pgoff)
		return fail("segment %s: %p maps %s at %#lx offset %#llx", s->name, p, vi.path,
			    vi.start, vi.pgoff);
	return check_vma((void *)p, s->size, perms) ? 1 : 0;
}

static int child_main(int fd, void *arg)
{
	(void)fd;
	(void)arg;
	datafill(a_rw + 3 * PAGE, PAGE, seed(&A, 3));
	test_waitsig();
	if (check_attach(&A, a_rw, "rw-s") || check_attach(&A, a_ro, "r--s") ||
	    check_attach(&C, c_rw, "rw-s"))
		return 1;
	if (datacmp(a_ro + 3 * PAGE, PAGE, seed(&A, 3)) >= 0) {
		test_msg("child: page 3 of A changed");
		return 1;
	}
	if (shmdt(c_rw)) {
		test_msg("child: shmdt C: %m");
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct shmid_ds ds;
	char *b;
	pid_t child;

	test_init(argc, argv);
	creator_uid = geteuid();
	creator_gid = getegid();
	signal(SIGPIPE, SIG_IGN);

	if (make(&A, 1) || make(&B, 2) || make(&C, 0))
		return 1;
	a_rw = attach(&A, 0);
	a_ro = attach(&A, SHM_RDONLY);
	b = attach(&B, 0);
	c_rw = attach(&C, 0);
	if (!a_rw || !a_ro || !b || !c_rw)
		return 1;
	fill(&A, a_rw, a_by_test);
	fill(&B, b, NULL);
	fill(&C, c_rw, NULL);
	if (shmdt(b)) {
		pr_perror("shmdt B");
		return 1;
	}
	child = test_fork_child(TEST_NO_PIPE, NULL, child_main, NULL);
	if (child < 0)
		return 1;
	if (shmctl(C.id, IPC_RMID, NULL)) {
		pr_perror("IPC_RMID C");
		test_kill_child(child);
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (check_seg(&A) || check_seg(&B) || check_seg(&C) ||
	    check_attach(&A, a_rw, "rw-s") || check_attach(&A, a_ro, "r--s") ||
	    check_attach(&C, c_rw, "rw-s") || check_content(&A, a_ro, a_written) ||
	    check_content(&C, c_rw, NULL)) {
		test_kill_child(child);
		return 1;
	}
	if (mprotect(a_ro, A_SIZE, PROT_READ | PROT_WRITE) == 0 || errno != EACCES) {
		test_kill_child(child);
		return fail("the SHM_RDONLY attach of A can be made writable");
	}
	b = attach(&B, SHM_RDONLY);
	if (!b || check_content(&B, b, NULL) || shmdt(b)) {
		test_kill_child(child);
		return b ? 1 : fail("B cannot be attached");
	}
	if (stop_child_verdict(child, 10000))
		return 1;
	/* The child detached C: the last attach goes, and so does C. */
	if (shmdt(c_rw))
		return fail_perror("shmdt C");
	if (shmctl(C.id, IPC_STAT, &ds) == 0)
		return fail("segment C outlived its last attach");
	if (shmdt(a_rw) || shmdt(a_ro) || shmctl(A.id, IPC_RMID, NULL) ||
	    shmctl(B.id, IPC_RMID, NULL))
		return fail_perror("removing A and B");
	return pass();
}
