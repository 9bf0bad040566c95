/* A pattern in memory that must survive C/R; built under several names (see Makefile). */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "peerlib.h"

#define SIZE (1 << 20)

int main(int argc, char **argv)
{
	unsigned char *buf;
	size_t i;

	peer_init(argc, argv, NULL);
#ifdef WAIT_SYNC
	/* like a test that needs its suite's --post-start hook to have done its part */
	for (i = 0; access(WAIT_SYNC, F_OK); i++) {
		if (i > 200)
			peer_fail("%s never appeared", WAIT_SYNC);
		usleep(50000);
	}
#endif
	buf = malloc(SIZE);
	if (!buf)
		peer_fail("malloc");
	for (i = 0; i < SIZE; i++)
		buf[i] = (unsigned char)(i * 7 + 3);
	peer_ready();
	peer_wait_term();
	for (i = 0; i < SIZE; i++)
		if (buf[i] != (unsigned char)(i * 7 + 3))
			peer_fail("byte %zu changed", i);
	peer_pass();
}
