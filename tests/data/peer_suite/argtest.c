/* Needs the arguments its suite's Makefile gives it: --envname and --mask (both mandatory). */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "peerlib.h"

static const char *envname, *mask;

int main(int argc, char **argv)
{
	struct peer_opt opts[] = {
		{ "envname", &envname, 1 },
		{ "mask", &mask, 1 },
		{ NULL, NULL, 0 },
	};
	mode_t want, got;
	const char *v;

	peer_init(argc, argv, opts);
	want = (mode_t)strtol(mask, NULL, 8);
	umask(want);
	if (setenv(envname, "peer-value", 1))
		peer_fail("setenv");
	peer_ready();
	peer_wait_term();
	got = umask(0);
	v = getenv(envname);
	if (got != want)
		peer_fail("umask %o, want %o", got, want);
	if (!v || strcmp(v, "peer-value"))
		peer_fail("%s is %s", envname, v ? v : "unset");
	peer_pass();
}
