"""End to end: zdtm static test programs through the engine's CLI, dump -> restore, x3.

Each iteration dumps the (restored) task, restores it detached, and the test program
itself verifies its state when SIGTERMed at the end. The harness adds the /proc and
memory comparisons on top; here the verdict of the program and the engine's own exit
codes are what is checked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.proc.stat import read_stat
from tests.engine import cr_support as cr

# Single-process tests of the first milestone.
SINGLE = [
    "cwd", "devnull", "environ", "file_offset_append", "file_unlinked", "grow_stack",
    "maps06", "mem_anon", "mem_execonly", "mem_file_private", "mem_file_shared",
    "mem_mprotect_split", "mem_mremap", "mem_protnone", "mem_readonly", "mem_sparse",
    "pipe_data", "rlimits", "shmem_datagen_single", "sig_handlers", "sigaltstack", "umask",
]
# Trees, threads and objects shared between processes.
TREES = ["fd_shared_offset", "fork_child", "memfd_shared", "pipe_between", "session_pgid",
         "shmem_datagen", "thread", "zombie"]
ITERATIONS = 3


@pytest.fixture(autouse=True)
def _subreaper() -> None:
    cr.become_subreaper()


@pytest.fixture
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[cr.ZdtmTest]:
    """The zdtm test named by the test's parameter, started in tmp_path/work."""
    t = cr.ZdtmTest.start(request.param, tmp_path / "work")
    try:
        yield t
    finally:
        t.cleanup()


@pytest.mark.parametrize("running", SINGLE + TREES, indirect=True)
def test_dump_restore_iterations(running: cr.ZdtmTest, tmp_path: Path) -> None:
    """dump (kill) -> restore -d, three times, then the program's own verdict is PASS."""
    for i in range(ITERATIONS):
        r = cr.dump_restore(running, tmp_path / f"img{i}")
        assert r.returncode == 0, f"iteration {i}: {r.stderr}"
        assert cr.state(running.pid) in "RS", f"iteration {i}: not running"
    assert "PASS" in running.stop()


@pytest.mark.parametrize("running", ["mem_anon", "sig_handlers", "pipe_data", "thread",
                                     "fork_child"], indirect=True)
def test_leave_stopped_then_sigcont(running: cr.ZdtmTest, tmp_path: Path) -> None:
    """--leave-stopped: the task is in group-stop ('T') when restore returns; SIGCONT
    resumes it and it passes."""
    for i in range(ITERATIONS):
        r = cr.dump_restore(running, tmp_path / f"img{i}", leave_stopped=True)
        assert r.returncode == 0, r.stderr
        tasks = cr.tree_of(running.pid)
        assert all(cr.state(p) == "T" for p in tasks), tasks
        for p in tasks:
            os.kill(p, signal.SIGCONT)
    assert "PASS" in running.stop()


@pytest.mark.parametrize("running", ["mem_anon", "file_offset_append", "unix_named",
                                     "unix_listen_pending", "unix_scm_rights", "pty_pair"],
                         indirect=True)
def test_leave_running_dump(running: cr.ZdtmTest, tmp_path: Path) -> None:
    """dump --leave-running leaves the same process running; a restore of that image
    later (after the original is gone) also passes."""
    for i in range(ITERATIONS):
        d = cr.dump_restore(running, tmp_path / f"img{i}", leave_running=True)
        assert d.returncode == 0, d.stderr
        assert cr.state(running.pid) in "RS"
    os.kill(running.pid, signal.SIGKILL)
    cr.wait_gone(running.pid)
    r = cr.engine("restore", "-D", str(tmp_path / f"img{ITERATIONS - 1}"), "-d")
    assert r.returncode == 0, r.stderr
    assert "PASS" in running.stop()


@pytest.mark.parametrize("running", ["mem_anon"], indirect=True)
def test_foreground_restore_waits(running: cr.ZdtmTest, tmp_path: Path) -> None:
    """Without -d the engine stays the restored task's parent and exits with its status."""
    d = cr.engine("dump", "-t", str(running.pid), "-D", str(tmp_path / "img"))
    assert d.returncode == 0, d.stderr
    cr.wait_gone(running.pid)
    proc = subprocess.Popen([sys.executable, "-m", "engine", "restore", "-D",
                             str(tmp_path / "img")], cwd=cr.ROOT)
    try:
        deadline = time.monotonic() + 30
        while not cr.released(running.pid, running.name):
            assert time.monotonic() < deadline, "restored task did not appear"
            assert proc.poll() is None, "engine exited early"
            time.sleep(0.02)
        assert read_stat(running.pid).ppid == proc.pid
        os.kill(running.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    out = (running.workdir / "mem_anon.out").read_text().strip().splitlines()[-1]
    assert "PASS" in out
    running.pid = 0  # reaped by the engine, nothing left to clean
