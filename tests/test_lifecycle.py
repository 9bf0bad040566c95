"""The lifecycle's own decisions, driven by small scripted engines on a real test process."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.fake_support import build_fake, open_workroot
from zdtm import plumbing
from zdtm.desc import TestDesc, discover, discover_external
from zdtm.drivers.base import Engine, EngineFailure, Features, StepResult, run_logged
from zdtm.drivers.bundled import BundledEngine
from zdtm.lifecycle import RunOptions, cr_unavailable, run_test
from zdtm.result import ENGINE_ERROR, FAIL, HARNESS_ERROR, PASS, SKIP, TIMEOUT


@pytest.fixture(scope="module")
def tests_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="zdtm-lc-"))
    try:
        os.chmod(d, 0o755)
        build_fake("PASS", d / "pass")
        shutil.copy(d / "pass", d / "crfail")
        (d / "crfail.desc").write_text("{'flags': 'crfail'}\n")
        shutil.copy(d / "pass", d / "crfail_unless")
        (d / "crfail_unless.desc").write_text(
            "{'flags': 'crfail', 'crfail_unless': 'odd_state'}\n")
        yield d
    finally:
        shutil.rmtree(d)


def _test(tests_dir: Path, name: str) -> TestDesc:
    return {t.name: t for t in discover_external(tests_dir)}[f"ext/{name}"]


class Scripted(Engine):
    """dump/restore do what the test says; ``calls`` records them."""

    name = "scripted"

    def __init__(self, dump: str = "kill", restore: str = "dead",
                 feats: dict[str, bool] | None = None) -> None:
        self.dump_mode, self.restore_mode = dump, restore
        self.feats = feats or {}
        self.calls: list[str] = []
        self.parents: list[str | None] = []

    def available(self) -> str | None:
        return None

    def check(self) -> Features:
        return Features(self.feats, {k: "scripted" for k in self.feats})

    def dump(self, root_pid: int, images_dir: Path, *, leave_running: bool,
             parent_images: Path | None, opts: Sequence[str], timeout: float) -> StepResult:
        self.calls.append(f"dump leave_running={leave_running}")
        self.parents.append(parent_images.name if parent_images else None)
        if self.dump_mode == "fail":
            raise EngineFailure("error", "dump", "seize: refused on purpose")
        if self.dump_mode == "hang":
            return run_logged([sys.executable, "-c", "import time; time.sleep(600)"],
                              step="dump", log=images_dir.with_suffix(".log"), timeout=1.0)
        if not leave_running:
            os.kill(root_pid, signal.SIGKILL)  # what a dump without --leave-running does
        return StepResult(0.0, images_dir, {"frozen_s": 0.0125, "pages_frozen": 3,
                                            "pages_total": 7})

    def pre_dump(self, root_pid: int, images_dir: Path, *, parent_images: Path | None,
                 opts: Sequence[str], timeout: float) -> StepResult:
        self.calls.append(f"pre-dump parent={parent_images.name if parent_images else None}")
        if self.dump_mode == "fail":  # the engine refuses the tree at any dump
            raise EngineFailure("error", "pre-dump", "seize: refused on purpose")
        return StepResult(0.0, images_dir)

    def restore(self, images_dir: Path, *, leave_stopped: bool, opts: Sequence[str],
                timeout: float, lazy: bool) -> int:
        self.calls.append(f"restore leave_stopped={leave_stopped}")
        return 2 ** 22 + 1  # above pid_max: never a live task


@pytest.fixture
def work() -> Iterator[Path]:
    """The runs' work root: what a failed run keeps for its logs goes with it."""
    with open_workroot("zdtm-lc-work-") as root:
        yield root


@pytest.fixture(autouse=True)
def nothing_left() -> Iterator[None]:
    before = set(plumbing.descendants(os.getpid()))
    yield
    assert set(plumbing.descendants(os.getpid())) <= before


def test_norst_pre_dumps_chain_and_tree_survives(tests_dir: Path, work: Path) -> None:
    eng = Scripted()
    r = run_test(_test(tests_dir, "pass"), "h", eng,
                 RunOptions(workroot=work, iters=2, pre=2, norst=True))
    assert r.outcome == PASS, r.summary()
    assert r.iterations == 2
    assert eng.calls == [f"pre-dump parent={p}" for p in ("None", "1-pre1")] + [
        "dump leave_running=True"] + [f"pre-dump parent={p}" for p in ("None", "2-pre1")] + [
        "dump leave_running=True"]


def test_snaps_are_full_dumps_chained_and_timed(tests_dir: Path, work: Path) -> None:
    """--snaps: each pre-dump step is a dump that leaves the tree running, against the one
    before; the final dump's parent is the last snapshot; every step's frozen figures are
    in the result."""
    eng = Scripted()
    r = run_test(_test(tests_dir, "pass"), "h", eng,
                 RunOptions(workroot=work, iters=1, pre=2, snaps="last", norst=True))
    assert r.outcome == PASS, r.summary()
    assert eng.calls == ["dump leave_running=True"] * 3
    assert eng.parents == [None, "1-snap1", "1-snap2"]
    assert r.timings[0].startswith("iter 1: snapshot 1 ")
    assert r.timings[-1].endswith("(frozen 12.5 ms, 3 of 7 pages written while frozen)")
    assert len(r.timings) == 3


def test_restore_of_a_dead_root_is_an_engine_error(tests_dir: Path, work: Path) -> None:
    eng = Scripted()
    r = run_test(_test(tests_dir, "pass"), "h", eng, RunOptions(workroot=work))
    assert (r.outcome, r.phase, r.kind) == (FAIL, "restore", ENGINE_ERROR), r.summary()
    assert "not alive" in r.message
    assert eng.calls == ["dump leave_running=False", "restore leave_stopped=True"]


def test_hanging_dump_is_a_timeout(tests_dir: Path, work: Path) -> None:
    r = run_test(_test(tests_dir, "pass"), "ns", Scripted(dump="hang"), RunOptions(workroot=work))
    assert (r.outcome, r.phase, r.kind) == (FAIL, "dump", TIMEOUT), r.summary()


def test_crfail_passes_when_the_dump_fails(tests_dir: Path, work: Path) -> None:
    r = run_test(_test(tests_dir, "crfail"), "h", Scripted(dump="fail"), RunOptions(workroot=work))
    assert r.outcome == PASS, r.summary()
    assert any("dump failed as expected" in n for n in r.notes)
    r = run_test(_test(tests_dir, "crfail"), "h", Scripted(), RunOptions(workroot=work, norst=True))
    assert (r.outcome, r.phase) == (FAIL, "dump")
    assert r.message == "dump succeeded but the test is crfail"
    # the tree is still judged once: checked, then stopped for the test's verdict
    assert any("crfail dump succeeded" in n for n in r.notes), r.notes
    assert r.iterations == 1, r.summary()


def test_crfail_passes_when_a_pre_dump_fails(tests_dir: Path, work: Path) -> None:
    """A pre-dump is a dump: a crfail test refused there passes, no dump follows; an
    ordinary test refused there fails at pre-dump."""
    engine = Scripted(dump="fail")
    r = run_test(_test(tests_dir, "crfail"), "h", engine, RunOptions(workroot=work, pre=2))
    assert r.outcome == PASS, r.summary()
    assert any("pre-dump failed as expected" in n for n in r.notes), r.notes
    assert engine.calls == ["pre-dump parent=None"]
    r = run_test(_test(tests_dir, "pass"), "h", Scripted(dump="fail"),
                 RunOptions(workroot=work, pre=2))
    assert (r.outcome, r.phase, r.kind) == (FAIL, "pre-dump", ENGINE_ERROR), r.summary()


def test_crfail_refused_at_a_frozen_snapshot_thaws_the_tree(tests_dir: Path, work: Path) -> None:
    """--snaps each freezes the tree for the snapshot's S0: a crfail test refused at that
    snapshot passes, and its tree runs again for its verdict (it was left stopped, and
    the stop timed out)."""
    engine = Scripted(dump="fail")
    r = run_test(_test(tests_dir, "crfail"), "h", engine,
                 RunOptions(workroot=work, pre=1, snaps="each"))
    assert r.outcome == PASS, r.summary()
    assert any("pre-dump failed as expected" in n for n in r.notes), r.notes


def test_crfail_unless_follows_the_engine(tests_dir: Path, work: Path) -> None:
    """crfail_unless: an engine lacking the feature must refuse the dump; one that has it
    runs the test as plain C/R, where a failed dump is an engine error."""
    t = _test(tests_dir, "crfail_unless")
    lacks, has = {"odd_state": False}, {"odd_state": True}
    r = run_test(t, "h", Scripted(dump="fail", feats=lacks), RunOptions(workroot=work))
    assert r.outcome == PASS, r.summary()
    assert any("the engine lacks odd_state" in n for n in r.notes), r.notes
    r = run_test(t, "h", Scripted(feats=lacks), RunOptions(workroot=work, norst=True))
    assert (r.outcome, r.message) == (FAIL, "dump succeeded but the test is crfail")
    r = run_test(t, "h", Scripted(feats=has), RunOptions(workroot=work, norst=True))
    assert r.outcome == PASS, r.summary()
    assert any("not crfail with the scripted engine" in n for n in r.notes), r.notes
    r = run_test(t, "h", Scripted(dump="fail", feats=has), RunOptions(workroot=work))
    assert (r.outcome, r.phase, r.kind) == (FAIL, "dump", ENGINE_ERROR), r.summary()


def test_failed_dump_is_reported_and_cleaned(tests_dir: Path, work: Path) -> None:
    r = run_test(_test(tests_dir, "pass"), "uns", Scripted(dump="fail"), RunOptions(workroot=work))
    assert (r.outcome, r.phase, r.kind) == (FAIL, "dump", ENGINE_ERROR)
    assert r.message == "seize: refused on purpose"


def test_refused_mode_skips_with_the_engines_reason(tests_dir: Path, work: Path) -> None:
    eng = Scripted(feats={"pre_dump": False})
    r = run_test(_test(tests_dir, "pass"), "h", eng, RunOptions(workroot=work, pre=1))
    assert r.outcome == SKIP
    assert r.message == "scripted engine cannot yet: pre_dump (scripted)"
    assert eng.calls == []


def test_strict_umask_still_runs_uns_with_the_bundled_engine(tests_dir: Path) -> None:
    """With umask 077 the work root, its missing parents and the uns staging dir are still
    searchable by uid 100000 (else the restored task cannot open its own binary)."""
    top = Path(tempfile.mkdtemp(prefix="zdtm-umask-"))
    try:
        os.chmod(top, 0o755)
        workroot = top / "made" / "here"
        old = os.umask(0o077)
        try:
            r = run_test(_test(tests_dir, "pass"), "uns", BundledEngine(),
                         RunOptions(iters=1, workroot=workroot))
        finally:
            os.umask(old)
        assert r.outcome == PASS, "\n".join([r.summary(), *r.details])
        for d in (top / "made", workroot):
            assert d.stat().st_mode & 0o777 == 0o755, d
        assert list(workroot.iterdir()) == []  # the work dir is gone after a pass
    finally:
        shutil.rmtree(top)


def test_uns_work_root_others_cannot_enter_is_refused(tests_dir: Path,
                                                      tmp_path: Path) -> None:
    """A work root below a 0700 directory cannot work for uid 100000: a harness error
    at start naming that directory, and nothing left behind."""
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    os.chmod(closed, 0o700)
    r = run_test(_test(tests_dir, "pass"), "uns", BundledEngine(),
                 RunOptions(iters=1, workroot=closed / "root"))
    assert (r.outcome, r.phase, r.kind) == (FAIL, "start", HARNESS_ERROR), r.summary()
    assert f"uns: {closed} (mode 0700) is not searchable by others" in r.message
    assert list((closed / "root").iterdir()) == []


class _SlowLazyPages(BundledEngine):
    """The bundled engine whose lazy-pages daemon holds its background copy back
    (ENGINE_LAZY_BACKGROUND_DELAY): a restored tree's pages come in on faults only."""

    def env(self) -> dict[str, str]:
        return dict(super().env(), ENGINE_LAZY_BACKGROUND_DELAY="5")


def test_lazy_restore_captured_before_its_pages_are_in(work: Path) -> None:
    """S1 of a lazy restore is taken while the daemon still holds most pages: the capture
    has them served before anything reads the tree's memory through /proc/PID/mem (the
    ptrace visit below the stack pointer got EIO there: rseq unmasked, in-task attributes
    absent), and the run passes."""
    engine = _SlowLazyPages()
    why = cr_unavailable(engine, RunOptions(lazy=True))
    if why:
        pytest.skip(why)
    test = next(t for t in discover() if t.name == "static/mem_anon")
    r = run_test(test, "h", engine, RunOptions(workroot=work, iters=1, lazy=True))
    assert r.outcome == PASS, "\n".join([r.summary(), *r.details])
