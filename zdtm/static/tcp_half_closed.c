/*
 * tcp_half_closed: a TCP connection on the loopback shut down one way. The client sent
 * "request" then shut down for writing (FIN_WAIT2); the server has not read it (its side
 * is in CLOSE_WAIT) and has sent "part one" the client has not read. After restore both
 * sides are in the same TCP states, the server reads "request" then end-of-file, the
 * client reads "part one", data still flows from server to client, and the client
 * cannot send.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "zdtmtst.h"

static int state_of(int s)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	return getsockopt(s, IPPROTO_TCP, TCP_INFO, &ti, &len) ? -1 : ti.tcpi_state;
}

static int expect(int fd, const char *want, const char *what)
{
	if (test_expect_bytes(fd, want))
		return fail_perror("%s: expected \"%s\"", what, want);
	return 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in la = { .sin_family = AF_INET };
	socklen_t len = sizeof(la);
	int lst, cli, srv, i;
	char c;

	test_init(argc, argv);

	la.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lst = socket(AF_INET, SOCK_STREAM, 0);
	cli = socket(AF_INET, SOCK_STREAM, 0);
	if (lst < 0 || cli < 0 || bind(lst, (struct sockaddr *)&la, sizeof(la)) ||
	    getsockname(lst, (struct sockaddr *)&la, &len) || listen(lst, 1) ||
	    connect(cli, (struct sockaddr *)&la, sizeof(la)) ||
	    (srv = accept(lst, NULL, NULL)) < 0 || send(cli, "request", 7, 0) != 7 ||
	    shutdown(cli, SHUT_WR) || send(srv, "part one", 8, 0) != 8) {
		pr_perror("setup");
		return 1;
	}
	close(lst);
	for (i = 0; i < 100 && state_of(cli) != TCP_FIN_WAIT2; i++)
		usleep(10000);
	if (state_of(cli) != TCP_FIN_WAIT2 || state_of(srv) != TCP_CLOSE_WAIT) {
		pr_err("states %d/%d, not FIN_WAIT2/CLOSE_WAIT\n", state_of(cli), state_of(srv));
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (state_of(cli) != TCP_FIN_WAIT2 || state_of(srv) != TCP_CLOSE_WAIT)
		return fail("states %d/%d, not FIN_WAIT2/CLOSE_WAIT", state_of(cli), state_of(srv));
	if (expect(srv, "request", "server") || recv(srv, &c, 1, MSG_DONTWAIT) != 0)
		return fail("the server does not read the request then end-of-file");
	if (expect(cli, "part one", "client"))
		return 1;
	if (send(srv, "part two", 8, 0) != 8 || expect(cli, "part two", "client, after restore"))
		return 1;
	if (send(cli, "x", 1, MSG_NOSIGNAL) != -1 || errno != EPIPE)
		return fail("the client shut down for writing can send");
	return pass();
}
