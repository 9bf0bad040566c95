/*
 * inotify_queued: an inotify group with an event queued and not yet read. No call puts an
 * event back into a new queue, so the dump must refuse it (crfail), naming the queued
 * events, and leave the task running unchanged: the event is still there afterwards,
 * under its watch descriptor, and the watch still reports new ones. An engine whose dump
 * succeeds fails the run; its restore is still judged once, and then this test names the
 * event the dump lost (CRIU 4.2: "The %#08x inotify events will be dropped").
 */
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_FILENAME();

/* The next event of fd is (wd, mask); what names the event for the verdict. */
static int expect(int fd, int wd, uint32_t mask, const char *what)
{
	char buf[sizeof(struct inotify_event) + NAME_MAX + 1];
	struct pollfd p = { .fd = fd, .events = POLLIN };
	struct inotify_event ev;
	int n = poll(&p, 1, 1000);

	if (n == 0)
		return fail("%s: no event for wd %d, the queue stayed empty for 1 s", what, wd);
	if (n != 1 || read(fd, buf, sizeof(buf)) < (ssize_t)sizeof(ev))
		return fail_perror("%s: reading the event of wd %d", what, wd);
	memcpy(&ev, buf, sizeof(ev));
	if (ev.wd != wd || ev.mask != mask)
		return fail("%s: event wd %d mask %#x, expected wd %d mask %#x", what, ev.wd,
			    ev.mask, wd, mask);
	return 0;
}

int main(int argc, char **argv)
{
	int in, wd, fd;

	test_init(argc, argv);
	fd = open(test_filename, O_CREAT | O_WRONLY, 0600);
	in = inotify_init1(IN_NONBLOCK);
	if (fd < 0 || in < 0) {
		pr_perror("open/inotify_init1");
		return 1;
	}
	wd = inotify_add_watch(in, test_filename, IN_MODIFY);
	if (wd < 0 || write(fd, "x", 1) != 1) {
		pr_perror("watch and modify %s", test_filename);
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (expect(in, wd, IN_MODIFY, "the event queued before the dump"))
		return 1;
	if (write(fd, "y", 1) != 1)
		return fail_perror("write %s", test_filename);
	if (expect(in, wd, IN_MODIFY, "a new event after the dump"))
		return 1;
	return pass();
}
