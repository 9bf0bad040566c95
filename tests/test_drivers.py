"""Engine drivers: how an engine's exit is classified, deadlines, and the mode checks."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from zdtm import plumbing
from zdtm.drivers import make_engine
from zdtm.drivers.base import Engine, EngineFailure, Features, Helper, StepResult, run_logged
from zdtm.lifecycle import RunOptions, cr_unavailable


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_success_logs_the_command(tmp_path: Path) -> None:
    res = run_logged(_py("print('dumped')"), step="dump", log=tmp_path / "l", timeout=30)
    text = (tmp_path / "l").read_text()
    assert res.log == tmp_path / "l" and res.seconds >= 0
    assert text.startswith("$ ") and "dumped" in text


def test_error_exit_gives_the_engines_line(tmp_path: Path) -> None:
    code = ("import sys; print('progress'); "
            "print('engine: error: seize: pid 42: EPERM', file=sys.stderr); sys.exit(1)")
    with pytest.raises(EngineFailure) as exc:
        run_logged(_py(code), step="dump", log=tmp_path / "l", timeout=30)
    assert (exc.value.kind, exc.value.step) == ("error", "dump")
    assert exc.value.message == "seize: pid 42: EPERM"
    assert "progress" in exc.value.log


def test_signal_is_a_crash(tmp_path: Path) -> None:
    code = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    with pytest.raises(EngineFailure) as exc:
        run_logged(_py(code), step="restore", log=tmp_path / "l", timeout=30)
    assert exc.value.kind == "crashed"
    assert exc.value.message == "killed by signal SIGSEGV"


def test_traceback_is_a_crash(tmp_path: Path) -> None:
    with pytest.raises(EngineFailure) as exc:
        run_logged(_py("raise KeyError('vma')"), step="restore", log=tmp_path / "l",
                   timeout=30)
    assert exc.value.kind == "crashed"
    assert exc.value.message == "KeyError: 'vma'"


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # the engine forks a helper and both hang: both must die at the deadline
    code = (f"import os, time\nif os.fork() == 0:\n    open({str(pidfile)!r}, 'w')"
            f".write(str(os.getpid()))\n    time.sleep(600)\ntime.sleep(600)")
    t0 = time.monotonic()
    with pytest.raises(EngineFailure) as exc:
        run_logged(_py(code), step="dump", log=tmp_path / "l", timeout=1.0)
    assert time.monotonic() - t0 < 10
    assert exc.value.kind == "timeout" and "killed" in exc.value.message
    helper = int(pidfile.read_text())
    assert plumbing.wait_gone([helper], 10.0) == []


def test_helper_finish_and_close(tmp_path: Path) -> None:
    h = Helper()
    h.start(_py("import sys; sys.exit(3)"), tmp_path / "h.log")
    with pytest.raises(EngineFailure, match="exited with status 3"):
        h.finish("lazy-pages", 30)
    h.start(_py("import time; time.sleep(600)"), tmp_path / "h.log")
    assert h.proc is not None
    pid = h.proc.pid
    with pytest.raises(EngineFailure) as exc:
        h.finish("lazy-pages", 0.5)
    assert exc.value.kind == "timeout"
    assert not os.path.exists(f"/proc/{pid}")
    h.close()  # nothing left to close: no error


def test_features() -> None:
    f = Features({"uffd": True, "pre_dump": False}, {"pre_dump": "not implemented"})
    assert f.missing(["uffd", "pre_dump", "memfd"]) == [
        "pre_dump (not implemented)", "memfd (not reported by the engine's check)"]
    assert f.refused(["uffd", "pre_dump", "memfd"]) == ["pre_dump (not implemented)"]


class _Stub(Engine):
    """An engine whose check says what the test wants."""

    name = "stub"

    def __init__(self, feats: dict[str, bool], why: str | None = None) -> None:
        self.feats, self.why = feats, why

    def available(self) -> str | None:
        return self.why

    def check(self) -> Features:
        return Features(self.feats, {k: f"no {k}" for k, v in self.feats.items() if not v})

    def dump(self, root_pid: int, images_dir: Path, *, leave_running: bool,
             parent_images: Path | None, opts: Sequence[str], timeout: float) -> StepResult:
        raise AssertionError("not called")

    def pre_dump(self, root_pid: int, images_dir: Path, *, parent_images: Path | None,
                 opts: Sequence[str], timeout: float) -> StepResult:
        raise AssertionError("not called")

    def restore(self, images_dir: Path, *, leave_stopped: bool, opts: Sequence[str],
                timeout: float, lazy: bool) -> int:
        raise AssertionError("not called")


def test_cr_unavailable_by_mode() -> None:
    assert cr_unavailable(_Stub({}, why="no binary"), RunOptions()) == (
        "stub engine unavailable: no binary")
    eng = _Stub({"dump": True, "restore": False, "pre_dump": False, "flavor_uns": False})
    assert cr_unavailable(eng, RunOptions()) == "stub engine cannot yet: restore (no restore)"
    assert cr_unavailable(eng, RunOptions(norst=True)) is None
    assert "pre_dump (no pre_dump)" in (cr_unavailable(eng, RunOptions(norst=True, pre=1))
                                        or "")
    assert cr_unavailable(eng, RunOptions(norst=True), "ns") is None  # unreported = supported
    assert "flavor_uns" in (cr_unavailable(eng, RunOptions(norst=True), "uns") or "")


def test_make_engine() -> None:
    assert make_engine("nocr").performs_cr is False
    assert make_engine("criu", criu_bin="/nonexistent/criu").available() == (
        "criu not found (/nonexistent/criu)")
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("dmtcp")


def test_bundled_driver_takes_a_probe_without_probing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's driver uses the run's probe (cli._run_parallel) and runs no check."""
    from zdtm.drivers import bundled

    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the driver probed by itself")

    monkeypatch.setattr(bundled.subprocess, "run", no_run)
    eng = make_engine("bundled")
    eng.adopt_probe({"unavailable": None, "features": {"pre_dump": False},
                     "reasons": {"pre_dump": "no UFFD WP_ASYNC"}})
    assert eng.available() is None
    assert eng.check().missing(["pre_dump"]) == ["pre_dump (no UFFD WP_ASYNC)"]
    other = make_engine("bundled")
    other.adopt_probe({"unavailable": "no ptrace here", "features": {}, "reasons": {}})
    assert other.available() == "no ptrace here"
