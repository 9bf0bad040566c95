/*
 * ipc_sysv_msg: SysV message queues of the test's ipc namespace, and its limits.
 *
 * The namespace's kernel/msgmax and kernel/msgmnb are raised to 10000 and 20000 (its
 * own sysctls, restored with it).
 * Q1: a key of its own, mode 0620, its owner changed with IPC_SET (where the user
 *     namespace maps the ids), msg_qbytes lowered to 3000, five messages of types
 *     1 5 2 5 7 and sizes 0 1 100 1000 1500.
 * Q2: IPC_PRIVATE, made while msgmnb was 65536 (so its msg_qbytes is), 60 messages of
 *     types 1..3 and sizes 0..1711, and one of 9000 bytes (above the default msgmax).
 * Q3: a key of its own, empty.
 *
 * After restore: ids, keys, modes, owners, creators, msg_qbytes, message counts and bytes,
 * the sysctls, then every message received in queue order with its type and content; a
 * receive by type still picks the first message of that type.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <unistd.h>

#include "zdtmtst.h"

#define OWNER_UID 1234
#define OWNER_GID 2345
#define MSGMAX 10000
#define MSGMNB 20000
#define Q2_QBYTES 65536
#define Q2_SMALL 60
#define BIG 9000

struct queue {
	const char *name;
	key_t key;
	int id;
	int mode;
	uid_t uid;
	gid_t gid;
	unsigned long qbytes;
	int count;
	long types[Q2_SMALL + 1];
	size_t sizes[Q2_SMALL + 1];
};

static struct queue Q1 = { "Q1", 0, -1, 0620, 0, 0, 3000, 5, { 1, 5, 2, 5, 7 },
			   { 0, 1, 100, 1000, 1500 } };
static struct queue Q2 = { "Q2", IPC_PRIVATE, -1, 0600, 0, 0, Q2_QBYTES, 0, { 0 }, { 0 } };
static struct queue Q3 = { "Q3", 0, -1, 0644, 0, 0, MSGMNB, 0, { 0 }, { 0 } };
static uid_t creator_uid;
static gid_t creator_gid;
static struct {
	long mtype;
	char mtext[BIG];
} msg;

static int write_sysctl(const char *name, long value)
{
	char path[64];
	FILE *f;

	snprintf(path, sizeof(path), "/proc/sys/kernel/%s", name);
	f = fopen(path, "w");
	if (!f || fprintf(f, "%ld\n", value) < 0 || fclose(f)) {
		pr_perror("write %s", path);
		return -1;
	}
	return 0;
}

static long read_sysctl(const char *name)
{
	char path[64], buf[32];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/sys/kernel/%s", name);
	n = test_read_file(path, buf, sizeof(buf) - 1);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	return atol(buf);
}

static uint64_t seed(const struct queue *q, int i)
{
	return ((uint64_t)q->name[1] << 32) | (unsigned int)i;
}

/* IPC_SET: msg_qbytes as wanted (lowering needs no privilege), the owner if asked. */
static int set_attrs(struct queue *q, bool chown)
{
	struct msqid_ds ds;

	if (msgctl(q->id, IPC_STAT, &ds)) {
		pr_perror("IPC_STAT %s", q->name);
		return -1;
	}
	if (chown) {
		ds.msg_perm.uid = q->uid = OWNER_UID;
		ds.msg_perm.gid = q->gid = OWNER_GID;
	}
	ds.msg_qbytes = q->qbytes;
	if (msgctl(q->id, IPC_SET, &ds)) {
		pr_perror("IPC_SET %s", q->name);
		return -1;
	}
	return 0;
}

static int make(struct queue *q, int key_no, bool chown)
{
	if (key_no)	/* 0: IPC_PRIVATE */
		q->key = 0x40000000 | (getpid() << 4) | key_no;
	q->id = msgget(q->key, IPC_CREAT | IPC_EXCL | q->mode);
	if (q->id < 0) {
		pr_perror("msgget %s", q->name);
		return -1;
	}
	q->uid = creator_uid;
	q->gid = creator_gid;
	if (set_attrs(q, chown))
		return -1;
	for (int i = 0; i < q->count; i++) {
		msg.mtype = q->types[i];
		datafill(msg.mtext, q->sizes[i], seed(q, i));
		if (msgsnd(q->id, &msg, q->sizes[i], IPC_NOWAIT)) {
			pr_perror("msgsnd %s #%d", q->name, i);
			return -1;
		}
	}
	return 0;
}

static int check_queue(const struct queue *q)
{
	struct msqid_ds ds;
	unsigned long bytes = 0;

	for (int i = 0; i < q->count; i++)
		bytes += q->sizes[i];
	if (msgctl(q->id, IPC_STAT, &ds))
		return fail_perror("queue %s (id %d) is gone", q->name, q->id);
	if (q->key != IPC_PRIVATE && msgget(q->key, 0) != q->id)
		return fail("queue %s: key %#x names another id", q->name, q->key);
	if (ds.msg_perm.__key != q->key || (int)(ds.msg_perm.mode & 0777) != q->mode)
		return fail("queue %s: key %#x mode %#o, expected %#x %#o", q->name,
			    ds.msg_perm.__key, ds.msg_perm.mode, q->key, q->mode);
	if (ds.msg_perm.uid != q->uid || ds.msg_perm.gid != q->gid ||
	    ds.msg_perm.cuid != creator_uid || ds.msg_perm.cgid != creator_gid)
		return fail("queue %s: owner %u:%u creator %u:%u", q->name, ds.msg_perm.uid,
			    ds.msg_perm.gid, ds.msg_perm.cuid, ds.msg_perm.cgid);
	if (ds.msg_qbytes != q->qbytes)
		return fail("queue %s: msg_qbytes %lu, expected %lu", q->name, ds.msg_qbytes,
			    q->qbytes);
	if ((int)ds.msg_qnum != q->count || ds.__msg_cbytes != bytes)
		return fail("queue %s: %lu messages of %lu bytes, expected %d of %lu", q->name,
			    ds.msg_qnum, ds.__msg_cbytes, q->count, bytes);
	return 0;
}

/* Receive message i of q (type 0: the first in the queue) and compare it. */
static int check_message(const struct queue *q, long type, int i)
{
	ssize_t n = msgrcv(q->id, &msg, sizeof(msg.mtext), type, IPC_NOWAIT);

	if (n < 0)
		return fail_perror("queue %s: message %d is missing", q->name, i);
	if (msg.mtype != q->types[i] || (size_t)n != q->sizes[i])
		return fail("queue %s: message %d has type %ld and %zd bytes, expected %ld and %zu",
			    q->name, i, msg.mtype, n, q->types[i], q->sizes[i]);
	if (datacmp(msg.mtext, n, seed(q, i)) >= 0)
		return fail("queue %s: message %d changed", q->name, i);
	return 0;
}

int main(int argc, char **argv)
{
	bool chown;

	test_init(argc, argv);
	creator_uid = geteuid();
	creator_gid = getegid();
	chown = test_ids_mapped(OWNER_UID, OWNER_GID);
	for (int i = 0; i < Q2_SMALL; i++) {
		Q2.types[i] = 1 + i % 3;
		Q2.sizes[i] = (size_t)i * 29;
	}
	Q2.types[Q2_SMALL] = 4;
	Q2.sizes[Q2_SMALL] = BIG;
	Q2.count = Q2_SMALL + 1;

	if (write_sysctl("msgmax", MSGMAX) || write_sysctl("msgmnb", Q2_QBYTES))
		return 1;
	if (make(&Q2, 0, false) || write_sysctl("msgmnb", MSGMNB) || make(&Q1, 1, chown) ||
	    make(&Q3, 3, false))
		return 1;

	test_daemon();
	test_waitsig();

	if (read_sysctl("msgmax") != MSGMAX || read_sysctl("msgmnb") != MSGMNB)
		return fail("msgmax %ld msgmnb %ld, expected %d %d", read_sysctl("msgmax"),
			    read_sysctl("msgmnb"), MSGMAX, MSGMNB);
	if (check_queue(&Q1) || check_queue(&Q2) || check_queue(&Q3))
		return 1;
	/* By type: the first message of type 5 is Q1's #1, then #3; the rest in order. */
	if (check_message(&Q1, 5, 1) || check_message(&Q1, 5, 3) || check_message(&Q1, 0, 0) ||
	    check_message(&Q1, 0, 2) || check_message(&Q1, 0, 4))
		return 1;
	for (int i = 0; i < Q2.count; i++)
		if (check_message(&Q2, 0, i))
			return 1;
	if (msgrcv(Q3.id, &msg, sizeof(msg.mtext), 0, IPC_NOWAIT) >= 0 || errno != ENOMSG)
		return fail("queue Q3 is not empty");
	if (msgctl(Q1.id, IPC_RMID, NULL) || msgctl(Q2.id, IPC_RMID, NULL) ||
	    msgctl(Q3.id, IPC_RMID, NULL))
		return fail_perror("removing the queues");
	return pass();
}
