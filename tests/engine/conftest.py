"""Fixtures shared by the engine tests (tests/engine/test_*.py); their helpers live in the
support modules: dump_support.py (victim, small tree), target_support.py (ktarget) and
blob_support.py (the blob runner's region)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.kernel import blob, ptrace, uapi
from engine.kernel import sys as ksys
from tests.engine import cr_support as cr
from tests.engine.blob_support import REGION, REGION_SIZE
from tests.engine.dump_support import MEMTREE_TASKS, VICTIM_C, SmallTree, Victim
from tests.engine.target_support import Target, build_target, reap

# -- the dump tests' victim and small tree (dump_support.py) --------------------------------


@pytest.fixture(scope="session")
def victim_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The victim binary, built once per session."""
    d = tmp_path_factory.mktemp("victim-build")
    src = d / "victim.c"
    src.write_text(VICTIM_C)
    out = d / "victim"
    subprocess.run(["gcc", "-O1", "-Wall", "-o", str(out), str(src)], check=True, timeout=60)
    return out


@pytest.fixture
def victim(victim_bin: Path, tmp_path: Path) -> Iterator[Victim]:
    """A fresh running victim; killed and reaped at teardown whatever happened."""
    work = tmp_path / "victim"
    work.mkdir()
    proc = subprocess.Popen([str(victim_bin), str(work)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line and line[0] == "ready", f"victim did not start: {line}"
        addrs = [int(x, 16) for x in line[1:]]
        v = Victim(proc, work, *addrs)
        yield v
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)


@pytest.fixture
def small_tree() -> Iterator[SmallTree]:
    """A process with a second thread, a sleeping child and a zombie child."""
    code = ("import os, threading, time\n"
            "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
            "z = os.fork()\n"
            "if z == 0: os._exit(7)\n"
            "c = os.fork()\n"
            "if c == 0: time.sleep(60); os._exit(0)\n"
            "print(z, c, flush=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    zombie, child = (int(x) for x in proc.stdout.readline().split())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{zombie}/stat").read_text().split(") ")[1][0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        yield proc, zombie, child
    finally:
        for pid in (child, proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=10)


# -- ktargets of the kernel-layer tests (target_support.py) ---------------------------------


@pytest.fixture
def spawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Target]]:
    """Start ktargets: yields spawn(mode, *args) -> Target; all are killed at teardown."""
    binary = build_target(tmp_path_factory)
    started: list[Target] = []

    def start(mode: str, *args: str) -> Target:
        t = Target(binary, mode, *args)
        started.append(t)
        return t

    yield start
    for t in started:
        t.kill()


# -- the in-target syscall table runner (blob_support.py) ----------------------------------


@pytest.fixture
def runner() -> Iterator[blob.BlobRunner]:
    """A forked child with an RWX region at REGION, seized and stopped, and a runner."""
    pid = os.fork()
    if pid == 0:
        try:
            ksys.mmap(REGION, REGION_SIZE, uapi.PROT_READ | uapi.PROT_WRITE | uapi.PROT_EXEC,
                      uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS | uapi.MAP_FIXED_NOREPLACE)
            while True:
                time.sleep(1)
        finally:
            os._exit(1)
    try:
        # Wait until the child mapped its region before stopping it.
        deadline = time.monotonic() + 5
        while f"{REGION:x}-" not in Path(f"/proc/{pid}/maps").read_text():
            assert time.monotonic() < deadline, "child did not map its region"
            time.sleep(0.005)
        ptrace.seize(pid, uapi.PTRACE_O_EXITKILL)
        ptrace.interrupt(pid)
        ptrace.wait_stop(pid, 5)
        r = blob.BlobRunner(pid, REGION, REGION_SIZE)
        yield r
        r.close()
    finally:
        reap(pid, 5.0)


# -- a tree of small processes with memory of their own (data/memtree.c) ----------------


@pytest.fixture(scope="session")
def memtree_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/memtree.c, built once per session."""
    return cr.build_c(Path(__file__).parent / "data" / "memtree.c", tmp_path_factory)


@pytest.fixture
def memtree(memtree_bin: Path) -> Iterator[list[int]]:
    """The pids of a tree of MEMTREE_TASKS processes (data/memtree.c) with 256 KiB of
    memory each, all asleep."""
    proc = subprocess.Popen([str(memtree_bin), str(MEMTREE_TASKS)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "ready\n"
        pids = cr.tree_of(proc.pid)
        assert len(pids) == MEMTREE_TASKS
        yield pids
    finally:
        for pid in reversed(cr.tree_of(proc.pid) if proc.poll() is None else []):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.wait(timeout=10)
