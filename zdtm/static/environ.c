/*
 * environ: the environment. The test re-executes itself with a marker variable so that the
 * kernel's copy of the initial environment (/proc/self/environ, mm env_start..env_end) holds
 * it; it then adds a variable at run time (libc heap). After restore both are visible the
 * same way: /proc/self/environ is byte-identical and getenv() finds both values.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "zdtmtst.h"

#define MARK_VAR "ZDTM_ENVIRON_MARK"
#define MARK_VAL "initial environment, before exec"
#define LATE_VAR "ZDTM_ENVIRON_LATE"
#define LATE_VAL "set with setenv() after start"
#define ENV_MAX 65536

static char env_before[ENV_MAX], env_after[ENV_MAX];

static ssize_t read_environ(char *buf)
{
	return test_read_file("/proc/self/environ", buf, ENV_MAX);
}

int main(int argc, char **argv)
{
	ssize_t len0, len1;
	const char *v;

	if (!getenv(MARK_VAR)) {
		/* Before test_init(): nothing is redirected yet, errors go to the caller. */
		if (setenv(MARK_VAR, MARK_VAL, 1) == 0)
			execv("/proc/self/exe", argv);
		perror("environ: re-exec with the marker");
		return 1;
	}
	test_init(argc, argv);

	if (setenv(LATE_VAR, LATE_VAL, 1)) {
		pr_perror("setenv");
		return 1;
	}
	len0 = read_environ(env_before);
	if (len0 <= 0 || !memmem(env_before, (size_t)len0, MARK_VAR "=" MARK_VAL,
				 sizeof(MARK_VAR "=" MARK_VAL))) {
		pr_err("/proc/self/environ does not hold the marker");
		return 1;
	}

	test_daemon();
	test_waitsig();

	len1 = read_environ(env_after);
	if (len1 < 0)
		return fail_perror("read /proc/self/environ");
	if (len1 != len0 || memcmp(env_before, env_after, (size_t)len0))
		fail("/proc/self/environ changed (%zd bytes, was %zd)", len1, len0);
	v = getenv(MARK_VAR);
	if (!v || strcmp(v, MARK_VAL))
		fail("getenv(%s) = %s", MARK_VAR, v ? v : "(null)");
	v = getenv(LATE_VAR);
	if (!v || strcmp(v, LATE_VAL))
		fail("getenv(%s) = %s", LATE_VAR, v ? v : "(null)");
	return pass();
}
