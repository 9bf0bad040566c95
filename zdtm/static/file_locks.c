/*
 * file_locks: a POSIX write lock on bytes 10-19 held by a child process, a POSIX read
 * lock to the end of the file held by the test itself, an OFD read lock and a flock
 * write lock held through open files shared by both. After restore another process sees
 * each lock where it was, of its kind, and held by the same process.
 */
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_FILENAME();

static int setlk(int fd, int cmd, short type, off_t start, off_t len)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };

	return fcntl(fd, cmd, &fl);
}

/* Who holds a lock conflicting with a write lock on [start, start+len), seen from a new
 * open file of another process: the holder's pid (-1 for an OFD lock), 0 for none. */
static int holder(int cmd, off_t start, off_t len, short *type)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
	int fd = open(test_filename, O_RDWR);

	if (fd < 0 || fcntl(fd, cmd, &fl))
		return -2;
	close(fd);
	*type = fl.l_type;
	return fl.l_type == F_UNLCK ? 0 : fl.l_pid;
}

static int check_locks(pid_t child, pid_t test)
{
	short type;
	int fd, pid;

	pid = holder(F_GETLK, 10, 10, &type);
	if (pid != child || type != F_WRLCK)
		return fail("bytes 10-19: holder %d type %d, expected the child %d writing", pid,
			    type, child);
	pid = holder(F_GETLK, 1000, 10, &type);
	if (pid != test || type != F_RDLCK)
		return fail("bytes 1000+: holder %d type %d, expected the test %d reading", pid,
			    type, test);
	pid = holder(F_OFD_GETLK, 50, 1, &type);
	if (pid != -1 || type != F_RDLCK)
		return fail("byte 50: OFD holder %d type %d, expected an OFD read lock", pid, type);
	fd = open(test_filename, O_RDONLY);
	if (fd < 0 || flock(fd, LOCK_SH | LOCK_NB) != -1 || errno != EWOULDBLOCK)
		return fail("the flock write lock is gone");
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	int posix_fd, ofd_fd, flock_fd, ready[2], status;
	pid_t child;
	char c;

	test_init(argc, argv);

	posix_fd = open(test_filename, O_RDWR | O_CREAT, 0644);
	ofd_fd = open(test_filename, O_RDWR);
	flock_fd = open(test_filename, O_RDONLY);
	if (posix_fd < 0 || ofd_fd < 0 || flock_fd < 0 || pipe(ready)) {
		pr_perror("open");
		return 1;
	}
	if (setlk(posix_fd, F_SETLK, F_RDLCK, 1000, 0) || setlk(ofd_fd, F_OFD_SETLK, F_RDLCK, 50, 1) ||
	    flock(flock_fd, LOCK_EX | LOCK_NB)) {
		pr_perror("lock");
		return 1;
	}
	child = fork();
	if (child < 0) {
		pr_perror("fork");
		return 1;
	}
	if (child == 0) {
		if (setlk(posix_fd, F_SETLK, F_WRLCK, 10, 10))
			_exit(1);
		close(ready[0]);
		if (write(ready[1], "r", 1) != 1)
			_exit(1);
		pause();
		_exit(0);
	}
	close(ready[1]);
	if (read(ready[0], &c, 1) != 1) {
		pr_err("the child could not lock");
		return 1;
	}

	test_daemon();
	test_waitsig();

	/* POSIX locks never conflict with their own process, and any close of the file drops
	 * them: look from a new process. */
	pid_t checker = fork();

	if (checker == 0)
		_exit(check_locks(child, getppid()) ? 1 : 0);
	if (checker < 0 || waitpid(checker, &status, 0) != checker || status)
		return fail("the locks are not as they were (status %#x)", status);
	kill(child, SIGKILL);
	waitpid(child, &status, 0);
	return pass();
}
