/*
 * tcp_big_queue: a TCP connection on the loopback whose reader has not read: the writer
 * sent until its socket was full (a send buffer raised to 1 MiB, the reader's receive
 * buffer to 512 KiB), so megabytes wait in its send queue and the reader's receive
 * queue. After restore every byte arrives once and in order, and the connection still
 * carries data the other way.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "zdtmtst.h"

#define CHUNK 65536

int main(int argc, char **argv)
{
	struct sockaddr_in la = { .sin_family = AF_INET };
	socklen_t len = sizeof(la);
	int lst, cli, srv, snd = 1 << 20, rcv = 1 << 19;
	char *buf = malloc(CHUNK), *in = malloc(CHUNK);
	size_t sent = 0, got = 0;
	ssize_t n;

	test_init(argc, argv);

	la.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lst = socket(AF_INET, SOCK_STREAM, 0);
	cli = socket(AF_INET, SOCK_STREAM, 0);
	if (!buf || !in || lst < 0 || cli < 0 ||
	    setsockopt(cli, SOL_SOCKET, SO_SNDBUF, &snd, sizeof(snd)) ||
	    setsockopt(lst, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv)) ||
	    bind(lst, (struct sockaddr *)&la, sizeof(la)) ||
	    getsockname(lst, (struct sockaddr *)&la, &len) || listen(lst, 1) ||
	    connect(cli, (struct sockaddr *)&la, sizeof(la)) ||
	    (srv = accept(lst, NULL, NULL)) < 0) {
		pr_perror("setup");
		return 1;
	}
	datafill(buf, CHUNK, 0);
	for (int tries = 0; tries < 20; tries++) {
		size_t off = sent % CHUNK;

		n = send(cli, buf + off, CHUNK - off, MSG_DONTWAIT);
		if (n <= 0) {
			usleep(10000);
			continue;
		}
		sent += n;
		tries = 0;
		if (sent % CHUNK == 0)
			datafill(buf, CHUNK, sent / CHUNK);
	}
	test_msg("%zu bytes queued\n", sent);

	test_daemon();
	test_waitsig();

	while (got < sent) {
		size_t want = CHUNK - got % CHUNK;

		n = recv(srv, in + got % CHUNK, want, 0);
		if (n <= 0)
			return fail_perror("recv after %zu of %zu bytes", got, sent);
		got += n;
		if ((got % CHUNK == 0 || got == sent) &&
		    datacmp(in, (got - 1) % CHUNK + 1, (got - 1) / CHUNK) >= 0)
			return fail("chunk %zu differs", (got - 1) / CHUNK);
	}
	if (send(srv, "x", 1, 0) != 1 || recv(cli, in, 1, 0) != 1 || in[0] != 'x')
		return fail("the connection does not carry data back");
	return pass();
}
