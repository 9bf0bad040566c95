/*
 * fork_churn (transition): children are forked and reaped without pause while being dumped.
 *
 * Up to MAX_LIVE children live at a time; child number N checks that its parent is the
 * test and exits with N % 64 after a short random life. The parent reaps them as they exit
 * and checks each status against the child's number. After SIGTERM it reaps the rest
 * (with a deadline): every forked child must have been reaped exactly once with its own
 * status, and no unknown child may show up.
 */
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "zdtmtst.h"

#define MAX_LIVE 4
#define BAD_PPID 0x40

struct kid {
	pid_t pid;	/* 0: free */
	uint64_t n;
};

static struct kid kids[MAX_LIVE];
static uint64_t forked, reaped;

/* Account for one reaped child; 0 when it is ours and its status is right. */
static int reap_one(pid_t pid, int status)
{
	for (int i = 0; i < MAX_LIVE; i++) {
		if (kids[i].pid != pid)
			continue;
		kids[i].pid = 0;
		reaped++;
		if (WIFEXITED(status) && (WEXITSTATUS(status) & BAD_PPID))
			return fail("child #%llu (pid %d) found another parent than the test",
				    (unsigned long long)kids[i].n, pid);
		if (!WIFEXITED(status) || WEXITSTATUS(status) != (int)(kids[i].n % 64))
			return fail("child #%llu (pid %d): status %#x, expected exit %d",
				    (unsigned long long)kids[i].n, pid, status,
				    (int)(kids[i].n % 64));
		return 0;
	}
	return fail("reaped pid %d, which is not a child we know of", pid);
}

static int spawn(pid_t parent, uint64_t n)
{
	int slot = -1;
	pid_t pid;

	for (int i = 0; i < MAX_LIVE && slot < 0; i++)
		if (!kids[i].pid)
			slot = i;
	if (slot < 0)
		return 0;
	pid = fork();
	if (pid < 0)
		return -1;
	if (!pid) {
		struct timespec life = { 0, (long)(n % 7) * 300 * 1000 };

		nanosleep(&life, NULL);
		_exit((int)(n % 64) | (getppid() == parent ? 0 : BAD_PPID));
	}
	kids[slot] = (struct kid){ pid, n };
	forked++;
	return 0;
}

int main(int argc, char **argv)
{
	struct timespec nap = { 0, 200 * 1000 };
	pid_t parent, pid;
	int status;

	test_init(argc, argv);
	parent = getpid();

	test_daemon();

	while (test_go()) {
		if (spawn(parent, forked + 1))
			return fail_perror("fork #%llu", (unsigned long long)forked + 1);
		while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
			if (reap_one(pid, status))
				return 1;
		nanosleep(&nap, NULL);
	}

	for (int i = 0; i < MAX_LIVE; i++) {
		if (!kids[i].pid)
			continue;
		pid = kids[i].pid;
		if (test_waitpid(pid, &status, 10000))
			return fail_perror("child %d did not exit", pid);
		if (reap_one(pid, status))
			return 1;
	}
	if (waitpid(-1, &status, WNOHANG) != -1 || errno != ECHILD)
		return fail("an unknown child is left");
	test_msg("%llu children forked, %llu reaped", (unsigned long long)forked,
		 (unsigned long long)reaped);
	if (forked != reaped || forked == 0)
		return fail("forked %llu, reaped %llu", (unsigned long long)forked,
			    (unsigned long long)reaped);
	return pass();
}
