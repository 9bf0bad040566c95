/*
 * Flag pre-dump-notify: with ZDTM_NOTIFY_FDIN/FDOUT set, the harness writes an int to our
 * fd FDIN after each pre-dump and waits for one back on fd FDOUT.  PEER_MIN_NOTIFY=N makes
 * the test fail unless it was notified at least N times.
 */
#include <poll.h>
#include <stdlib.h>
#include <unistd.h>

#include "peerlib.h"

static int on_fd(const char *var, int end)
{
	const char *v = getenv(var);
	int p[2], fd;

	if (!v)
		return -1;
	fd = atoi(v);
	if (pipe(p) || dup2(p[end], fd) < 0)
		peer_fail("pipe for %s", var);
	/* the other end stays open: no POLLHUP/SIGPIPE between the harness's visits */
	close(p[end]);
	return fd;
}

int main(int argc, char **argv)
{
	const char *min = getenv("PEER_MIN_NOTIFY");
	int fdin, fdout, count = 0, msg;
	struct pollfd pfd;

	peer_init(argc, argv, NULL);
	fdin = on_fd("ZDTM_NOTIFY_FDIN", 0);
	fdout = on_fd("ZDTM_NOTIFY_FDOUT", 1);
	peer_ready();
	while (!peer_term_requested()) {
		pfd.fd = fdin;
		pfd.events = POLLIN;
		if (fdin < 0 || poll(&pfd, 1, 100) <= 0 || !(pfd.revents & POLLIN))
			continue;
		if (read(fdin, &msg, sizeof(msg)) != sizeof(msg))
			continue;
		count++;
		if (write(fdout, &count, sizeof(count)) != sizeof(count))
			peer_fail("notify reply");
	}
	if (min && count < atoi(min))
		peer_fail("notified %d times, want at least %s", count, min);
	peer_pass();
}
