"""A failed restore leaves no task behind and says clearly what failed.

Covers: missing, truncated and corrupted images (the error names the file), a taken pid
(the error names the pid), and a fault injected at every restore step (ENGINE_FAULT).
After each failure the same image must still restore and pass: nothing of the failed
attempt (a task holding the pid, a recreated file) is left in the way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.faults import RESTORE_STEPS
from engine.kernel import pty
from tests.engine import cr_support as cr
from tests.engine.image_tools import V_END, edit_mm_bytes, edit_vma_rows

FAKE_SRC = Path(__file__).resolve().parents[1] / "data" / "fake_zdtm.c"


@pytest.fixture(autouse=True)
def _subreaper() -> None:
    cr.become_subreaper()


@pytest.fixture
def dumped(tmp_path: Path) -> Iterator[tuple[cr.ZdtmTest, Path]]:
    """A zdtm test with an open file and a pipe, dumped (and killed): (test, images)."""
    t = cr.ZdtmTest.start("pipe_data", tmp_path / "work")
    images = tmp_path / "img"
    try:
        d = cr.engine("dump", "-t", str(t.pid), "-D", str(images))
        assert d.returncode == 0, d.stderr
        cr.wait_gone(t.pid)
        yield t, images
    finally:
        t.cleanup()


def _restore(images: Path, env: dict[str, str] | None = None, *extra: str
             ) -> tuple[int, str]:
    r = cr.engine("restore", "-D", str(images), "-d", *extra, env=env)
    return r.returncode, r.stderr


def _assert_clean_failure(rc: int, err: str, pid: int, *words: str) -> None:
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("engine: error: "), err
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    assert not os.path.exists(f"/proc/{pid}"), f"task {pid} left behind: {err}"


def _assert_still_restores(t: cr.ZdtmTest, images: Path) -> None:
    rc, err = _restore(images)
    assert rc == 0, err
    assert "PASS" in t.stop()


def test_missing_image_dir(tmp_path: Path) -> None:
    """A directory that does not exist is named in the error."""
    missing = tmp_path / "nothing-here"
    rc, err = _restore(missing)
    assert rc == 1
    assert f"engine: error: read: {missing}" in err


def test_truncated_pages(dumped: tuple[cr.ZdtmTest, Path]) -> None:
    """A pages file shorter than its pagemap says: the error names that file."""
    t, images = dumped
    pages = images / f"pages-{t.pid}.img"
    data = pages.read_bytes()
    pages.write_bytes(data[: len(data) // 2])
    rc, err = _restore(images)
    _assert_clean_failure(rc, err, t.pid, "read", str(pages))
    pages.write_bytes(data)
    _assert_still_restores(t, images)


def test_corrupted_core(dumped: tuple[cr.ZdtmTest, Path]) -> None:
    """Garbage in core-PID.json: the error names the file."""
    t, images = dumped
    core = images / f"core-{t.pid}.json"
    good = core.read_bytes()
    core.write_bytes(good[:100] + b"\x00garbage" + good[100:])
    rc, err = _restore(images)
    _assert_clean_failure(rc, err, t.pid, "read", str(core))
    core.write_bytes(good)
    _assert_still_restores(t, images)


def test_hostile_value_in_vmas(dumped: tuple[cr.ZdtmTest, Path]) -> None:
    """A VMA beyond user space is refused before any task exists."""
    t, images = dumped
    vmas = images / f"mm-{t.pid}.img"
    good = vmas.read_bytes()
    edit_vma_rows(vmas, lambda rows: rows[0].__setitem__(V_END, 1 << 60))
    rc, err = _restore(images)
    _assert_clean_failure(rc, err, t.pid, "read", str(vmas))
    vmas.write_bytes(good)
    _assert_still_restores(t, images)


def test_corrupted_pagemap_magic(dumped: tuple[cr.ZdtmTest, Path]) -> None:
    """A pagemap with a bad magic: the error names the file (its task's mm file)."""
    t, images = dumped
    pm = images / f"mm-{t.pid}.img"
    good = pm.read_bytes()
    edit_mm_bytes(pm, 2, lambda raw: raw.__setitem__(slice(0, 8), b"XXXXXXXX"))
    rc, err = _restore(images)
    _assert_clean_failure(rc, err, t.pid, "read", str(pm))
    pm.write_bytes(good)
    _assert_still_restores(t, images)


def test_pid_taken(dumped: tuple[cr.ZdtmTest, Path]) -> None:
    """Restoring while the pid is in use fails naming the pid; the holder is untouched."""
    t, images = dumped
    rc, err = _restore(images)
    assert rc == 0, err
    rc, err = _restore(images)
    assert rc == 1
    assert f"engine: error: fork: pid {t.pid} is taken" in err
    assert cr.state(t.pid) in "RS"
    assert "PASS" in t.stop()


@pytest.mark.parametrize("step", RESTORE_STEPS)
def test_fault_at_each_step(dumped: tuple[cr.ZdtmTest, Path], step: str) -> None:
    """ENGINE_FAULT=<step>: the error names the step, no task is left, and the image
    restores fine afterwards."""
    t, images = dumped
    rc, err = _restore(images, env={"ENGINE_FAULT": step})
    _assert_clean_failure(rc, err, t.pid, f"error: {step}: fault injected")
    _assert_still_restores(t, images)


@pytest.mark.parametrize("step", ["files", "mm", "pages", "regs", "detach"])
def test_fault_in_a_tree_kills_every_task(tmp_path: Path, step: str) -> None:
    """A tree (parent, child, thread, shared pipe): a fault at any step after the tasks
    exist leaves none of them, and the image then restores and passes."""
    t = cr.ZdtmTest.start("fork_child", tmp_path / "work")
    try:
        pids = cr.tree_of(t.pid)
        assert len(pids) == 2
        images = tmp_path / "img"
        d = cr.engine("dump", "-t", str(t.pid), "-D", str(images))
        assert d.returncode == 0, d.stderr
        for pid in pids:
            cr.wait_gone(pid)
        rc, err = _restore(images, env={"ENGINE_FAULT": step})
        assert rc == 1 and f"error: {step}: fault injected" in err, err
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}"), f"task {pid} left behind"
        _assert_still_restores(t, images)
    finally:
        t.cleanup()


@pytest.mark.parametrize("with_child", [False, True], ids=["test", "test+child"])
def test_task_failing_below_a_pid_namespace_init_is_reported_at_once(
        tmp_path: Path, with_child: bool) -> None:
    """A tree under its own pid-namespace init (flavour uns) whose test task's cwd uid
    100000 can no longer enter at restore: that task fails its set-up while the engine
    waits for the init to stop. The init cannot end while the engine traces its children (only the engine
    could reap them), so the engine must take the reported error rather than wait out its
    deadline, and leave nothing behind. With a child in the same cwd, the test task may
    die first: its child, re-parented to the init, must still be reaped (else the init
    never ends and the error becomes "did not die after SIGKILL")."""
    from zdtm import plumbing

    top = Path(tempfile.mkdtemp(prefix="zdtm-nsfail-"))
    pids: list[int] = []
    try:
        flavor, work = cr.flavor_work(top, "uns")
        fake = top / "fake"
        behave = ["-DBEHAVE_SUBDIR"] + (["-DBEHAVE_SUBDIR_CHILD"] if with_child else [])
        subprocess.run(["gcc", "-O2", *behave, "-o", str(fake), str(FAKE_SRC)],
                       check=True, timeout=120)
        st = flavor.start([str(fake), "--pidfile=t.pid", "--outfile=t.out"],
                          work, "t.pid", 60.0, work / "start.log")
        pids = [st.root_pid, *plumbing.descendants(st.root_pid)]
        assert len(pids) == 2 + with_child  # nsinit, the test (, its child)
        images = tmp_path / "img"
        d = cr.engine("dump", "-t", str(st.root_pid), "-D", str(images))
        assert d.returncode == 0, d.stderr
        assert plumbing.wait_gone(pids, 10.0) == []
        os.chown(work / "sub", 0, 0)
        os.chmod(work / "sub", 0o700)  # uid 100000 can no longer enter the test's cwd
        rc, err = _restore(images, None, "--root", str(work))
        assert rc == 1 and "Permission denied" in err and "internal" not in err, err
        assert plumbing.wait_gone(pids, 10.0) == [], "a restored task is left"
    finally:
        plumbing.kill_tree([p for p in pids if os.path.exists(f"/proc/{p}")], 10.0)
        shutil.rmtree(top)


def test_pty_number_taken(tmp_path: Path) -> None:
    """A pty whose number another terminal took since the dump is refused (its slaves are
    opened by path: another number would hand the task that other terminal); no task is
    left, and once the number is free the same image restores and passes."""
    t = cr.ZdtmTest.start("pty_pair", tmp_path / "work")  # holds the machine's pty lock
    images = tmp_path / "img"
    taken: list[int] = []
    try:
        d = cr.engine("dump", "-t", str(t.pid), "-D", str(images))
        assert d.returncode == 0, d.stderr
        cr.wait_gone(t.pid)
        files = json.loads((images / "files.json").read_text())["files"]
        want = next(f["pty"]["index"] for f in files if f.get("pty"))
        while not taken or pty.index(taken[-1]) < want:
            taken.append(os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY))
        assert pty.index(taken[-1]) == want, "the dumped number went to another terminal"
        rc, err = _restore(images)
        _assert_clean_failure(rc, err, t.pid, "files", f"pty {want} of /dev/pts is taken")
        for fd in taken:
            os.close(fd)
        taken = []
        _assert_still_restores(t, images)
    finally:
        for fd in taken:
            os.close(fd)
        t.cleanup()
