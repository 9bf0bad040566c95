/*
 * POSIX message queues for the mqueue tests: one made with known limits, mode and
 * messages, and the checks of a description of it after restore.
 */
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "zdtmtst.h"

static uint64_t mq_seed(const struct test_mq *q, int i)
{
	return ((uint64_t)q->maxmsg << 32) | (unsigned int)i;
}

int test_mq_make(struct test_mq *q, const char *tag, int flags)
{
	struct mq_attr attr = { .mq_maxmsg = q->maxmsg, .mq_msgsize = q->msgsize };
	char buf[TEST_MQ_MSGSIZE];
	int fd, wr;

	snprintf(q->name, sizeof(q->name), "/zdtm-mq-%d-%s", getpid(), tag);
	wr = mq_open(q->name, O_RDWR | O_CREAT | O_EXCL, q->mode, &attr);
	/* mq_open's mode goes through the umask: set it exactly */
	if (wr < 0 || fchmod(wr, q->mode)) {
		pr_perror("mq_open %s", q->name);
		return -1;
	}
	for (int i = 0; i < q->count; i++) {
		datafill(buf, q->sizes[i], mq_seed(q, i));
		if (mq_send(wr, buf, q->sizes[i], q->prios[i])) {
			pr_perror("mq_send %s #%d", q->name, i);
			return -1;
		}
	}
	if (flags == O_RDWR)
		return wr;
	fd = mq_open(q->name, flags);
	if (fd < 0)
		pr_perror("mq_open %s again", q->name);
	mq_close(wr);
	return fd;
}

int test_mq_check_link(const char *file, int line, const struct test_mq *q, int fd,
		       bool unlinked)
{
	char path[64], want[96], link[128];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		return test_fail(file, line, errno, "readlink %s", path);
	link[n] = '\0';
	snprintf(want, sizeof(want), "%s%s", q->name, unlinked ? " (deleted)" : "");
	if (strcmp(link, want))
		return test_fail(file, line, 0, "fd %d links to %s, expected %s", fd, link, want);
	return 0;
}

int test_mq_check_fd(const char *file, int line, const struct test_mq *q, int fd, int flags,
		     long curmsgs)
{
	struct mq_attr attr;
	struct stat st;
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || (fl & (O_ACCMODE | O_NONBLOCK)) != flags)
		return test_fail(file, line, 0, "%s fd %d: flags %#o, expected %#o", q->name, fd,
				 fl, flags);
	if (mq_getattr(fd, &attr))
		return test_fail(file, line, errno, "mq_getattr %s", q->name);
	if (attr.mq_maxmsg != q->maxmsg || attr.mq_msgsize != q->msgsize ||
	    attr.mq_curmsgs != curmsgs || (attr.mq_flags & O_NONBLOCK) != (flags & O_NONBLOCK))
		return test_fail(file, line, 0, "%s fd %d: maxmsg %ld msgsize %ld curmsgs %ld "
				 "flags %#lx", q->name, fd, attr.mq_maxmsg, attr.mq_msgsize,
				 attr.mq_curmsgs, attr.mq_flags);
	if (fstat(fd, &st) || (int)(st.st_mode & 07777) != q->mode || st.st_uid != geteuid())
		return test_fail(file, line, 0, "%s: mode %#o owner %u", q->name, st.st_mode,
				 st.st_uid);
	return 0;
}

int test_mq_check_messages(const char *file, int line, const struct test_mq *q, int fd)
{
	struct timespec now;
	unsigned int prio;
	char buf[TEST_MQ_MSGSIZE];

	for (int k = 0; k < q->count; k++) {
		int i = q->order[k];
		ssize_t n = mq_receive(fd, buf, sizeof(buf), &prio);

		if (n < 0)
			return test_fail(file, line, errno, "%s: message %d is missing", q->name, i);
		if ((size_t)n != q->sizes[i] || prio != q->prios[i])
			return test_fail(file, line, 0, "%s: receive %d got %zd bytes of priority %u, "
					 "expected message %d (%zu bytes, priority %u)", q->name, k, n,
					 prio, i, q->sizes[i], q->prios[i]);
		if (datacmp(buf, n, mq_seed(q, i)) >= 0)
			return test_fail(file, line, 0, "%s: message %d changed", q->name, i);
	}
	clock_gettime(CLOCK_REALTIME, &now);
	if (mq_timedreceive(fd, buf, sizeof(buf), &prio, &now) >= 0)
		return test_fail(file, line, 0, "%s holds more than %d messages", q->name, q->count);
	return 0;
}
