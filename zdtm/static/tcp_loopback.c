/*
 * tcp_loopback: TCP on the loopback in one process — a listener (IPv4, SO_REUSEADDR), an
 * established connection from a client socket to the connection the listener accepted,
 * with unread data waiting in both directions, TCP_NODELAY on the client, and a UDP socket
 * bound and connected to a second UDP socket. After restore the waiting data is there once,
 * the connection carries new data both ways, the listener accepts a new connection on the
 * same port, the options are as set, and the UDP pair still exchanges datagrams.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "zdtmtst.h"

static int expect(int fd, const char *want, const char *what)
{
	if (test_expect_bytes(fd, want))
		return fail_perror("%s: expected \"%s\"", what, want);
	return 0;
}

static int opt(int fd, int level, int name)
{
	int v = -1;
	socklen_t len = sizeof(v);

	getsockopt(fd, level, name, &v, &len);
	return v;
}

int main(int argc, char **argv)
{
	struct sockaddr_in la, ua, ub;
	int lst, cli, srv, cli2, u1, u2, one = 1;
	char c;

	test_init(argc, argv);

	lst = test_loopback_socket(SOCK_STREAM, &la);
	cli = socket(AF_INET, SOCK_STREAM, 0);
	u1 = test_loopback_socket(SOCK_DGRAM, &ua);
	u2 = test_loopback_socket(SOCK_DGRAM, &ub);
	if (lst < 0 || cli < 0 || u1 < 0 || u2 < 0 || listen(lst, 5) ||
	    connect(cli, (struct sockaddr *)&la, sizeof(la)) ||
	    (srv = accept(lst, NULL, NULL)) < 0 ||
	    setsockopt(cli, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) ||
	    connect(u1, (struct sockaddr *)&ub, sizeof(ub)) ||
	    connect(u2, (struct sockaddr *)&ua, sizeof(ua))) {
		pr_perror("setup");
		return 1;
	}
	if (send(cli, "request", 7, 0) != 7 || send(srv, "answer!", 7, 0) != 7) {
		pr_perror("send");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (expect(srv, "request", "server side") || expect(cli, "answer!", "client side"))
		return 1;
	if (send(cli, "more", 4, 0) != 4 || expect(srv, "more", "client->server after restore"))
		return 1;
	if (send(srv, "back", 4, 0) != 4 || expect(cli, "back", "server->client after restore"))
		return 1;
	if (recv(srv, &c, 1, MSG_DONTWAIT) != -1 || errno != EAGAIN)
		return fail("server side has data nobody sent");
	if (opt(cli, IPPROTO_TCP, TCP_NODELAY) != 1 || opt(lst, SOL_SOCKET, SO_REUSEADDR) != 1)
		return fail("socket options lost");
	cli2 = socket(AF_INET, SOCK_STREAM, 0);
	if (cli2 < 0 || connect(cli2, (struct sockaddr *)&la, sizeof(la)) ||
	    accept(lst, NULL, NULL) < 0)
		return fail_perror("the listener does not accept on its port any more");
	if (send(u1, "dgram", 5, 0) != 5 || expect(u2, "dgram", "udp"))
		return 1;
	return pass();
}
