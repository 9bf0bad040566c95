/*
 * Loopback sockets for the socket tests: one bound socket, and reading an expected message.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "zdtmtst.h"

int test_loopback_socket(int type, struct sockaddr_in *a)
{
	socklen_t len = sizeof(*a);
	int one = 1, s = socket(AF_INET, type, 0);

	memset(a, 0, sizeof(*a));
	a->sin_family = AF_INET;
	a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (s < 0)
		return -1;
	if (setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(s, (struct sockaddr *)a, sizeof(*a)) || getsockname(s, (struct sockaddr *)a, &len)) {
		close(s);
		return -1;
	}
	return s;
}

int test_expect_bytes(int fd, const char *want)
{
	char buf[256];
	size_t n = strlen(want);

	if (n > sizeof(buf)) {
		errno = EMSGSIZE;
		return -1;
	}
	if (test_read_full(fd, buf, n))
		return -1;
	if (memcmp(buf, want, n)) {
		errno = EBADMSG;
		return -1;
	}
	return 0;
}
