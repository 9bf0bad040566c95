/*
 * rlimits: resource limits with lowered soft limits (and one lowered hard limit). After
 * restore every limit of the process is exactly what it was.
 */
#include <sys/resource.h>

#include "zdtmtst.h"

static const struct {
	int res;
	rlim_t soft;
	bool lower_hard;	/* also lower the hard limit to the soft one */
} changes[] = {
	{ RLIMIT_NOFILE, 200, false },
	{ RLIMIT_CORE, 12345 * 1024, true },
	{ RLIMIT_STACK, 6UL << 20, false },
	{ RLIMIT_FSIZE, 1UL << 30, false },
	{ RLIMIT_CPU, 100000, false },
	{ RLIMIT_MSGQUEUE, 409600, false },
	{ RLIMIT_SIGPENDING, 1000, false },
};

int main(int argc, char **argv)
{
	struct rlimit before[RLIM_NLIMITS], rl;

	test_init(argc, argv);

	for (size_t i = 0; i < sizeof(changes) / sizeof(changes[0]); i++) {
		if (getrlimit(changes[i].res, &rl)) {
			pr_perror("getrlimit(%d)", changes[i].res);
			return 1;
		}
		/* Only lower: raising may need CAP_SYS_RESOURCE (in a user namespace). */
		if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < changes[i].soft)
			continue;
		rl.rlim_cur = changes[i].soft;
		if (changes[i].lower_hard)
			rl.rlim_max = changes[i].soft;
		if (setrlimit(changes[i].res, &rl)) {
			pr_perror("setrlimit(%d)", changes[i].res);
			return 1;
		}
	}
	for (int r = 0; r < RLIM_NLIMITS; r++)
		if (getrlimit(r, &before[r])) {
			pr_perror("getrlimit(%d)", r);
			return 1;
		}

	test_daemon();
	test_waitsig();

	for (int r = 0; r < RLIM_NLIMITS; r++) {
		if (getrlimit(r, &rl))
			return fail_perror("getrlimit(%d)", r);
		if (rl.rlim_cur != before[r].rlim_cur || rl.rlim_max != before[r].rlim_max)
			fail("limit %d is %llu/%llu, expected %llu/%llu", r,
			     (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
			     (unsigned long long)before[r].rlim_cur,
			     (unsigned long long)before[r].rlim_max);
	}
	return pass();
}
