"""The tree made by one syscall table (engine/restore/forktable.py): blob.S's jump of a
clone's child to its own entries and its "zero fails" entries, run in the engine's own
process (blob.LocalTable), and a restore whose table fails in a child."""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

import pytest

from engine.kernel import blob, uapi
from engine.kernel import sys as ksys
from engine.restore import forktable
from engine.restore.files import FilesPlan
from engine.restore.spawn import TaskSetup, TreeSetup
from tests.engine import cr_support as cr
from tests.engine.target_support import clone_args_for

pytestmark = pytest.mark.skipif(blob.local_code() is None,
                                reason="the engine cannot map code executable here")


def _wait_status(local: blob.LocalTable, slot: blob.DataRef) -> int:
    return local.read_slot(slot) & 0xFFFFFFFF


def test_a_forked_child_goes_on_at_the_entry_its_fork_names() -> None:
    """Entry 0 is the child's (exit 7), the parent starts at 1: fork, then wait for the
    saved child pid. The parent runs to the end; the child never returns here."""
    t = blob.Table()
    status = t.slot()
    child = blob.EntryRef()
    child.index = len(t)
    t.add(uapi.SYS_exit_group, 7)
    t.add(uapi.SYS_fork, save=True, jump=child)
    t.add(uapi.SYS_wait4, 0, status, 0, 0, use_saved=0b1)
    local = blob.LocalTable(t)
    assert local.call(1)[0] == len(t)
    assert os.WIFEXITED(_wait_status(local, status))
    assert os.WEXITSTATUS(_wait_status(local, status)) == 7


def test_a_child_whose_entry_fails_reports_it_and_exits() -> None:
    """The child's close(-1) fails: it writes that entry's report (with the errno) on
    the report fd and exits with status 1; the parent's run goes on and sees it."""
    r, w = os.pipe()
    try:
        t = blob.Table()
        status = t.slot()
        child = blob.EntryRef()
        child.index = len(t)
        t.add(uapi.SYS_getpid)
        t.add(uapi.SYS_close, -1)
        parent = len(t)
        t.add(uapi.SYS_fork, save=True, jump=child)
        t.add(uapi.SYS_wait4, 0, status, 0, 0, use_saved=0b1)
        reports = [t.data(blob.child_report(f"entry {i}".encode()))
                   for i in range(len(t) + 1)]
        local = blob.LocalTable(t, w, reports)
        assert local.call(parent)[0] == len(t)
        assert os.WEXITSTATUS(_wait_status(local, status)) == 1
        os.close(w)
        w = -1
        assert blob.parse_child_reports(os.read(r, 4096)) == [(-errno.EBADF, 0, b"entry 1")]
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_a_child_report_names_its_task_and_what_failed() -> None:
    """decode_reports turns a child's report into the engine's error: a clone3 whose pid
    stays taken, and the limit a rows entry failed at."""
    clone = forktable._Step(7, "fork", f"8{forktable._SEP}[8, 1]", "clone")
    raw = blob.child_report(clone.report())
    raw = raw[:8] + (-errno.EEXIST).to_bytes(8, "little", signed=True) + raw[16:]
    assert forktable.decode_reports(raw) == (7, "fork", "pid 8 is taken")
    limits = forktable._Step(9, "files", forktable._SEP.join(["A to (1, 2)", "B to (3, 4)"]),
                             "limits")
    raw = blob.child_report(limits.report())
    raw = (raw[:8] + (-errno.EPERM).to_bytes(8, "little", signed=True)
           + (1).to_bytes(8, "little") + raw[24:])
    assert forktable.decode_reports(raw) == (
        9, "files", f"cannot set limit B to (3, 4): {os.strerror(errno.EPERM)}")


def test_a_zero_result_fails_a_zero_fails_entry_only() -> None:
    """read() of one byte, then read() at end of file: the second entry fails, with 0."""
    r, w = os.pipe()
    try:
        os.write(w, b"g")
        os.close(w)
        t = blob.Table()
        buf = t.slot()
        t.add(uapi.SYS_read, r, buf, 1, zero_fails=True)
        t.add(uapi.SYS_read, r, buf, 1, zero_fails=True)
        assert blob.LocalTable(t).call() == (1, 0)
    finally:
        os.close(r)


def _task(pid: int, **kw: object) -> TaskSetup:
    return TaskSetup(pid=pid, pgid=None, sid=None, fds=[], cwd="/", umask=0o22, limits=[],
                     **kw)  # type: ignore[arg-type]


def test_trees_that_need_python_are_named() -> None:
    """A child sharing its parent's fd table needs the Python path (the first holder waits
    for the others before placing the fds); a plain tree does not."""
    root, child = _task(100), _task(101)
    root.children = [child]
    tree = TreeSetup(root=root, files=FilesPlan(), region=(0, 4096))
    assert forktable.unsupported(tree) is None
    child.share_flags = uapi.CLONE_FILES
    assert "shared fd table" in str(forktable.unsupported(tree))


def _hold_pid(pid: int) -> int:
    """A process (sleep) with exactly this pid, made with clone3 set_tid."""
    got = ksys.clone3(clone_args_for(pid))
    if got == 0:
        try:
            os.execv("/bin/sleep", ["sleep", "60"])
        finally:
            os._exit(127)
    return got


def test_a_child_pid_taken_is_named_and_nothing_is_left(tmp_path: Path) -> None:
    """The tree's child pid is held by another process: the table's clone3 of it fails
    (after the wait for a pid still being freed), the error names that pid, the root is
    gone, the holder untouched; once it is free the image restores and passes."""
    cr.become_subreaper()
    t = cr.ZdtmTest.start("fork_child", tmp_path / "work")
    holder = 0
    try:
        pids = cr.tree_of(t.pid)
        images = tmp_path / "img"
        d = cr.engine("dump", "-t", str(t.pid), "-D", str(images))
        assert d.returncode == 0, d.stderr
        for pid in pids:
            cr.wait_gone(pid)
        holder = _hold_pid(pids[1])
        start = time.monotonic()
        r = cr.engine("restore", "-D", str(images), "-d")
        assert r.returncode == 1 and f"fork: pid {pids[1]} is taken" in r.stderr, r.stderr
        assert time.monotonic() - start < 30
        assert not os.path.exists(f"/proc/{t.pid}"), "the root was left"
        assert cr.state(holder) in "RS"
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
        holder = 0
        r = cr.engine("restore", "-D", str(images), "-d")
        assert r.returncode == 0, r.stderr
        assert "PASS" in t.stop()
    finally:
        if holder:
            os.kill(holder, signal.SIGKILL)
            os.waitpid(holder, 0)
        t.cleanup()
