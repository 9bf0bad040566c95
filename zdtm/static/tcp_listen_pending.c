/*
 * tcp_listen_pending: a TCP listener on the loopback with two connections in its accept
 * queue, made by two clients of the same process that have sent nothing yet. After
 * restore the listener (non-blocking) has exactly those two connections waiting: each
 * accepted one's peer is one of the clients, and data goes both ways on both.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "zdtmtst.h"

static int port_of(int s, bool peer)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);

	if ((peer ? getpeername(s, (struct sockaddr *)&a, &len) :
		    getsockname(s, (struct sockaddr *)&a, &len)))
		return -1;
	return ntohs(a.sin_port);
}

static int talk(int a, int b)
{
	char c;

	return send(a, "x", 1, 0) == 1 && recv(b, &c, 1, 0) == 1 && c == 'x' &&
	       send(b, "y", 1, 0) == 1 && recv(a, &c, 1, 0) == 1 && c == 'y' ? 0 : -1;
}

int main(int argc, char **argv)
{
	struct sockaddr_in la = { .sin_family = AF_INET };
	socklen_t len = sizeof(la);
	int lst, cli[2], acc[2];

	test_init(argc, argv);

	la.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lst = socket(AF_INET, SOCK_STREAM, 0);
	cli[0] = socket(AF_INET, SOCK_STREAM, 0);
	cli[1] = socket(AF_INET, SOCK_STREAM, 0);
	if (lst < 0 || cli[0] < 0 || cli[1] < 0 || bind(lst, (struct sockaddr *)&la, sizeof(la)) ||
	    getsockname(lst, (struct sockaddr *)&la, &len) || listen(lst, 4) ||
	    connect(cli[0], (struct sockaddr *)&la, sizeof(la)) ||
	    connect(cli[1], (struct sockaddr *)&la, sizeof(la)) || fcntl(lst, F_SETFL, O_NONBLOCK)) {
		pr_perror("setup");
		return 1;
	}

	test_daemon();
	test_waitsig();

	for (int i = 0; i < 2; i++) {
		int p;

		acc[i] = accept(lst, NULL, NULL);
		if (acc[i] < 0)
			return fail("connection %d is not waiting any more", i);
		p = port_of(acc[i], true);
		if (p != port_of(cli[0], false) && p != port_of(cli[1], false))
			return fail("accepted a connection from port %d, from neither client", p);
	}
	if (accept(lst, NULL, NULL) >= 0)
		return fail("more connections waiting than were made");
	if (port_of(acc[0], true) == port_of(acc[1], true))
		return fail("both accepted connections come from one client");
	for (int i = 0; i < 2; i++) {
		int j = port_of(acc[i], true) == port_of(cli[0], false) ? 0 : 1;

		if (talk(cli[j], acc[i]))
			return fail("connection of client %d does not carry data both ways", j);
	}
	return pass();
}
