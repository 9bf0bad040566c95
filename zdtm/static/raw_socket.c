/*
 * raw_socket: raw IPv4 sockets (CAP_NET_RAW, in the tree's network namespace)
 *   rx      protocol 253 (RFC 3692 experiments: no other traffic), bound to 127.0.0.1,
 *           SO_RCVBUF set
 *   tx      protocol 253, connected to 127.0.0.1, IP_TOS 0x10, SO_PRIORITY 3
 *   hdr     protocol 254 with IP_HDRINCL set, SO_SNDBUF set
 *   rawraw  IPPROTO_RAW (send only; IP_HDRINCL implied)
 *   rx6     IPv6, protocol 253, bound to ::1
 *   tx6     IPv6, protocol 253, connected to ::1
 * After restore each has its protocol (SO_PROTOCOL), options and buffer sizes; tx still
 * sends without an address (connected) and rx gets that packet, with TOS 0x10; a packet
 * with our own IP header sent through hdr reaches a protocol-254 socket made after restore;
 * tx6 still sends without an address and rx6 gets it.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "zdtmtst.h"

#define PROTO_A 253
#define PROTO_B 254
#define RCVBUF 65536
#define SNDBUF 32768

struct opts {
	int proto, tos, prio, hdrincl, rcvbuf, sndbuf;
};

static int get(int s, int level, int opt)
{
	int v = -1;
	socklen_t len = sizeof(v);

	if (getsockopt(s, level, opt, &v, &len))
		return -1;
	return v;
}

static void read_opts(int s, struct opts *o)
{
	o->proto = get(s, SOL_SOCKET, SO_PROTOCOL);
	o->tos = get(s, IPPROTO_IP, IP_TOS);
	o->prio = get(s, SOL_SOCKET, SO_PRIORITY);
	o->hdrincl = get(s, IPPROTO_IP, IP_HDRINCL);
	o->rcvbuf = get(s, SOL_SOCKET, SO_RCVBUF);
	o->sndbuf = get(s, SOL_SOCKET, SO_SNDBUF);
}

static void compare(const char *name, const struct opts *a, const struct opts *b)
{
	if (memcmp(a, b, sizeof(*a)))
		fail("%s: proto %d tos %#x prio %d hdrincl %d rcvbuf %d sndbuf %d, were "
		     "%d %#x %d %d %d %d", name, b->proto, b->tos, b->prio, b->hdrincl, b->rcvbuf,
		     b->sndbuf, a->proto, a->tos, a->prio, a->hdrincl, a->rcvbuf, a->sndbuf);
}

static struct sockaddr_in loopback(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

/* Wait for a packet on s carrying `payload`; its IP header's TOS, or -1. */
static int receive(int s, const char *payload)
{
	char buf[2048];

	for (;;) {
		struct pollfd pfd = { .fd = s, .events = POLLIN };
		struct iphdr *ip = (struct iphdr *)buf;
		ssize_t n;

		if (poll(&pfd, 1, 5000) <= 0)
			return -1;
		n = recv(s, buf, sizeof(buf), 0);
		if (n < (ssize_t)sizeof(*ip))
			return -1;
		if ((size_t)n == ip->ihl * 4u + strlen(payload) &&
		    !memcmp(buf + ip->ihl * 4, payload, strlen(payload)))
			return ip->tos;
	}
}

/* Wait for an IPv6 packet on s carrying `payload` (raw IPv6 reads have no IP header). */
static int receive6(int s, const char *payload)
{
	char buf[2048];

	for (;;) {
		struct pollfd pfd = { .fd = s, .events = POLLIN };
		ssize_t n;

		if (poll(&pfd, 1, 5000) <= 0)
			return -1;
		n = recv(s, buf, sizeof(buf), 0);
		if (n < 0)
			return -1;
		if ((size_t)n == strlen(payload) && !memcmp(buf, payload, n))
			return 0;
	}
}

int main(int argc, char **argv)
{
	struct sockaddr_in lo = loopback();
	struct sockaddr_in6 lo6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	struct opts before[6], after[6];
	const char *names[6] = { "rx", "tx", "hdr", "rawraw", "rx6", "tx6" };
	int socks[6], one = 1, tos = 0x10, prio = 3, rcv = RCVBUF / 2, snd = SNDBUF / 2;
	char payload[64], packet[128];
	struct iphdr *ip = (struct iphdr *)packet;
	int rx2, got;

	test_init(argc, argv);

	socks[0] = socket(AF_INET, SOCK_RAW, PROTO_A);
	socks[1] = socket(AF_INET, SOCK_RAW, PROTO_A);
	socks[2] = socket(AF_INET, SOCK_RAW, PROTO_B);
	socks[3] = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
	socks[4] = socket(AF_INET6, SOCK_RAW, PROTO_A);
	socks[5] = socket(AF_INET6, SOCK_RAW, PROTO_A);
	for (int i = 0; i < 6; i++)
		if (socks[i] < 0) {
			pr_perror("socket(AF_INET, SOCK_RAW) %s", names[i]);
			return 1;
		}
	if (setsockopt(socks[0], SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv)) ||
	    bind(socks[0], (struct sockaddr *)&lo, sizeof(lo)) ||
	    setsockopt(socks[1], IPPROTO_IP, IP_TOS, &tos, sizeof(tos)) ||
	    setsockopt(socks[1], SOL_SOCKET, SO_PRIORITY, &prio, sizeof(prio)) ||
	    connect(socks[1], (struct sockaddr *)&lo, sizeof(lo)) ||
	    setsockopt(socks[2], IPPROTO_IP, IP_HDRINCL, &one, sizeof(one)) ||
	    setsockopt(socks[2], SOL_SOCKET, SO_SNDBUF, &snd, sizeof(snd)) ||
	    bind(socks[4], (struct sockaddr *)&lo6, sizeof(lo6)) ||
	    connect(socks[5], (struct sockaddr *)&lo6, sizeof(lo6))) {
		pr_perror("set up");
		return 1;
	}
	for (int i = 0; i < 6; i++)
		read_opts(socks[i], &before[i]);

	test_daemon();
	test_waitsig();

	for (int i = 0; i < 6; i++) {
		read_opts(socks[i], &after[i]);
		compare(names[i], &before[i], &after[i]);
	}
	if (after[0].rcvbuf != RCVBUF || after[2].sndbuf != SNDBUF || after[1].tos != tos ||
	    after[2].hdrincl != 1 || after[3].hdrincl != 1)
		fail("rcvbuf %d sndbuf %d tos %#x hdrincl %d %d, expected %d %d %#x 1 1",
		     after[0].rcvbuf, after[2].sndbuf, after[1].tos, after[2].hdrincl,
		     after[3].hdrincl, RCVBUF, SNDBUF, tos);

	snprintf(payload, sizeof(payload), "raw_socket %d connected", getpid());
	if (send(socks[1], payload, strlen(payload), 0) < 0)
		fail_perror("tx: send without an address (not connected?)");
	else if ((got = receive(socks[0], payload)) != tos)
		fail("rx: packet from tx: TOS %d, expected %#x (-1: none)", got, tos);

	rx2 = socket(AF_INET, SOCK_RAW, PROTO_B);
	snprintf(payload, sizeof(payload), "raw_socket %d own header", getpid());
	memset(packet, 0, sizeof(packet));
	ip->version = 4;
	ip->ihl = 5;
	ip->ttl = 64;
	ip->protocol = PROTO_B;
	ip->saddr = ip->daddr = lo.sin_addr.s_addr;
	memcpy(packet + sizeof(*ip), payload, strlen(payload));
	ip->tot_len = htons(sizeof(*ip) + strlen(payload));
	if (rx2 < 0 || sendto(socks[2], packet, sizeof(*ip) + strlen(payload), 0,
			      (struct sockaddr *)&lo, sizeof(lo)) < 0)
		fail_perror("hdr: send a packet with our own header");
	else if (receive(rx2, payload) < 0)
		fail("hdr: the packet with our own header did not arrive");

	snprintf(payload, sizeof(payload), "raw_socket %d connected over IPv6", getpid());
	if (send(socks[5], payload, strlen(payload), 0) < 0)
		fail_perror("tx6: send without an address (not connected?)");
	else if (receive6(socks[4], payload))
		fail("rx6: the packet from tx6 did not arrive");
	return pass();
}
