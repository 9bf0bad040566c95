"""SIGTERM/SIGINT/SIGHUP to the engine: one error line and every promise kept while a
step runs (ENGINE_PAUSE holds the engine at a chosen step); success once the result is
final (ENGINE_PAUSE=commit), whatever arrives after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine import cr_support as cr

PAUSE_DEADLINE_S = 60.0


@pytest.fixture(autouse=True)
def _subreaper() -> None:
    cr.become_subreaper()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[cr.ZdtmTest]:
    t = cr.ZdtmTest.start("pipe_data", tmp_path / "work")
    try:
        yield t
    finally:
        t.cleanup()


def _interrupted(sig: int) -> str:
    return f"engine: error: interrupted: terminated by {signal.Signals(sig).name}"


def _signalled(args: list[str], pause: str, sig: int) -> tuple[int, list[str]]:
    """Run the engine paused at `pause`, send `sig` there; (exit status, stderr lines
    other than the pause notice)."""
    env = dict(os.environ, ENGINE_PAUSE=pause)
    env.pop("ENGINE_FAULT", None)
    proc = subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=cr.ROOT, env=env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.strip() == f"engine: paused at {pause}", line
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=PAUSE_DEADLINE_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, err.strip().splitlines()


@pytest.mark.parametrize("step,sig", [("memory", signal.SIGTERM), ("files", signal.SIGINT),
                                      ("write", signal.SIGHUP)])
def test_dump_interrupted(running: cr.ZdtmTest, tmp_path: Path, step: str, sig: int) -> None:
    """The dump stops with one line, writes nothing, and the test runs on unharmed."""
    images = tmp_path / "img"
    maps = Path(f"/proc/{running.pid}/maps").read_text()
    rc, lines = _signalled(["dump", "-t", str(running.pid), "-D", str(images)], step, sig)
    assert rc == 1 and lines == [_interrupted(sig)], lines
    assert not images.exists()
    assert Path(f"/proc/{running.pid}/maps").read_text() == maps
    assert "PASS" in running.stop()


def test_dump_signal_after_commit_is_success(running: cr.ZdtmTest, tmp_path: Path) -> None:
    images = tmp_path / "img"
    rc, lines = _signalled(["dump", "-t", str(running.pid), "-D", str(images)], "commit",
                           signal.SIGTERM)
    # a success prints only the dump's figures (frozen time, pages), no error
    assert rc == 0 and all(ln.startswith("dump: frozen ") for ln in lines), lines
    cr.wait_gone(running.pid)
    r = cr.engine("restore", "-D", str(images), "-d")
    assert r.returncode == 0, r.stderr
    assert "PASS" in running.stop()


@pytest.fixture
def dumped(running: cr.ZdtmTest, tmp_path: Path) -> tuple[cr.ZdtmTest, Path]:
    images = tmp_path / "img"
    d = cr.engine("dump", "-t", str(running.pid), "-D", str(images))
    assert d.returncode == 0, d.stderr
    cr.wait_gone(running.pid)
    return running, images


@pytest.mark.parametrize("step,sig", [("read", signal.SIGTERM), ("pages", signal.SIGTERM),
                                      ("regs", signal.SIGINT), ("detach", signal.SIGHUP)])
def test_restore_interrupted(dumped: tuple[cr.ZdtmTest, Path], step: str, sig: int) -> None:
    """One line, and no task of the tree is left (nothing half-restored)."""
    t, images = dumped
    rc, lines = _signalled(["restore", "-D", str(images), "-d"], step, sig)
    assert rc == 1 and lines == [_interrupted(sig)], lines
    assert not os.path.exists(f"/proc/{t.pid}")
    r = cr.engine("restore", "-D", str(images), "-d")  # and it still restores
    assert r.returncode == 0, r.stderr
    assert "PASS" in t.stop()


def test_restore_signal_after_commit_is_success(dumped: tuple[cr.ZdtmTest, Path]) -> None:
    t, images = dumped
    rc, lines = _signalled(["restore", "-D", str(images), "-d"], "commit", signal.SIGTERM)
    assert rc == 0 and lines == [], lines
    assert "PASS" in t.stop()
