"""Helpers of the dump tests (test_dump_*.py): the engine's command line, and the victim.

The victim (C, built once per session by the ``victim_bin`` fixture of conftest.py) sets up
the state the dumper must record and must not disturb: private anonymous memory with a
pattern, a PROT_NONE region with data, a growsdown region with data in its lowest page,
anonymous shared memory of which the upper half is no longer mapped (resident pages mapped
by no task), a pipe with unread data, a file with an offset and O_APPEND, an unlinked open
file, a signal handler, a blocked and pending signal, an alternate signal stack. It then
counts in a shared file mapping (so a test can see it run) until SIGTERM, verifies all of
it, and exits 0, or with the number of the first failed check (message on stderr).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: Processes of the memtree fixture (conftest.py, data/memtree.c).
MEMTREE_TASKS = 8


def run_engine(*args: str, env: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m engine ARGS` from the repository, with a deadline."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False)


VICTIM_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define ANON_PAGES 1024
#define PG 4096
static volatile sig_atomic_t stop;
static void on_term(int s) { (void)s; stop = 1; }
static void on_usr1(int s) { (void)s; }
static int fail(int code, const char *what) { fprintf(stderr, "FAIL %d: %s\n", code, what); return code; }

int main(int argc, char **argv) {
    const char *dir = argv[1];
    char path[4096];
    if (chdir(dir)) return 90;
    /* 1. private anonymous pattern */
    unsigned char *anon = mmap(0, ANON_PAGES * PG, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
    for (int i = 0; i < ANON_PAGES; i += 3) memset(anon + i * PG, (i * 7 + 1) & 0xff, PG);
    /* 2. PROT_NONE with data */
    unsigned char *none = mmap(0, 2 * PG, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
    memset(none, 0x5a, 2 * PG);
    mprotect(none, 2 * PG, PROT_NONE);
    /* 3. growsdown region, data in its lowest page, a neighbour below */
    unsigned char *below = mmap(0, 64 * PG, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
    unsigned char *gd = mmap(below + 32 * PG, 8 * PG, PROT_READ|PROT_WRITE,
                             MAP_PRIVATE|MAP_ANONYMOUS|MAP_GROWSDOWN|MAP_FIXED, -1, 0);
    munmap(below + 8 * PG, 24 * PG);
    memset(gd, 0x6b, PG);
    /* 4. shared anonymous, upper half unmapped but still resident in the object */
    unsigned char *shm = mmap(0, 64 * PG, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS, -1, 0);
    for (int i = 0; i < 64; i++) memset(shm + i * PG, 0x80 + i, PG);
    munmap(shm + 32 * PG, 32 * PG);
    /* 5. pipe with unread data (fds 3 and 4 in a fresh process) */
    int p[2];
    if (pipe(p)) return 91;
    if (write(p[1], "pipe-data-123", 13) != 13) return 92;
    /* 6. regular file with offset and O_APPEND, an unlinked open file */
    int rf = open("regular.txt", O_CREAT|O_RDWR|O_APPEND, 0600);
    if (write(rf, "hello", 5) != 5) return 93;
    int uf = open("unlinked.txt", O_CREAT|O_RDWR, 0600);
    if (write(uf, "ghost-content", 13) != 13) return 94;
    unlink("unlinked.txt");
    /* 7. signals */
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART | SA_ONSTACK;
    sigaddset(&sa.sa_mask, SIGHUP);
    sigaction(SIGUSR1, &sa, 0);
    signal(SIGTERM, on_term);
    sigset_t ss;
    sigemptyset(&ss);
    sigaddset(&ss, SIGUSR2);
    sigprocmask(SIG_BLOCK, &ss, 0);
    kill(getpid(), SIGUSR2);
    static char altstack[65536];
    stack_t st = { .ss_sp = altstack, .ss_size = sizeof(altstack) };
    sigaltstack(&st, 0);
    /* 8. counter in a shared file mapping, so a test sees us run */
    int cf = open("counter", O_CREAT|O_RDWR, 0600);
    if (ftruncate(cf, PG)) return 95;
    volatile unsigned long *counter = mmap(0, PG, PROT_READ|PROT_WRITE, MAP_SHARED, cf, 0);
    close(cf);
    printf("ready %p %p %p %p\n", (void *)anon, (void *)none, (void *)gd, (void *)shm);
    fflush(stdout);
    struct timespec ts = {0, 1000000};
    while (!stop) { (*counter)++; nanosleep(&ts, 0); }

    for (int i = 0; i < ANON_PAGES; i++)
        for (int j = 0; j < PG; j += 512)
            if (anon[i * PG + j] != (i % 3 ? 0 : (i * 7 + 1) & 0xff)) return fail(1, "anon memory");
    mprotect(none, 2 * PG, PROT_READ);
    for (int j = 0; j < 2 * PG; j++) if (none[j] != 0x5a) return fail(2, "PROT_NONE memory");
    for (int j = 0; j < PG; j++) if (gd[j] != 0x6b) return fail(3, "growsdown memory");
    for (int i = 0; i < 32; i++) if (shm[i * PG + 7] != 0x80 + i) return fail(4, "shared memory");
    char buf[64] = {0};
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    if (read(p[0], buf, sizeof(buf)) != 13 || memcmp(buf, "pipe-data-123", 13)) return fail(5, "pipe data");
    if (lseek(rf, 0, SEEK_CUR) != 5 || !(fcntl(rf, F_GETFL) & O_APPEND)) return fail(6, "file offset/flags");
    if (pread(uf, buf, 13, 0) != 13 || memcmp(buf, "ghost-content", 13) || lseek(uf, 0, SEEK_CUR) != 13)
        return fail(7, "unlinked file");
    struct sigaction old;
    sigaction(SIGUSR1, 0, &old);
    if (old.sa_handler != on_usr1 || !(old.sa_flags & SA_RESTART) || !sigismember(&old.sa_mask, SIGHUP))
        return fail(8, "sigaction");
    sigset_t cur, pend;
    sigprocmask(SIG_BLOCK, 0, &cur);
    sigpending(&pend);
    if (!sigismember(&cur, SIGUSR2) || !sigismember(&pend, SIGUSR2)) return fail(9, "blocked/pending SIGUSR2");
    stack_t cst;
    sigaltstack(0, &cst);
    if (cst.ss_sp != altstack || cst.ss_size != sizeof(altstack)) return fail(10, "sigaltstack");
    return 0;
}
"""


@dataclass
class Victim:
    """A running victim process (our child) and where its state lives."""

    proc: subprocess.Popen[str]
    workdir: Path
    anon: int
    prot_none: int
    growsdown: int
    shmem: int

    @property
    def pid(self) -> int:
        """The victim's pid."""
        return self.proc.pid

    def counter(self) -> int:
        """The count the victim keeps in its shared file mapping."""
        return int.from_bytes((self.workdir / "counter").read_bytes()[:8], "little")

    def is_running(self, within: float = 2.0) -> bool:
        """True when the counter advances within `within` seconds."""
        start = self.counter()
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.counter() != start:
                return True
            time.sleep(0.005)
        return False

    def proc_status(self) -> dict[str, str]:
        """/proc/PID/status as a dict."""
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            out[k] = v.strip()
        return out

    def fd_table(self) -> dict[int, tuple[str, str, str]]:
        """fd -> (target, pos, flags) as /proc shows them."""
        table = {}
        for name in os.listdir(f"/proc/{self.pid}/fd"):
            fd = int(name)
            info = dict(line.split(":\t", 1) for line in
                        Path(f"/proc/{self.pid}/fdinfo/{fd}").read_text().splitlines()
                        if ":\t" in line)
            table[fd] = (os.readlink(f"/proc/{self.pid}/fd/{fd}"), info["pos"], info["flags"])
        return table

    def memory_digest(self) -> bytes:
        """Bytes of the anon region (4 MiB) and the growsdown page, via /proc/PID/mem."""
        fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY)
        try:
            return os.pread(fd, 1024 * 4096, self.anon) + os.pread(fd, 4096, self.growsdown)
        finally:
            os.close(fd)

    def finish(self, timeout: float = 10.0) -> tuple[int, str]:
        """SIGTERM, wait; returns (exit status, stderr)."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        try:
            _out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            _out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err


# (process, zombie child pid, sleeping child pid): the ``small_tree`` fixture
SmallTree = tuple[subprocess.Popen[str], int, int]
