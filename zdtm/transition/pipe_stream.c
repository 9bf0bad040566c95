/*
 * pipe_stream (transition): a child streams numbered records through a pipe to the parent
 * without pause, so the dump catches data in flight (and a writer blocked on a full pipe).
 *
 * Every record is (sequence number, CRC of it). The parent checks that each record it
 * reads is the next one. After SIGTERM it tells the child to stop; the child then writes
 * an end record holding how many records it wrote and exits. The parent reads up to the
 * end record: nothing in flight may be lost, duplicated or changed by C/R.
 */
#include <unistd.h>

#include "zdtmtst.h"

#define END_MARK 0xffffffffu

struct rec {
	uint64_t seq;
	uint32_t crc;	/* of seq; END_MARK in the end record, whose seq is the total */
	uint32_t pad;
};

static int child_main(int wfd, void *arg)
{
	struct rec r = { 0 };

	(void)arg;

	while (test_go()) {
		r.seq++;
		r.crc = crc32_update(0, &r.seq, sizeof(r.seq));
		/* A record is below PIPE_BUF: written whole or not at all (SA_RESTART). */
		if (write(wfd, &r, sizeof(r)) != sizeof(r)) {
			test_msg("child: write: %m");
			return 1;
		}
	}
	r.crc = END_MARK;
	if (write(wfd, &r, sizeof(r)) != sizeof(r))
		return 1;
	return 0;
}

int main(int argc, char **argv)
{
	uint64_t expect = 1;
	struct rec r;
	pid_t child;
	int rfd;

	test_init(argc, argv);

	child = test_fork_child(TEST_PIPE_FROM_CHILD, &rfd, child_main, NULL);
	if (child < 0)
		return 1;

	test_daemon();

	/* Read slower than the child writes, so that the pipe is usually full. */
	while (test_go()) {
		if (test_read_full(rfd, &r, sizeof(r)))
			return fail("the stream ended early at record %llu",
				    (unsigned long long)expect);
		if (r.seq != expect || r.crc != crc32_update(0, &r.seq, sizeof(r.seq)))
			return fail("record %llu (crc %#x) where %llu was expected",
				    (unsigned long long)r.seq, r.crc, (unsigned long long)expect);
		expect++;
		if (expect % 16 == 0)
			usleep(1000);
	}

	kill(child, SIGTERM);
	for (;;) {
		if (test_read_full(rfd, &r, sizeof(r)))
			return fail("no end record after record %llu", (unsigned long long)expect);
		if (r.crc == END_MARK)
			break;
		if (r.seq != expect || r.crc != crc32_update(0, &r.seq, sizeof(r.seq)))
			return fail("record %llu (crc %#x) where %llu was expected",
				    (unsigned long long)r.seq, r.crc, (unsigned long long)expect);
		expect++;
	}
	if (wait_child_verdict(child, 10000))
		return 1;
	test_msg("%llu records streamed", (unsigned long long)r.seq);
	if (r.seq != expect - 1)
		return fail("the child wrote %llu records, the parent read %llu",
			    (unsigned long long)r.seq, (unsigned long long)expect - 1);
	return pass();
}
