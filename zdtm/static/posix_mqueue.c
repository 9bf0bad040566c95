/*
 * posix_mqueue: POSIX message queues held open by the test.
 *
 * Q1 "/zdtm-mq-PID-1": linked, mode 0640, mq_maxmsg 8, mq_msgsize 128, opened O_RDWR
 *    (that fd dup'ed: one description) and a second time O_WRONLY|O_NONBLOCK (another
 *    description of the same queue); six messages of priorities 0 5 1 5 31 0 and sizes
 *    0..128, so that priority and arrival order both decide the receive order.
 * Q2 "/zdtm-mq-PID-2": opened O_RDONLY|O_NONBLOCK, then unlinked while open, mode 0600,
 *    mq_maxmsg 3, mq_msgsize 16, holding two messages.
 *
 * After restore: names (and "(deleted)"), access modes and O_NONBLOCK per description, the
 * dup still sharing its description, owner and mode, mq_maxmsg/mq_msgsize/mq_curmsgs,
 * then every message received in priority order with its priority and content.
 */
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "zdtmtst.h"

#define Q1_N 6
#define Q2_N 2

struct queue {
	char name[64];
	long maxmsg, msgsize;
	int mode;
	int count;
	unsigned int prios[Q1_N];
	size_t sizes[Q1_N];
	int order[Q1_N];	/* message indexes in receive order */
};

static struct queue Q1 = { "", 8, 128, 0640, Q1_N, { 0, 5, 1, 5, 31, 0 },
			   { 3, 0, 128, 40, 17, 100 }, { 4, 1, 3, 2, 0, 5 } };
static struct queue Q2 = { "", 3, 16, 0600, Q2_N, { 2, 7 }, { 16, 5 }, { 1, 0 } };

static uint64_t seed(const struct queue *q, int i)
{
	return ((uint64_t)q->maxmsg << 32) | (unsigned int)i;
}

static mqd_t make(struct queue *q, int n, int flags)
{
	struct mq_attr attr = { .mq_maxmsg = q->maxmsg, .mq_msgsize = q->msgsize };
	char buf[128];
	mqd_t fd, wr;

	snprintf(q->name, sizeof(q->name), "/zdtm-mq-%d-%d", getpid(), n);
	/* The mode comes through the umask: set it exactly, as mq_open may not. */
	wr = mq_open(q->name, O_RDWR | O_CREAT | O_EXCL, q->mode, &attr);
	if (wr < 0 || fchmod(wr, q->mode)) {
		pr_perror("mq_open %s", q->name);
		return -1;
	}
	for (int i = 0; i < q->count; i++) {
		datafill(buf, q->sizes[i], seed(q, i));
		if (mq_send(wr, buf, q->sizes[i], q->prios[i])) {
			pr_perror("mq_send %s #%d", q->name, i);
			return -1;
		}
	}
	if (flags == O_RDWR)
		return wr;
	fd = mq_open(q->name, flags);
	if (fd < 0) {
		pr_perror("mq_open %s again", q->name);
		return -1;
	}
	mq_close(wr);
	return fd;
}

/* The fd's link names the queue, "(deleted)" when unlinked. */
static int check_link(const struct queue *q, mqd_t fd, bool unlinked)
{
	char path[64], want[96], link[128];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		return fail_perror("readlink %s", path);
	link[n] = '\0';
	snprintf(want, sizeof(want), "%s%s", q->name, unlinked ? " (deleted)" : "");
	if (strcmp(link, want))
		return fail("fd %d links to %s, expected %s", fd, link, want);
	return 0;
}

static int check_fd(const struct queue *q, mqd_t fd, int flags, long curmsgs)
{
	struct mq_attr attr;
	struct stat st;
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || (fl & (O_ACCMODE | O_NONBLOCK)) != flags)
		return fail("%s fd %d: flags %#o, expected %#o", q->name, fd, fl, flags);
	if (mq_getattr(fd, &attr))
		return fail_perror("mq_getattr %s", q->name);
	if (attr.mq_maxmsg != q->maxmsg || attr.mq_msgsize != q->msgsize ||
	    attr.mq_curmsgs != curmsgs || (attr.mq_flags & O_NONBLOCK) != (flags & O_NONBLOCK))
		return fail("%s fd %d: maxmsg %ld msgsize %ld curmsgs %ld flags %#lx", q->name, fd,
			    attr.mq_maxmsg, attr.mq_msgsize, attr.mq_curmsgs, attr.mq_flags);
	if (fstat(fd, &st) || (int)(st.st_mode & 07777) != q->mode || st.st_uid != geteuid())
		return fail("%s: mode %#o owner %u", q->name, st.st_mode, st.st_uid);
	return 0;
}

/* Every message in receive order; then the queue is empty. */
static int check_messages(const struct queue *q, mqd_t fd)
{
	struct timespec now;
	unsigned int prio;
	char buf[128];

	for (int k = 0; k < q->count; k++) {
		int i = q->order[k];
		ssize_t n = mq_receive(fd, buf, sizeof(buf), &prio);

		if (n < 0)
			return fail_perror("%s: message %d is missing", q->name, i);
		if ((size_t)n != q->sizes[i] || prio != q->prios[i])
			return fail("%s: receive %d got %zd bytes of priority %u, expected message %d "
				    "(%zu bytes, priority %u)", q->name, k, n, prio, i, q->sizes[i],
				    q->prios[i]);
		if (datacmp(buf, n, seed(q, i)) >= 0)
			return fail("%s: message %d changed", q->name, i);
	}
	clock_gettime(CLOCK_REALTIME, &now);
	if (mq_timedreceive(fd, buf, sizeof(buf), &prio, &now) >= 0)
		return fail("%s holds more than %d messages", q->name, q->count);
	return 0;
}

int main(int argc, char **argv)
{
	mqd_t q1, q1dup, q1wr, q2;

	test_init(argc, argv);
	q1 = make(&Q1, 1, O_RDWR);
	q2 = make(&Q2, 2, O_RDONLY | O_NONBLOCK);
	if (q1 < 0 || q2 < 0)
		return 1;
	q1dup = dup(q1);
	q1wr = mq_open(Q1.name, O_WRONLY | O_NONBLOCK);
	if (q1dup < 0 || q1wr < 0 || mq_unlink(Q2.name)) {
		pr_perror("dup, second open, unlink");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (check_link(&Q1, q1, false) || check_link(&Q1, q1wr, false) ||
	    check_link(&Q2, q2, true))
		goto out;
	if (check_fd(&Q1, q1, O_RDWR, Q1_N) || check_fd(&Q1, q1wr, O_WRONLY | O_NONBLOCK, Q1_N) ||
	    check_fd(&Q2, q2, O_RDONLY | O_NONBLOCK, Q2_N))
		goto out;
	/* The dup shares q1's description: O_NONBLOCK set through it shows on q1. */
	if (fcntl(q1dup, F_SETFL, O_NONBLOCK) || !(fcntl(q1, F_GETFL) & O_NONBLOCK)) {
		fail("the dup of Q1 does not share its open file description");
		goto out;
	}
	if (check_messages(&Q1, q1) || check_messages(&Q2, q2))
		goto out;
	mq_unlink(Q1.name);
	return pass();
out:
	mq_unlink(Q1.name);
	return 1;
}
