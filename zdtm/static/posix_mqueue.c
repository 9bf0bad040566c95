/*
 * posix_mqueue: POSIX message queues held open by the test, in its own ipc namespace
 * (flavours ns and uns: a linked queue of the host's would outlive a killed test).
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
#include <unistd.h>

#include "zdtmtst.h"

static struct test_mq Q1 = { "", 8, 128, 0640, 6, { 0, 5, 1, 5, 31, 0 },
			     { 3, 0, 128, 40, 17, 100 }, { 4, 1, 3, 2, 0, 5 } };
static struct test_mq Q2 = { "", 3, 16, 0600, 2, { 2, 7 }, { 16, 5 }, { 1, 0 } };

int main(int argc, char **argv)
{
	int q1, q1dup, q1wr, q2;

	test_init(argc, argv);
	q1 = test_mq_make(&Q1, "1", O_RDWR);
	q2 = test_mq_make(&Q2, "2", O_RDONLY | O_NONBLOCK);
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

	if (check_mq_link(&Q1, q1, false) || check_mq_link(&Q1, q1wr, false) ||
	    check_mq_link(&Q2, q2, true) || check_mq_fd(&Q1, q1, O_RDWR, Q1.count) ||
	    check_mq_fd(&Q1, q1wr, O_WRONLY | O_NONBLOCK, Q1.count) ||
	    check_mq_fd(&Q2, q2, O_RDONLY | O_NONBLOCK, Q2.count))
		goto out;
	/* The dup shares q1's description: O_NONBLOCK set through it shows on q1. */
	if (fcntl(q1dup, F_SETFL, O_NONBLOCK) || !(fcntl(q1, F_GETFL) & O_NONBLOCK)) {
		fail("the dup of Q1 does not share its open file description");
		goto out;
	}
	if (check_mq_messages(&Q1, q1) || check_mq_messages(&Q2, q2))
		goto out;
	mq_unlink(Q1.name);
	return pass();
out:
	mq_unlink(Q1.name);
	return 1;
}
