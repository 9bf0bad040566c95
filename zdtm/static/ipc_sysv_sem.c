/*
 * ipc_sysv_sem: SysV semaphore sets of the test's ipc namespace.
 *
 * S1: a key of its own, 5 semaphores, mode 0660, its owner changed with IPC_SET (where the
 *     user namespace maps the ids): #0 never touched (value 0, no last pid), #1 = 1 and
 *     #3 = 32767 (the maximum) by SETVAL, #2 = 7 by semop (so otime is set), #4 = 3 by
 *     SETVAL from a child that has exited since (its pid is gone).
 * S2: IPC_PRIVATE, 2 semaphores, mode 0600: SETALL {5, 0} by the test, then #1 = 9 by
 *     SETVAL from a child that lives on.
 *
 * After restore: ids, keys, modes, owners, creators, sizes, every value, every last pid
 * (GETPID: the test, the live child, the gone child's pid, none) and whether otime was
 * set; the semaphores still count.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtmtst.h"

#define OWNER_UID 1234
#define OWNER_GID 2345
#define S1_N 5
#define S2_N 2

union semun {
	int val;
	struct semid_ds *buf;
	unsigned short *array;
};

struct set {
	const char *name;
	key_t key;
	int id;
	int nsems;
	int mode;
	uid_t uid;
	gid_t gid;
	unsigned short values[S1_N];
	pid_t pids[S1_N];
	bool otime;
};

static struct set S1 = { "S1", 0, -1, S1_N, 0660, 0, 0, { 0, 1, 7, 32767, 3 }, { 0 }, true };
static struct set S2 = { "S2", IPC_PRIVATE, -1, S2_N, 0600, 0, 0, { 5, 9 }, { 0 }, false };
static uid_t creator_uid;
static gid_t creator_gid;

static int make(struct set *s, int key_no, bool chown)
{
	struct semid_ds ds;
	union semun arg = { .buf = &ds };

	if (key_no)	/* 0: IPC_PRIVATE */
		s->key = 0x40000000 | (getpid() << 4) | key_no;
	s->id = semget(s->key, s->nsems, IPC_CREAT | IPC_EXCL | s->mode);
	if (s->id < 0) {
		pr_perror("semget %s", s->name);
		return -1;
	}
	s->uid = creator_uid;
	s->gid = creator_gid;
	if (!chown)
		return 0;
	if (semctl(s->id, 0, IPC_STAT, arg)) {
		pr_perror("IPC_STAT %s", s->name);
		return -1;
	}
	ds.sem_perm.uid = s->uid = OWNER_UID;
	ds.sem_perm.gid = s->gid = OWNER_GID;
	if (semctl(s->id, 0, IPC_SET, arg)) {
		pr_perror("IPC_SET %s", s->name);
		return -1;
	}
	return 0;
}

static int setval(struct set *s, int num)
{
	union semun arg = { .val = s->values[num] };

	if (semctl(s->id, num, SETVAL, arg)) {
		pr_perror("SETVAL %s #%d", s->name, num);
		return -1;
	}
	s->pids[num] = getpid();
	return 0;
}

/* A child that sets S1 #4 and exits: the semaphore's last pid is then gone. */
static pid_t gone_child(void)
{
	int status;
	pid_t pid = fork();

	if (pid < 0) {
		pr_perror("fork");
		return -1;
	}
	if (pid == 0)
		_exit(setval(&S1, 4) ? 1 : 0);
	if (test_wait_child(pid, &status, 10000) || !WIFEXITED(status) || WEXITSTATUS(status)) {
		pr_err("the child setting S1 #4 failed (status %#x)", status);
		return -1;
	}
	return pid;
}

/* The live child: sets S2 #1, says so, waits for SIGTERM. */
static int live_child(int wfd, void *arg)
{
	(void)arg;
	if (setval(&S2, 1) || write(wfd, "s", 1) != 1)
		return 1;
	test_waitsig();
	return 0;
}

static int check_set(const struct set *s)
{
	struct semid_ds ds;
	union semun arg = { .buf = &ds };
	unsigned short vals[S1_N];

	if (semctl(s->id, 0, IPC_STAT, arg))
		return fail_perror("set %s (id %d) is gone", s->name, s->id);
	if (s->key != IPC_PRIVATE && semget(s->key, 0, 0) != s->id)
		return fail("set %s: key %#x names another id", s->name, s->key);
	if (ds.sem_perm.__key != s->key || (int)(ds.sem_perm.mode & 0777) != s->mode)
		return fail("set %s: key %#x mode %#o, expected %#x %#o", s->name,
			    ds.sem_perm.__key, ds.sem_perm.mode, s->key, s->mode);
	if (ds.sem_perm.uid != s->uid || ds.sem_perm.gid != s->gid ||
	    ds.sem_perm.cuid != creator_uid || ds.sem_perm.cgid != creator_gid)
		return fail("set %s: owner %u:%u creator %u:%u", s->name, ds.sem_perm.uid,
			    ds.sem_perm.gid, ds.sem_perm.cuid, ds.sem_perm.cgid);
	if ((int)ds.sem_nsems != s->nsems)
		return fail("set %s: %lu semaphores, expected %d", s->name, ds.sem_nsems, s->nsems);
	if ((ds.sem_otime != 0) != s->otime)
		return fail("set %s: otime %ld", s->name, (long)ds.sem_otime);
	arg.array = vals;
	if (semctl(s->id, 0, GETALL, arg))
		return fail_perror("GETALL %s", s->name);
	for (int i = 0; i < s->nsems; i++) {
		int pid = semctl(s->id, i, GETPID);

		if (vals[i] != s->values[i])
			return fail("set %s #%d: value %u, expected %u", s->name, i, vals[i],
				    s->values[i]);
		if (pid != s->pids[i])
			return fail("set %s #%d: last pid %d, expected %d", s->name, i, pid,
				    s->pids[i]);
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct sembuf op = { .sem_num = 2, .sem_op = 7 };
	union semun arg = { .array = S2.values };
	unsigned short first = S2.values[1];
	pid_t child, gone;
	int rfd;
	char c;

	test_init(argc, argv);
	creator_uid = geteuid();
	creator_gid = getegid();
	signal(SIGPIPE, SIG_IGN);

	if (make(&S1, 1, test_ids_mapped(OWNER_UID, OWNER_GID)) || make(&S2, 0, false))
		return 1;
	if (setval(&S1, 1) || setval(&S1, 3))
		return 1;
	if (semop(S1.id, &op, 1)) {
		pr_perror("semop S1 #2");
		return 1;
	}
	S1.pids[2] = getpid();
	S2.values[1] = 0;
	if (semctl(S2.id, 0, SETALL, arg)) {
		pr_perror("SETALL S2");
		return 1;
	}
	S2.values[1] = first;
	S2.pids[0] = S2.pids[1] = getpid();
	gone = gone_child();
	if (gone < 0)
		return 1;
	S1.pids[4] = gone;
	child = test_fork_child(TEST_PIPE_FROM_CHILD, &rfd, live_child, NULL);
	if (child < 0)
		return 1;
	if (test_read_timeout(rfd, &c, 1, 10000)) {
		pr_perror("the live child did not set S2 #1");
		test_kill_child(child);
		return 1;
	}
	S2.pids[1] = child;

	test_daemon();
	test_waitsig();

	if (check_set(&S1) || check_set(&S2)) {
		test_kill_child(child);
		return 1;
	}
	if (stop_child_verdict(child, 10000))
		return 1;
	/* Still a semaphore: #1 of S1 can be taken once. */
	op = (struct sembuf){ .sem_num = 1, .sem_op = -1, .sem_flg = IPC_NOWAIT };
	if (semop(S1.id, &op, 1))
		return fail_perror("taking S1 #1");
	if (semop(S1.id, &op, 1) == 0 || errno != EAGAIN)
		return fail("S1 #1 could be taken twice");
	if (semctl(S1.id, 0, IPC_RMID) || semctl(S2.id, 0, IPC_RMID))
		return fail_perror("removing the sets");
	return pass();
}
