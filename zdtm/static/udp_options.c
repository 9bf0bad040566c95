/*
 * udp_options: UDP sockets with socket options
 *   a      bound to 127.0.0.1, connected to b; SO_REUSEADDR, SO_REUSEPORT, SO_BROADCAST,
 *          SO_RCVBUF, SO_SNDBUF, IP_TOS 0x28, then SO_PRIORITY 2 (IP_TOS sets a priority
 *          of its own), IP_MULTICAST_TTL 7, IP_MULTICAST_LOOP off, SO_TIMESTAMP
 *   b      bound to 127.0.0.1, IP_RECVTOS, IP_PKTINFO, IP_RECVTTL, SO_TIMESTAMPNS, a
 *          classic BPF filter (SO_ATTACH_FILTER: datagrams of 64 bytes or less), locked
 *   loose  never bound, SO_RCVBUF only
 * After restore every option reads as before; a datagram from a reaches b with its TOS
 * (IP_RECVTOS), its destination (IP_PKTINFO), its TTL and a nanosecond timestamp as
 * control messages; the filter and its lock are there, and a datagram longer than 64
 * bytes never reaches b; b answers a at its address; loose is still unbound.
 */
#include <arpa/inet.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "zdtmtst.h"

struct opt {
	const char *name;
	int level, opt;
};

static const struct opt opts[] = {
	{ "SO_REUSEADDR", SOL_SOCKET, SO_REUSEADDR },
	{ "SO_REUSEPORT", SOL_SOCKET, SO_REUSEPORT },
	{ "SO_BROADCAST", SOL_SOCKET, SO_BROADCAST },
	{ "SO_RCVBUF", SOL_SOCKET, SO_RCVBUF },
	{ "SO_SNDBUF", SOL_SOCKET, SO_SNDBUF },
	{ "SO_PRIORITY", SOL_SOCKET, SO_PRIORITY },
	{ "SO_TIMESTAMP", SOL_SOCKET, SO_TIMESTAMP },
	{ "SO_TIMESTAMPNS", SOL_SOCKET, SO_TIMESTAMPNS },
	{ "IP_TOS", IPPROTO_IP, IP_TOS },
	{ "IP_MULTICAST_TTL", IPPROTO_IP, IP_MULTICAST_TTL },
	{ "IP_MULTICAST_LOOP", IPPROTO_IP, IP_MULTICAST_LOOP },
	{ "IP_RECVTOS", IPPROTO_IP, IP_RECVTOS },
	{ "IP_PKTINFO", IPPROTO_IP, IP_PKTINFO },
	{ "IP_RECVTTL", IPPROTO_IP, IP_RECVTTL },
	{ "SO_LOCK_FILTER", SOL_SOCKET, SO_LOCK_FILTER },
};
#define NOPTS (int)(sizeof(opts) / sizeof(opts[0]))

static int getopt_int(int s, const struct opt *o)
{
	int v = -1;
	socklen_t len = sizeof(v);

	/* IP_MULTICAST_* may answer with one byte */
	if (getsockopt(s, o->level, o->opt, &v, &len))
		return -2;
	return len == 1 ? (unsigned char)v : v;
}

/* ld len (of the UDP payload: sk_filter sees the datagram); drop if > 64; else accept */
static struct sock_filter small_only[] = {
	BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0),
	BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, 64 + 8, 0, 1),
	BPF_STMT(BPF_RET | BPF_K, 0),
	BPF_STMT(BPF_RET | BPF_K, 0xffff),
};
#define FILTER_LEN (int)(sizeof(small_only) / sizeof(small_only[0]))

/* The attached filter's length in instructions (SO_GET_FILTER counts in instructions). */
static int filter_len(int s)
{
	struct sock_filter prog[64];
	socklen_t len = 64;

	if (getsockopt(s, SOL_SOCKET, SO_GET_FILTER, prog, &len))
		return -1;
	if ((int)len == FILTER_LEN && memcmp(prog, small_only, sizeof(small_only)))
		return -2; /* another program of the same length */
	return len;
}

static int set(int s, int level, int opt, int v)
{
	return setsockopt(s, level, opt, &v, sizeof(v));
}

static void check_message(int b, const char *payload)
{
	char buf[256], cbuf[512];
	struct iovec iov = { buf, sizeof(buf) };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			    .msg_controllen = sizeof(cbuf) };
	struct pollfd pfd = { .fd = b, .events = POLLIN };
	int tos = -1, ttl = -1, pktinfo = 0, stamp = 0;
	ssize_t n;

	if (poll(&pfd, 1, 5000) != 1 || (n = recvmsg(b, &m, 0)) < 0) {
		fail_perror("b: no datagram from a");
		return;
	}
	if ((size_t)n != strlen(payload) || memcmp(buf, payload, n))
		fail("b: got %zd bytes, not the datagram sent", n);
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
		if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TOS)
			tos = *(unsigned char *)CMSG_DATA(c);
		else if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TTL)
			memcpy(&ttl, CMSG_DATA(c), sizeof(ttl));
		else if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO)
			pktinfo = 1;
		else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPNS)
			stamp = 1;
	}
	if (tos != 0x28 || ttl <= 0 || !pktinfo || !stamp)
		fail("b: control messages tos %#x ttl %d pktinfo %d timestampns %d, expected "
		     "0x28 >0 1 1", tos, ttl, pktinfo, stamp);
}

int main(int argc, char **argv)
{
	struct sockaddr_in aa, ba, la;
	int before[3][NOPTS], after[3][NOPTS];
	const char *names[3] = { "a", "b", "loose" };
	int socks[3];
	struct sock_fprog fprog = { FILTER_LEN, small_only };
	char payload[64], buf[64], big[200];
	socklen_t len = sizeof(la);

	test_init(argc, argv);

	socks[0] = test_loopback_socket(SOCK_DGRAM, &aa);
	socks[1] = test_loopback_socket(SOCK_DGRAM, &ba);
	socks[2] = socket(AF_INET, SOCK_DGRAM, 0);
	if (socks[0] < 0 || socks[1] < 0 || socks[2] < 0 ||
	    set(socks[0], SOL_SOCKET, SO_REUSEPORT, 1) ||
	    set(socks[0], SOL_SOCKET, SO_BROADCAST, 1) ||
	    set(socks[0], SOL_SOCKET, SO_RCVBUF, 50000) ||
	    set(socks[0], SOL_SOCKET, SO_SNDBUF, 30000) ||
	    set(socks[0], IPPROTO_IP, IP_TOS, 0x28) ||
	    set(socks[0], SOL_SOCKET, SO_PRIORITY, 2) ||
	    set(socks[0], IPPROTO_IP, IP_MULTICAST_TTL, 7) ||
	    set(socks[0], IPPROTO_IP, IP_MULTICAST_LOOP, 0) ||
	    set(socks[0], SOL_SOCKET, SO_TIMESTAMP, 1) ||
	    connect(socks[0], (struct sockaddr *)&ba, sizeof(ba)) ||
	    set(socks[1], IPPROTO_IP, IP_RECVTOS, 1) ||
	    set(socks[1], IPPROTO_IP, IP_PKTINFO, 1) ||
	    set(socks[1], IPPROTO_IP, IP_RECVTTL, 1) ||
	    set(socks[1], SOL_SOCKET, SO_TIMESTAMPNS, 1) ||
	    setsockopt(socks[1], SOL_SOCKET, SO_ATTACH_FILTER, &fprog, sizeof(fprog)) ||
	    set(socks[1], SOL_SOCKET, SO_LOCK_FILTER, 1) ||
	    set(socks[2], SOL_SOCKET, SO_RCVBUF, 20000)) {
		pr_perror("set up");
		return 1;
	}
	for (int s = 0; s < 3; s++)
		for (int i = 0; i < NOPTS; i++)
			before[s][i] = getopt_int(socks[s], &opts[i]);

	test_daemon();
	test_waitsig();

	for (int s = 0; s < 3; s++)
		for (int i = 0; i < NOPTS; i++) {
			after[s][i] = getopt_int(socks[s], &opts[i]);
			if (after[s][i] != before[s][i])
				fail("%s: %s %d, was %d", names[s], opts[i].name, after[s][i],
				     before[s][i]);
		}
	if (filter_len(socks[1]) != FILTER_LEN || filter_len(socks[0]) != 0)
		fail("b: filter of %d instructions (expected %d), a: %d (expected none)",
		     filter_len(socks[1]), FILTER_LEN, filter_len(socks[0]));
	if (getsockname(socks[2], (struct sockaddr *)&la, &len) || la.sin_port)
		fail("loose: bound to port %d after restore", ntohs(la.sin_port));

	/* the filter drops it: the datagram after it must be the next one b reads */
	memset(big, 'x', sizeof(big));
	if (send(socks[0], big, sizeof(big), 0) != sizeof(big))
		fail_perror("a: send the long datagram");
	snprintf(payload, sizeof(payload), "udp_options %d", getpid());
	if (send(socks[0], payload, strlen(payload), 0) < 0)
		fail_perror("a: send (not connected any more?)");
	else
		check_message(socks[1], payload);
	if (sendto(socks[1], "back", 4, 0, (struct sockaddr *)&aa, sizeof(aa)) != 4 ||
	    recv(socks[0], buf, sizeof(buf), 0) != 4)
		fail_perror("b -> a at its address");
	return pass();
}
