/*
 * posix_mqueue_unlinked: a POSIX message queue unlinked while open, so it lives only as
 * long as the test, in every flavour (in h the mqueue filesystem is the host's: only a
 * queue without a name leaves nothing behind a killed test).
 *
 * Q "/zdtm-mq-PID-u": mode 0604, mq_maxmsg 5, mq_msgsize 64, opened O_RDWR and a second
 * time O_RDONLY|O_NONBLOCK (two descriptions), then unlinked; five messages of
 * priorities 3 0 3 9 0 and sizes 64 0 1 33 7.
 *
 * After restore: both links read "(deleted)", each description its flags, the queue its
 * limits, mode, owner and five messages, received in priority order with their content.
 */
#include <fcntl.h>
#include <mqueue.h>

#include "zdtmtst.h"

static struct test_mq Q = { "", 5, 64, 0604, 5, { 3, 0, 3, 9, 0 }, { 64, 0, 1, 33, 7 },
			    { 3, 0, 2, 1, 4 } };

int main(int argc, char **argv)
{
	int rw, rd;

	test_init(argc, argv);
	rw = test_mq_make(&Q, "u", O_RDWR);
	if (rw < 0)
		return 1;
	rd = mq_open(Q.name, O_RDONLY | O_NONBLOCK);
	if (rd < 0 || mq_unlink(Q.name)) {
		pr_perror("second open, unlink");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (check_mq_link(&Q, rw, true) || check_mq_link(&Q, rd, true) ||
	    check_mq_fd(&Q, rw, O_RDWR, Q.count) || check_mq_fd(&Q, rd, O_RDONLY | O_NONBLOCK,
							       Q.count) ||
	    check_mq_messages(&Q, rd))
		return 1;
	return pass();
}
