/* Declares both --dirname and --filename (its suite has no start rule for it). */
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "peerlib.h"

static const char *dir_opt, *file_opt;

int main(int argc, char **argv)
{
	struct peer_opt opts[] = {
		{ "dirname", &dir_opt, 1 },
		{ "filename", &file_opt, 1 },
		{ NULL, NULL, 0 },
	};
	char buf[8] = "";
	struct stat st;
	int fd;

	peer_init(argc, argv, opts);
	if (mkdir(dir_opt, 0755))
		peer_fail("mkdir %s", dir_opt);
	fd = open(file_opt, O_RDWR | O_CREAT | O_EXCL, 0644);
	if (fd < 0 || write(fd, "peer", 4) != 4)
		peer_fail("create %s", file_opt);
	peer_ready();
	peer_wait_term();
	if (stat(dir_opt, &st) || !S_ISDIR(st.st_mode))
		peer_fail("%s is not a directory", dir_opt);
	if (pread(fd, buf, 4, 0) != 4 || memcmp(buf, "peer", 4))
		peer_fail("%s lost its content", file_opt);
	if (lseek(fd, 0, SEEK_CUR) != 4)
		peer_fail("offset moved");
	peer_pass();
}
