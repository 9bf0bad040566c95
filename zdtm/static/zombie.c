/*
 * zombie: a child that exited with status 42 and was not reaped yet. After restore it is
 * still a zombie (state Z) and waitpid() reaps it with the same exit status.
 */
#include <sys/wait.h>
#include <unistd.h>

#include "zdtmtst.h"

#define EXIT_CODE 42

/* The state letter of a process from /proc/PID/stat, or '?' when it cannot be read. */
static char proc_state(pid_t pid)
{
	char state;

	return proc_stat(pid, &state, NULL) ? '?' : state;
}

int main(int argc, char **argv)
{
	siginfo_t si = { 0 };
	int status;
	pid_t child;

	test_init(argc, argv);

	child = fork();
	if (child < 0) {
		pr_perror("fork");
		return 1;
	}
	if (!child)
		_exit(EXIT_CODE);
	/* Wait for the exit without reaping (WNOWAIT), with a deadline. */
	for (int i = 0; i < 5000 && si.si_pid != child; i++) {
		if (waitid(P_PID, (id_t)child, &si, WEXITED | WNOWAIT | WNOHANG)) {
			pr_perror("waitid");
			return 1;
		}
		if (si.si_pid != child)
			usleep(1000);
	}
	if (si.si_pid != child) {
		pr_err("child %d did not exit", child);
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (proc_state(child) != 'Z')
		fail("child %d is in state %c, not a zombie", child, proc_state(child));
	if (waitpid(child, &status, WNOHANG) != child)
		return fail_perror("the zombie %d cannot be reaped", child);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != EXIT_CODE)
		return fail("zombie status %#x, expected exit code %d", status, EXIT_CODE);
	return pass();
}
