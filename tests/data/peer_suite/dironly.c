/* Started by its suite's Makefile with --dirname only. */
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "peerlib.h"

static const char *dir_opt;

int main(int argc, char **argv)
{
	struct peer_opt opts[] = { { "dirname", &dir_opt, 1 }, { NULL, NULL, 0 } };
	struct stat st;
	int fd;

	peer_init(argc, argv, opts);
	if (mkdir(dir_opt, 0755))
		peer_fail("mkdir %s", dir_opt);
	fd = open(dir_opt, O_RDONLY | O_DIRECTORY);
	if (fd < 0)
		peer_fail("open %s", dir_opt);
	peer_ready();
	peer_wait_term();
	if (fstat(fd, &st) || !S_ISDIR(st.st_mode))
		peer_fail("directory fd lost");
	peer_pass();
}
