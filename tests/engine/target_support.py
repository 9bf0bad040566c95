"""The C target program of the kernel-layer tests (ktarget), its build, and a tiny process
handle. The ``spawn`` fixture of conftest.py starts targets; test_kernel_*/test_proc_*
modules use ``Target`` and ``reap`` from here.

The program (source below) prints ``ready PID`` once it is about to enter the behaviour
its mode names (nanosleep, read, pause, userns, sigsuspend, spin, rseq, pending, threads, state), and
``result ...`` when that behaviour ends.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine.kernel import uapi
from engine.kernel.structs import CloneArgs

SOURCE = r"""/* Test target for the engine's kernel-layer tests: one mode per behaviour. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/rseq.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t handled;
static void on_sig(int sig) { (void)sig; handled++; }

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void ready(void)
{
	printf("ready %d\n", getpid());
	fflush(stdout);
}

static void *idle_thread(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return NULL;
}

static int mode_spin(void)
{
	/* Keep known values in xmm0/xmm1 and a counter; report if they ever change. */
	unsigned long long a = 0x1122334455667788ULL, b = 0x99aabbccddeeff00ULL, x, y;
	signal(SIGUSR1, on_sig);
	ready(); /* before loading: printf may use xmm registers */
	__asm__ volatile("movq %0, %%xmm0\n\tmovq %1, %%xmm1" : : "r"(a), "r"(b) : "xmm0", "xmm1");
	while (!handled) {
		__asm__ volatile("movq %%xmm0, %0\n\tmovq %%xmm1, %1" : "=r"(x), "=r"(y));
		if (x != a || y != b) {
			printf("result corrupt %llx %llx\n", x, y);
			return 3;
		}
	}
	printf("result ok\n");
	return 0;
}

/* rseq mode: spin inside an rseq critical section registered in glibc's rseq area
 * (rdi = &rseq->rseq_cs, rsi = descriptor, rdx = &handled); count aborts. */
static volatile unsigned long aborts;
void rseq_loop(unsigned long long *cs_field, void *desc, volatile sig_atomic_t *flag);
extern char cs_start[], cs_end[], cs_abort[];
__asm__(".text\n"
	"rseq_loop:\n"
	"	movq %rsi, (%rdi)\n"
	"cs_start:\n"
	"	cmpl $0, (%rdx)\n"
	"	je cs_start\n"
	"cs_end:\n"
	"	movq $0, (%rdi)\n"
	"	ret\n"
	"	.long 0x53053053\n"
	"cs_abort:\n"
	"	lock incq aborts(%rip)\n"
	"	jmp rseq_loop\n");

static int mode_rseq(void)
{
	static struct rseq_cs cs __attribute__((aligned(32)));
	struct rseq *rs = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);

	if (__rseq_size == 0)
		return 4; /* glibc did not register rseq */
	cs.start_ip = (unsigned long)cs_start;
	cs.post_commit_offset = (unsigned long)(cs_end - cs_start);
	cs.abort_ip = (unsigned long)cs_abort;
	signal(SIGUSR1, on_sig);
	printf("rseq %lx %lx %lx\n", (unsigned long)cs_start, (unsigned long)cs_end,
	       (unsigned long)cs_abort);
	ready();
	rseq_loop((unsigned long long *)&rs->rseq_cs, &cs, &handled);
	printf("result %lu\n", aborts);
	return 0;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sig; /* no SA_RESTART: an interrupted call must see EINTR */
	setvbuf(stdout, NULL, _IOLBF, 0);

	if (!strcmp(mode, "nanosleep")) {
		long ms = atol(argv[2]);
		struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
		double t0 = now_ms();
		ready();
		int r = nanosleep(&ts, NULL);
		printf("result %d %d %.1f\n", r, r ? errno : 0, now_ms() - t0);
		return 0;
	}
	if (!strcmp(mode, "read")) {
		char buf[64] = "";
		ready();
		ssize_t n = read(0, buf, sizeof(buf) - 1);
		printf("result %zd %d %s\n", n, n < 0 ? errno : 0, n > 0 ? buf : "-");
		return 0;
	}
	if (!strcmp(mode, "pause")) {
		sigaction(SIGUSR1, &sa, NULL);
		if (argc > 2 && !strcmp(argv[2], "catch-quiet")) {
			/* no signal left that the task ignores: each counts as handled, and
			 * one ignored from the start (nohup's SIGHUP) is default again */
			for (int s = 1; s < NSIG; s++) {
				struct sigaction cur;
				if (!sigaction(s, NULL, &cur) && cur.sa_handler == SIG_IGN)
					signal(s, SIG_DFL);
			}
			sigaction(SIGURG, &sa, NULL);
			sigaction(SIGWINCH, &sa, NULL);
			sigaction(SIGCHLD, &sa, NULL);
		}
		ready();
		int r = pause();
		printf("result %d %d %d\n", r, errno, (int)handled);
		return 0;
	}
	if (!strcmp(mode, "sigsuspend")) {
		sigset_t block, empty, after;
		sigaction(SIGUSR1, &sa, NULL);
		sigemptyset(&block);
		sigaddset(&block, SIGUSR1);
		sigaddset(&block, SIGUSR2);
		sigprocmask(SIG_BLOCK, &block, NULL);
		sigemptyset(&empty);
		ready();
		int r = sigsuspend(&empty);
		sigprocmask(SIG_BLOCK, NULL, &after);
		printf("result %d %d %d %d\n", r, errno, (int)handled,
		       sigismember(&after, SIGUSR1) && sigismember(&after, SIGUSR2));
		return 0;
	}
	if (!strcmp(mode, "spin"))
		return mode_spin();
	if (!strcmp(mode, "rseq"))
		return mode_rseq();
	if (!strcmp(mode, "pending")) {
		/* SIGUSR1 blocked and pending process-wide, SIGUSR2 blocked and pending on the thread */
		sigset_t block;
		sigemptyset(&block);
		sigaddset(&block, SIGUSR1);
		sigaddset(&block, SIGUSR2);
		sigprocmask(SIG_BLOCK, &block, NULL);
		kill(getpid(), SIGUSR1);
		syscall(234 /* tgkill */, getpid(), gettid(), SIGUSR2);
		ready();
		for (;;)
			pause();
	}
	if (!strcmp(mode, "userns")) {
		/* pause in a new user namespace (as the uns flavour's tasks live) */
		if (unshare(CLONE_NEWUSER))
			return 5;
		sigaction(SIGUSR1, &sa, NULL);
		ready();
		int r = pause();
		printf("result %d %d %d\n", r, errno, (int)handled);
		return 0;
	}
	if (!strcmp(mode, "threads")) {
		int n = atoi(argv[2]);
		pthread_t t;
		for (int i = 0; i < n; i++)
			pthread_create(&t, NULL, idle_thread, NULL);
		ready();
		for (;;)
			pause();
	}
	if (!strcmp(mode, "state")) {
		/* state for the /proc parser tests; argv[2] is a file to create */
		struct rlimit rl;
		sigset_t block;
		char *gd;
		int fd, p[2];
		pid_t kid;

		umask(027);
		sigemptyset(&block);
		sigaddset(&block, SIGUSR1);
		sigprocmask(SIG_BLOCK, &block, NULL);
		signal(SIGUSR2, SIG_IGN);
		sigaction(SIGINT, &sa, NULL);
		getrlimit(RLIMIT_NOFILE, &rl);
		rl.rlim_cur = 123;
		setrlimit(RLIMIT_NOFILE, &rl);
		fd = open(argv[2], O_CREAT | O_RDWR | O_APPEND, 0600);
		if (fd < 0 || write(fd, "hello world", 11) != 11 || dup2(fd, 7) < 0)
			return 2;
		lseek(7, 5, SEEK_SET);
		if (pipe(p) || dup2(p[0], 8) < 0 || dup2(p[1], 9) < 0)
			return 2;
		gd = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN, -1, 0);
		if (gd == MAP_FAILED)
			return 2;
		gd[3 * 4096] = 1;
		kid = fork();
		if (kid == 0) {
			for (;;)
				pause();
		}
		printf("growsdown %lx child %d\n", (unsigned long)gd, kid);
		ready();
		for (;;)
			pause();
	}
	fprintf(stderr, "unknown mode %s\n", mode);
	return 1;
}
"""

DEADLINE = 30.0


def clone_args_for(pid: int) -> CloneArgs:
    """clone3 arguments of a fork-like child that gets exactly this pid (set_tid)."""
    args = CloneArgs()
    args.exit_signal = signal.SIGCHLD
    arr = (ctypes.c_int * 1)(pid)
    args.set_tid = ctypes.addressof(arr)
    args.set_tid_size = 1
    _clone_tids.append(arr)  # the array must outlive the call
    return args


_clone_tids: list[ctypes.Array[ctypes.c_int]] = []


def reap(pid: int, timeout: float = DEADLINE) -> int | None:
    """SIGKILL our child ``pid`` (traced or not) and collect it; its wait status."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, status = os.waitpid(pid, os.WNOHANG | uapi.WALL)
        except ChildProcessError:
            return None
        if done and not os.WIFSTOPPED(status):
            return status
        time.sleep(0.005)
    raise AssertionError(f"child {pid} did not die within {timeout}s")


class Target:
    """A running ktarget: its pid, a pipe to its stdin and line-wise stdout."""

    def __init__(self, binary: Path, mode: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(binary), mode, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        self._buf = b""
        self.extra: list[int] = []  # other pids it made, killed with it
        self.header = ""  # the line printed before "ready", for modes that print one
        try:
            first = self.line()
            while not first.startswith("ready"):
                self.header = first
                first = self.line()
            assert first == f"ready {self.pid}", first
            words = self.header.split()
            if "child" in words:  # the state mode's forked child: killed with the target
                self.extra.append(int(words[words.index("child") + 1]))
        except BaseException:
            self.kill()  # a target that never got ready is not left behind
            raise

    def line(self, timeout: float = DEADLINE) -> str:
        """The next stdout line (without newline); AssertionError after ``timeout``."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"target {self.pid}: no output within {timeout}s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise AssertionError(f"target {self.pid}: stdout closed, {self._buf!r}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def result(self, timeout: float = DEADLINE) -> list[str]:
        """Fields of the ``result ...`` line."""
        line = self.line(timeout)
        assert line.startswith("result "), line
        return line.split()[1:]

    def wait_in_syscall(self, nr: int, timeout: float = DEADLINE) -> None:
        """Wait until the target sleeps inside syscall ``nr`` (/proc/PID/syscall)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(f"/proc/{self.pid}/syscall", encoding="ascii") as f:
                fields = f.read().split()
            if fields and fields[0] == str(nr):
                with open(f"/proc/{self.pid}/stat", encoding="ascii") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "S":
                        return
            time.sleep(0.002)
        raise AssertionError(f"target {self.pid} never blocked in syscall {nr}")

    def exit_status(self, timeout: float = DEADLINE) -> int:
        """Wait (bounded) for a normal exit; the exit code."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG | uapi.WALL)
            if done and not os.WIFSTOPPED(status):
                self.proc.returncode = status
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.005)
        raise AssertionError(f"target {self.pid} did not exit within {timeout}s")

    def kill(self) -> None:
        """Kill the target and what it made, by pid."""
        for pid in self.extra:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.returncode is None:
            reap(self.pid)
            self.proc.returncode = -9
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


_built: dict[str, Path] = {}


def build_target(factory: pytest.TempPathFactory) -> Path:
    """ktarget compiled into a private temp dir, once per test process."""
    if "bin" not in _built:
        d = factory.mktemp("ktarget")
        src = d / "ktarget.c"
        src.write_text(SOURCE)
        out = d / "ktarget"
        subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-pthread", "-o", str(out), str(src)],
                       check=True, timeout=60)
        _built["bin"] = out
    return _built["bin"]
