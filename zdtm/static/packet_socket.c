/*
 * packet_socket: AF_PACKET sockets on the loopback, ethertype 0x88b5 (IEEE local
 * experimental: no other traffic, so nothing is queued while the harness looks)
 *   rx    SOCK_RAW, bound to lo, PACKET_AUXDATA, PACKET_VERSION TPACKET_V2 (no ring),
 *         SO_RCVBUF set
 *   tx    SOCK_DGRAM, bound to lo, PACKET_QDISC_BYPASS, PACKET_IGNORE_OUTGOING, SO_PRIORITY 4
 *   idle  SOCK_RAW, protocol 0 (receives nothing), never bound, SO_SNDBUF set
 * After restore each has its type, protocol, binding (interface and protocol) and
 * options; a frame tx sends on lo reaches rx with its payload and a PACKET_AUXDATA
 * control message.
 */
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "zdtmtst.h"

#define ETHERTYPE 0x88b5
#define RCVBUF 65536
#define SNDBUF 32768

struct state {
	int type, proto, ifindex, bound_proto;
	int auxdata, version, bypass, ignore_out, prio, rcvbuf, sndbuf;
};

static int get(int s, int level, int opt)
{
	int v = -1;
	socklen_t len = sizeof(v);

	return getsockopt(s, level, opt, &v, &len) ? -2 : v;
}

static void read_state(int s, struct state *st)
{
	struct sockaddr_ll a;
	socklen_t len = sizeof(a);

	memset(&a, 0, sizeof(a));
	getsockname(s, (struct sockaddr *)&a, &len);
	st->type = get(s, SOL_SOCKET, SO_TYPE);
	st->proto = get(s, SOL_SOCKET, SO_PROTOCOL);
	st->ifindex = a.sll_ifindex;
	st->bound_proto = ntohs(a.sll_protocol);
	st->auxdata = get(s, SOL_PACKET, PACKET_AUXDATA);
	st->version = get(s, SOL_PACKET, PACKET_VERSION);
	st->bypass = get(s, SOL_PACKET, PACKET_QDISC_BYPASS);
	st->ignore_out = get(s, SOL_PACKET, PACKET_IGNORE_OUTGOING);
	st->prio = get(s, SOL_SOCKET, SO_PRIORITY);
	st->rcvbuf = get(s, SOL_SOCKET, SO_RCVBUF);
	st->sndbuf = get(s, SOL_SOCKET, SO_SNDBUF);
}

static void compare(const char *name, const struct state *a, const struct state *b)
{
	if (memcmp(a, b, sizeof(*a)))
		fail("%s: type %d proto %#x if %d/%#x aux %d ver %d bypass %d ignore %d prio %d "
		     "rcvbuf %d sndbuf %d, were %d %#x %d/%#x %d %d %d %d %d %d %d", name, b->type,
		     b->proto, b->ifindex, b->bound_proto, b->auxdata, b->version, b->bypass,
		     b->ignore_out, b->prio, b->rcvbuf, b->sndbuf, a->type, a->proto, a->ifindex,
		     a->bound_proto, a->auxdata, a->version, a->bypass, a->ignore_out, a->prio,
		     a->rcvbuf, a->sndbuf);
}

static int set(int s, int level, int opt, int v)
{
	return setsockopt(s, level, opt, &v, sizeof(v));
}

static int bind_lo(int s)
{
	struct sockaddr_ll a = { .sll_family = AF_PACKET, .sll_protocol = htons(ETHERTYPE) };

	a.sll_ifindex = if_nametoindex("lo");
	return bind(s, (struct sockaddr *)&a, sizeof(a));
}

/* A frame with `payload` on rx within 5 s (others skipped), with PACKET_AUXDATA. */
static void receive(int rx, const char *payload)
{
	size_t want = ETH_HLEN + strlen(payload);

	for (;;) {
		char buf[2048], cbuf[256];
		struct iovec iov = { buf, sizeof(buf) };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
				    .msg_controllen = sizeof(cbuf) };
		struct pollfd pfd = { .fd = rx, .events = POLLIN };
		struct cmsghdr *c;
		ssize_t n;

		if (poll(&pfd, 1, 5000) != 1 || (n = recvmsg(rx, &m, 0)) < 0) {
			fail_perror("rx: no frame from tx");
			return;
		}
		/* the loopback pads short frames to the ethernet minimum */
		if ((size_t)n < want || memcmp(buf + ETH_HLEN, payload, strlen(payload)))
			continue;
		c = CMSG_FIRSTHDR(&m);
		if (!c || c->cmsg_level != SOL_PACKET || c->cmsg_type != PACKET_AUXDATA)
			fail("rx: frame without PACKET_AUXDATA");
		return;
	}
}

int main(int argc, char **argv)
{
	struct state before[3], after[3];
	const char *names[3] = { "rx", "tx", "idle" };
	struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_protocol = htons(ETHERTYPE),
				  .sll_halen = ETH_ALEN };
	char payload[64];
	int s[3];

	test_init(argc, argv);

	s[0] = socket(AF_PACKET, SOCK_RAW, htons(ETHERTYPE));
	s[1] = socket(AF_PACKET, SOCK_DGRAM, htons(ETHERTYPE));
	s[2] = socket(AF_PACKET, SOCK_RAW, 0);
	if (s[0] < 0 || s[1] < 0 || s[2] < 0) {
		pr_perror("socket(AF_PACKET)");
		return 1;
	}
	if (set(s[0], SOL_PACKET, PACKET_AUXDATA, 1) ||
	    set(s[0], SOL_PACKET, PACKET_VERSION, TPACKET_V2) ||
	    set(s[0], SOL_SOCKET, SO_RCVBUF, RCVBUF / 2) || bind_lo(s[0]) ||
	    set(s[1], SOL_PACKET, PACKET_QDISC_BYPASS, 1) ||
	    set(s[1], SOL_PACKET, PACKET_IGNORE_OUTGOING, 1) ||
	    set(s[1], SOL_SOCKET, SO_PRIORITY, 4) || bind_lo(s[1]) ||
	    set(s[2], SOL_SOCKET, SO_SNDBUF, SNDBUF / 2)) {
		pr_perror("set up");
		return 1;
	}
	for (int i = 0; i < 3; i++)
		read_state(s[i], &before[i]);

	test_daemon();
	test_waitsig();

	for (int i = 0; i < 3; i++) {
		read_state(s[i], &after[i]);
		compare(names[i], &before[i], &after[i]);
	}
	if (after[0].rcvbuf != RCVBUF || after[2].sndbuf != SNDBUF || !after[1].bypass)
		fail("rcvbuf %d sndbuf %d bypass %d, set to %d %d 1", after[0].rcvbuf,
		     after[2].sndbuf, after[1].bypass, RCVBUF, SNDBUF);

	snprintf(payload, sizeof(payload), "packet_socket %d", getpid());
	to.sll_ifindex = if_nametoindex("lo");
	if (sendto(s[1], payload, strlen(payload), 0, (struct sockaddr *)&to, sizeof(to)) < 0)
		fail_perror("tx: send on lo");
	else
		receive(s[0], payload);
	return pass();
}
