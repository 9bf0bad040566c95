"""Dumps of trees that keep changing: pre-dumps of a process that forks, starts threads
and has them exit all the time never fail, record only what could be stopped, and report
how long the tree was frozen. The copy made while the tree runs on stores memory unmapped
meanwhile as zeros."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.dump import pages, tree
from engine.errors import EngineError
from engine.images import load
from tests.engine.dump_support import run_engine

PG = 4096

CHURN_C = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static void *brief(void *arg) { (void)arg; return NULL; }
static void *doomed(void *arg) { (void)arg; usleep(50); exit(3); }   /* exit_group */
int main(void) {
    char *mem = malloc(8 << 20);
    struct timespec nap = { 0, 100 * 1000 };
    for (unsigned long n = 0;; n++) {
        pthread_t th;
        pid_t pid = fork();
        if (pid == 0) {                 /* a child with threads that exits at once */
            pthread_create(&th, NULL, n % 2 ? doomed : brief, NULL);
            if (n % 2 == 0)
                _exit(5);
            pause();
        }
        if (pthread_create(&th, NULL, brief, NULL) == 0)
            pthread_detach(th);
        memset(mem + (n % 2048) * 4096, (int)n, 4096);
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
        nanosleep(&nap, NULL);
    }
}
"""


@pytest.fixture(scope="module")
def churn_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("churn")
    (d / "churn.c").write_text(CHURN_C)
    subprocess.run(["gcc", "-O1", "-pthread", "-o", str(d / "churn"), str(d / "churn.c")],
                   check=True, timeout=60)
    return d / "churn"


def _stats(img: Path) -> dict[str, object]:
    return json.loads((img / "stats.json").read_text())


def test_pre_dump_chain_of_a_churning_tree(churn_bin: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen([str(churn_bin)], start_new_session=True)
    try:
        parent: Path | None = None
        for k in range(10):
            d = tmp_path / f"pre{k}"
            args = ["pre-dump", "-t", str(proc.pid), "-D", str(d)]
            if parent is not None:
                args += ["--prev-images-dir", str(parent)]
            res = run_engine(*args)
            assert res.returncode == 0, res.stderr
            assert "pre-dump: frozen" in res.stderr
            st = _stats(d)
            assert st["kind"] == "pre-dump" and float(st["frozen_s"]) > 0
            assert st["pages_frozen"] == 0  # private pages are copied once it runs again
            assert int(st["pages_total"]) > 0
            img = load(str(d))
            for t in img.tasks.values():  # every recorded thread was really stopped
                if t.core.state != "zombie":
                    assert [th.tid for th in t.core.threads]
            parent = d
            assert proc.poll() is None
        res = run_engine("dump", "-t", str(proc.pid), "-D", str(tmp_path / "final"),
                         "--prev-images-dir", str(parent), "--leave-running")
        assert res.returncode == 0, res.stderr
        st = _stats(tmp_path / "final")
        assert st["kind"] == "dump" and st["pages_frozen"] == st["pages_total"]
        assert int(st["pages_in_parent"]) > 0  # the untouched part of the 8 MiB
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_copy_of_a_running_task_stores_unmapped_memory_as_zeros() -> None:
    """_pread_or_zero over [data][hole][data] of our own memory: the hole reads as zeros,
    the rest as it is (what a pre-dump's copy does when the task unmapped a page); the
    strict reader of a frozen dump fails there instead."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    addr = libc.mmap(None, 3 * PG, mmap.PROT_READ | mmap.PROT_WRITE,
                     mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    ctypes.memmove(addr, b"a" * PG + b"b" * PG + b"c" * PG, 3 * PG)
    assert libc.munmap(ctypes.c_void_p(addr + PG), PG) == 0
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        buf = bytearray(b"x" * 3 * PG)
        pages._pread_or_zero(fd, memoryview(buf), addr)
        assert bytes(buf) == b"a" * PG + bytes(PG) + b"c" * PG
        with pytest.raises(EngineError, match="read at"):
            pages._pread_exact(fd, memoryview(bytearray(3 * PG)), addr)
    finally:
        os.close(fd)
        libc.munmap(ctypes.c_void_p(addr), 3 * PG)


def _threads_of(pid: int) -> list[int]:
    deadline = time.monotonic() + 5
    while len(tids := sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))) < 2:
        assert time.monotonic() < deadline, "its second thread did not start"
        time.sleep(0.01)
    return tids


@pytest.mark.parametrize("killed", [True, False])
def test_threads_stopped_before_their_process_was_killed_are_not_frozen(killed: bool) -> None:
    """A process killed (as by a thread's exit_group) after some of its threads were
    stopped: the freeze waits for their deaths and drops them, instead of counting a
    dying process as frozen; threads without a SIGKILL are left stopped."""
    code = ("import threading, time\n"
            "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    frozen = tree.FrozenTree(proc.pid, {}, [])
    try:
        p = tree.Proc(proc.pid, os.getpid(), proc.pid, proc.pid, "alive")
        for tid in _threads_of(proc.pid):
            assert tree._seize_thread(frozen, p, tid)
            p.threads.append(tid)
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
        assert tree._reap_killed(frozen, p) is killed
        assert (p.threads == []) is killed and (frozen.seized == []) is killed
    finally:
        frozen.release()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
