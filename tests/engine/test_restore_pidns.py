"""A tree in its own pid namespace (flavour ns) is restored with its pids inside that
namespace; outside it the kernel chooses, so the restore does not depend on the dumped
outer pids being free (on a busy machine another process may hold them by then)."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from engine.kernel import sys as ksys
from engine.kernel.structs import CloneArgs
from tests.engine import cr_support as cr
from tests.fake_support import build_fake
from zdtm import plumbing

DEADLINE = 30.0


def _inner_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    raise AssertionError(f"no NSpid line for {pid}")


def _hold(pid: int) -> int | None:
    """A process of ours with exactly this pid (a sleep), or None if someone else holds it
    already."""
    argv = [b"/bin/sleep", b"60"]
    tids = (ctypes.c_int * 1)(pid)
    args = CloneArgs()
    args.exit_signal = signal.SIGCHLD
    args.set_tid = ctypes.addressof(tids)
    args.set_tid_size = 1
    try:
        child = ksys.clone3(args)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            return None
        raise
    if child == 0:
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    return child


def _wait_file(path: Path) -> str:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path}: nothing written within {DEADLINE}s")


def test_restores_while_the_dumped_outer_pids_are_taken(tmp_path: Path) -> None:
    cr.become_subreaper()
    top = Path(tempfile.mkdtemp(prefix="zdtm-pidns-"))
    holders: list[int] = []
    restored: list[int] = []
    try:
        flavor, work = cr.flavor_work(top, "ns")
        build_fake("PASS", top / "fake")
        st = flavor.start([str(top / "fake"), "--pidfile=t.pid", "--outfile=t.out"],
                          work, "t.pid", 60.0, work / "start.log")
        dumped = [st.root_pid, *plumbing.descendants(st.root_pid)]
        test_inner = _inner_pid(st.test_pid)
        d = cr.engine("dump", "-t", str(st.root_pid), "-D", str(tmp_path / "img"))
        assert d.returncode == 0, d.stderr
        assert plumbing.wait_gone(dumped, 10.0) == []
        holders = [h for h in map(_hold, dumped) if h is not None]
        assert all(os.path.exists(f"/proc/{p}") for p in dumped)  # ours or another's
        pidfile = tmp_path / "restored.pid"
        r = cr.engine("restore", "-D", str(tmp_path / "img"), "-d", "--root", str(work),
                      "--pidfile", str(pidfile))
        assert r.returncode == 0, r.stderr
        root = int(pidfile.read_text())
        restored = [root, *plumbing.descendants(root)]
        assert root not in dumped and _inner_pid(root) == 1
        test = plumbing.host_pid_in_ns(root, test_inner)
        assert test is not None and test not in dumped
        os.kill(test, signal.SIGTERM)
        assert "PASS" in _wait_file(work / "t.out")
    finally:
        plumbing.kill_tree([p for p in restored if os.path.exists(f"/proc/{p}")], 10.0)
        plumbing.kill_tree(holders, 10.0)
        shutil.rmtree(top)
