/*
 * netlink_route: NETLINK_ROUTE sockets
 *   bound   SOCK_RAW, port id given by the kernel (autobind), multicast groups 2, 8 and 33
 *           (RTNLGRP_NOTIFY, IPV4_RULE, BRVLAN: rarely any traffic, so nothing is queued
 *           while the harness looks), NETLINK_EXT_ACK and NETLINK_NO_ENOBUFS on, SO_RCVBUF
 *           set
 *   chosen  SOCK_DGRAM bound to a port id of our choosing, connected to the kernel
 *   fresh   SOCK_RAW, never bound
 * After restore each has its port id, groups, options and buffer size; "bound" and
 * "chosen" still answer an RTM_GETLINK dump (addressed to their port id, ending with
 * NLMSG_DONE), and "fresh" gets a port id on its first send, like a new socket.
 */
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "zdtmtst.h"

#define RCVBUF 65536

static const unsigned int groups[] = { 2, 8, 33 };

struct nlstate {
	struct sockaddr_nl addr;
	uint32_t members[4];
	int ext_ack, no_enobufs, rcvbuf;
};

static int read_state(int s, struct nlstate *st)
{
	socklen_t len = sizeof(st->addr);
	socklen_t mlen = sizeof(st->members), ilen = sizeof(int);

	memset(st, 0, sizeof(*st));
	if (getsockname(s, (struct sockaddr *)&st->addr, &len) ||
	    getsockopt(s, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, st->members, &mlen) ||
	    getsockopt(s, SOL_NETLINK, NETLINK_EXT_ACK, &st->ext_ack, &ilen) ||
	    getsockopt(s, SOL_NETLINK, NETLINK_NO_ENOBUFS, &st->no_enobufs, &ilen) ||
	    getsockopt(s, SOL_SOCKET, SO_RCVBUF, &st->rcvbuf, &ilen))
		return -1;
	return 0;
}

static void compare(const char *name, const struct nlstate *a, const struct nlstate *b)
{
	if (a->addr.nl_pid != b->addr.nl_pid || a->addr.nl_groups != b->addr.nl_groups)
		fail("%s: port id %u groups %#x, were %u %#x", name, b->addr.nl_pid,
		     b->addr.nl_groups, a->addr.nl_pid, a->addr.nl_groups);
	if (memcmp(a->members, b->members, sizeof(a->members)))
		fail("%s: memberships %#x %#x, were %#x %#x", name, b->members[0], b->members[1],
		     a->members[0], a->members[1]);
	if (a->ext_ack != b->ext_ack || a->no_enobufs != b->no_enobufs || a->rcvbuf != b->rcvbuf)
		fail("%s: ext_ack %d no_enobufs %d rcvbuf %d, were %d %d %d", name, b->ext_ack,
		     b->no_enobufs, b->rcvbuf, a->ext_ack, a->no_enobufs, a->rcvbuf);
}

/* One datagram within 5 s: its length, or -1 with errno. */
static ssize_t recv_timeout(int s, void *buf, size_t len)
{
	struct pollfd pfd = { .fd = s, .events = POLLIN };
	int n = poll(&pfd, 1, 5000);

	if (n <= 0) {
		errno = n ? errno : ETIMEDOUT;
		return -1;
	}
	return recv(s, buf, len, 0);
}

/*
 * An RTM_GETLINK dump: every answer is addressed to the socket's port id (`portid`, or
 * for 0 the one the send gave it), the last is NLMSG_DONE.
 */
static void getlink(const char *name, int s, uint32_t portid)
{
	struct {
		struct nlmsghdr h;
		struct ifinfomsg i;
	} req = {
		.h = { .nlmsg_len = sizeof(req), .nlmsg_type = RTM_GETLINK,
		       .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = 77 },
		.i = { .ifi_family = AF_UNSPEC },
	};
	static char buf[65536];
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	struct sockaddr_nl self;
	socklen_t len = sizeof(self);
	int links = 0;

	if (sendto(s, &req, sizeof(req), 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0 ||
	    getsockname(s, (struct sockaddr *)&self, &len)) {
		fail_perror("%s: send RTM_GETLINK", name);
		return;
	}
	if (!portid)
		portid = self.nl_pid;
	if (self.nl_pid != portid || !portid) {
		fail("%s: port id %u after the send, expected %u", name, self.nl_pid, portid);
		return;
	}
	for (;;) {
		ssize_t n = recv_timeout(s, buf, sizeof(buf));
		struct nlmsghdr *h = (struct nlmsghdr *)buf;

		if (n <= 0) {
			fail_perror("%s: no RTM_GETLINK answer", name);
			return;
		}
		for (; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_seq != 77 || h->nlmsg_pid != portid) {
				fail("%s: answer seq %u to port %u, expected 77 to %u", name,
				     h->nlmsg_seq, h->nlmsg_pid, portid);
				return;
			}
			if (h->nlmsg_type == NLMSG_DONE) {
				if (!links)
					fail("%s: no link in the dump", name);
				return;
			}
			if (h->nlmsg_type == RTM_NEWLINK)
				links++;
			else {
				fail("%s: answer type %u", name, h->nlmsg_type);
				return;
			}
		}
	}
}

int main(int argc, char **argv)
{
	struct sockaddr_nl any = { .nl_family = AF_NETLINK };
	struct sockaddr_nl mine = { .nl_family = AF_NETLINK };
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	struct nlstate before[3], after[3];
	int one = 1, rcvbuf = RCVBUF / 2, bound, chosen, fresh;

	test_init(argc, argv);

	bound = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	chosen = socket(AF_NETLINK, SOCK_DGRAM, NETLINK_ROUTE);
	fresh = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
	if (bound < 0 || chosen < 0 || fresh < 0) {
		pr_perror("socket(AF_NETLINK)");
		return 1;
	}
	if (setsockopt(bound, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) ||
	    setsockopt(bound, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one)) ||
	    setsockopt(bound, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof(one)) ||
	    bind(bound, (struct sockaddr *)&any, sizeof(any))) {
		pr_perror("bound");
		return 1;
	}
	for (unsigned int i = 0; i < sizeof(groups) / sizeof(groups[0]); i++)
		if (setsockopt(bound, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &groups[i],
			       sizeof(groups[i]))) {
			pr_perror("NETLINK_ADD_MEMBERSHIP %u", groups[i]);
			return 1;
		}
	/* unique in the network namespace: the high bit is never an autobind id of a pid */
	mine.nl_pid = 0x40000000u | (uint32_t)getpid();
	if (bind(chosen, (struct sockaddr *)&mine, sizeof(mine)) ||
	    connect(chosen, (struct sockaddr *)&kernel, sizeof(kernel))) {
		pr_perror("chosen");
		return 1;
	}
	if (read_state(bound, &before[0]) || read_state(chosen, &before[1]) ||
	    read_state(fresh, &before[2])) {
		pr_perror("read the sockets' state");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (read_state(bound, &after[0]) || read_state(chosen, &after[1]) ||
	    read_state(fresh, &after[2]))
		return fail_perror("read the sockets' state after restore");
	compare("bound", &before[0], &after[0]);
	compare("chosen", &before[1], &after[1]);
	compare("fresh", &before[2], &after[2]);
	if (after[0].rcvbuf != RCVBUF)
		fail("bound: SO_RCVBUF %d, set to %d", after[0].rcvbuf, RCVBUF);
	if (after[1].addr.nl_pid != mine.nl_pid)
		fail("chosen: port id %u, bound to %u", after[1].addr.nl_pid, mine.nl_pid);
	if (after[2].addr.nl_pid != 0)
		fail("fresh: port id %u, never bound", after[2].addr.nl_pid);
	getlink("bound", bound, after[0].addr.nl_pid);
	getlink("chosen", chosen, mine.nl_pid);
	getlink("fresh", fresh, 0); /* its port id only exists from the send on */
	return pass();
}
