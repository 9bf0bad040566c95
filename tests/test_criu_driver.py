"""The criu driver (zdtm/drivers/criu.py) against a scripted stand-in for criu: which options
each step gets, how features map onto criu's probes, and what a failed step says and keeps.
Runs without criu; tests/test_criu_allowances.py runs the real one."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_support import build_fake
from zdtm import ROOT_DIR, known
from zdtm.desc import TestDesc, discover, discover_external
from zdtm.drivers import EngineFailure
from zdtm.drivers.base import TreeInfo
from zdtm.drivers.criu import FEATURES, CriuEngine, cause, explain_failure
from zdtm.drivers.translate import CrOptions, cr_options
from zdtm.lifecycle import RunOptions, cr_unavailable, prepare_process, run_test
from zdtm.result import ENGINE_ERROR, FAIL

DIRTY_OFF = "Warn  (criu/cr-check.c:824): Dirty tracking is OFF. Memory snapshot will not work."
FAKE_CRIU = f'''#!/usr/bin/env python3
import os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_CRIU_ARGS"], "a") as f:
    f.write(" ".join(args) + "\\n")
if args[0] == "check":
    if args[-1] == "mem_dirty_track":
        print("Warn  (criu/kerndat.c:1642): CRIU was built without libnftables support")
        print("{DIRTY_OFF}")
        sys.exit(1)
    print("Looks good.")
    sys.exit(0)
log = args[args.index("-o") + 1]
if os.environ.get("FAKE_CRIU_FAIL"):
    with open(log, "w") as f:
        # as criu 4.2 logs it: the rlimit Error at start, hundreds of lines of work, then
        # the failing step
        f.write("(00.000100) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE\\n"
                + "(00.000150) Collecting\\n" * 40 +
                "(00.000200) Dumping 1\\n"
                "(00.000300)      1: Error (criu/mem.c:7): Tracking memory is not available\\n"
                "(00.000400) Error (criu/cr-dump.c:9): Dumping FAILED.\\n")
    print("see the log")
    sys.exit(1)
if args[0] == "restore":
    with open(args[args.index("--pidfile") + 1], "w") as f:
        f.write("4242\\n")
'''


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[CriuEngine, Path]:
    """A criu engine driving the stand-in; the second item is its record of command lines."""
    criu = tmp_path / "criu"
    criu.write_text(FAKE_CRIU)
    criu.chmod(0o755)
    record = tmp_path / "args"
    monkeypatch.setenv("FAKE_CRIU_ARGS", str(record))
    return CriuEngine(criu), record


def _calls(record: Path, action: str) -> list[list[str]]:
    return [ln.split() for ln in record.read_text().splitlines() if ln.split()[0] == action]


def test_features_come_from_criu_probes_each_probed_once(fake: tuple[CriuEngine, Path]
                                                         ) -> None:
    engine, record = fake
    feats = engine.check()
    assert feats.features["dump"] and feats.features["restore"]
    assert feats.features["lazy_pages"]  # uffd-noncoop answered "Looks good"
    for name in ("pre_dump", "dump_incremental", "mem_track"):
        assert feats.features[name] is False
        assert feats.reasons[name] == f"criu check --feature mem_dirty_track: {DIRTY_OFF}"
    probes = [c[-1] for c in _calls(record, "check") if "--feature" in c]
    assert probes.count("mem_dirty_track") == 1 and len(probes) == len(set(probes))
    assert feats.missing(["ptrace_seize"]) == [
        "ptrace_seize (not reported by the engine's check)"]


def test_pre_dump_runs_skip_with_criu_reason(fake: tuple[CriuEngine, Path]) -> None:
    engine, _ = fake
    why = cr_unavailable(engine, RunOptions(pre=1))
    assert why == f"criu engine cannot yet: pre_dump (criu check --feature mem_dirty_track: " \
                  f"{DIRTY_OFF})"
    assert cr_unavailable(engine, RunOptions()) is None


def test_track_mem_only_for_pre_dumps_and_the_dumps_after_them(
        fake: tuple[CriuEngine, Path], tmp_path: Path) -> None:
    engine, record = fake
    pre, plain, after = tmp_path / "1-pre1", tmp_path / "1-dump", tmp_path / "2-dump"
    engine.pre_dump(7, pre, parent_images=None, opts=[], timeout=10)
    engine.dump(7, plain, leave_running=False, parent_images=None, opts=["--tcp-close"],
                timeout=10)
    engine.dump(7, after, leave_running=True, parent_images=pre, opts=[], timeout=10)
    calls = _calls(record, "pre-dump") + _calls(record, "dump")
    assert "--track-mem" in calls[0]
    assert "--track-mem" not in calls[1] and calls[1][-1] == "--tcp-close"
    assert "--leave-running" not in calls[1]
    assert "--track-mem" in calls[2] and "--leave-running" in calls[2]
    assert calls[2][calls[2].index("--prev-images-dir") + 1] == "../1-pre1"
    for c in calls:  # criu's log goes beside the images, by absolute path
        assert Path(c[c.index("-o") + 1]).parent == tmp_path


def test_restore_gets_the_tree_root(fake: tuple[CriuEngine, Path], tmp_path: Path) -> None:
    engine, record = fake
    images = tmp_path / "1-dump"
    images.mkdir(mode=0o700)
    assert engine.restore(images, leave_stopped=True, opts=[], timeout=10, lazy=False) == 4242
    assert "--root" not in _calls(record, "restore")[0]
    engine.attach(TreeInfo("uns", tmp_path))
    engine.restore(images, leave_stopped=True, opts=["--ext"], timeout=10, lazy=False)
    call = _calls(record, "restore")[1]
    assert call[call.index("--root") + 1] == str(tmp_path)
    assert "--leave-stopped" in call and call[-1] == "--ext"
    assert stat.S_IMODE(images.stat().st_mode) == 0o711


def test_failed_step_says_why_in_criu_words(fake: tuple[CriuEngine, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    engine, _ = fake
    monkeypatch.setenv("FAKE_CRIU_FAIL", "1")
    with pytest.raises(EngineFailure) as info:
        engine.dump(7, tmp_path / "1-dump", leave_running=False, parent_images=None, opts=[],
                    timeout=10)
    exc = info.value
    assert (exc.kind, exc.step) == ("error", "dump")
    assert exc.message == "Error (criu/mem.c:7): Tracking memory is not available"
    lines = exc.log.splitlines()
    assert f"criu log: {tmp_path / '1-dump.criu.log'}" in lines
    assert "criu error: Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE" in lines
    assert "criu log tail: (00.000200) Dumping 1" in lines
    assert any(ln.startswith("criu output: $ ") for ln in lines)


def test_hung_step_says_where_criu_stopped(tmp_path: Path) -> None:
    """A criu killed at its deadline failed no step: the message is its last log line, not
    an Error line it went on after."""
    log = tmp_path / "1-dump.restore.criu.log"
    log.write_text("(00.076782) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE "
                   "for self: Operation not permitted\n(00.126663) pie: 3628: 3628: Restored\n")
    exc = explain_failure(EngineFailure("timeout", "restore", "no result after 600s, killed"),
                          log)
    assert exc.message == ("no result after 600s, killed: criu's last log line: "
                           "pie: 3628: 3628: Restored")
    assert "criu error: Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: " \
        "Operation not permitted" in exc.log.splitlines()


def test_cause_is_the_first_error_of_the_failing_chain() -> None:
    """criu 4.2's netlink refusal: the rlimit Error it went on after, then the cause and
    its callers' lines close together, then the summary."""
    rlimit = (67, "Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self")
    chain = [(410, "Error (criu/sk-netlink.c:133): netlink: 8 1"),
             (411, ("Error (criu/sk-netlink.c:134): netlink: The netlink socket 0xbbf071 "
                    "has more than 32 groups")),
             (413, "Error (criu/cr-dump.c:1757): Dump files (pid: 8713) failed with -1")]
    summary = (426, "Error (criu/cr-dump.c:2187): Dumping FAILED.")
    assert cause([rlimit, *chain, summary, (430, "Error (d): cgroupd")]) == chain[0][1]
    assert cause([rlimit, (300, "Error (b): y")]) == "Error (b): y"
    assert cause([rlimit, (70, "Error (b): y")]) == rlimit[1]  # one chain
    assert cause([summary]) == summary[1]


@pytest.fixture(scope="module")
def fake_test() -> Iterator[TestDesc]:
    d = Path(tempfile.mkdtemp(prefix="zdtm-criu-drv-"))
    try:
        os.chmod(d, 0o755)
        build_fake("PASS", d / "pass")
        yield {t.name: t for t in discover_external(d)}["ext/pass"]
    finally:
        shutil.rmtree(d)


def test_failed_run_keeps_criu_logs_not_images(fake: tuple[CriuEngine, Path], tmp_path: Path,
                                               fake_test: TestDesc,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --keep-img a failed run keeps its work dir with the logs, minus the images."""
    engine, _ = fake
    monkeypatch.setenv("FAKE_CRIU_FAIL", "1")
    prepare_process()
    r = run_test(fake_test, "h", engine, RunOptions(workroot=tmp_path / "work"))
    assert (r.outcome, r.phase, r.kind) == (FAIL, "dump", ENGINE_ERROR), r.summary()
    assert r.message == "Error (criu/mem.c:7): Tracking memory is not available"
    assert any("criu error: Error (criu/util.c:1534)" in d for d in r.details)
    assert r.workdir is not None and f"failed run: logs kept in {r.workdir}" in r.notes
    img = Path(r.workdir) / "img"
    assert (img / "1-dump.criu.log").is_file() and (img / "1-dump.log").is_file()
    assert [p for p in img.iterdir() if p.is_dir()] == []


def test_test_features_bring_the_criu_options_they_need() -> None:
    t = TestDesc(name="static/t", kind="static", binary=Path("/x/static/t"),
                 feature=("tcp", "udp", "file_locks"), opts=("--file-locks",))
    got = cr_options("criu", t)
    assert got.dump == ("--file-locks", "--tcp-established")
    assert got.restore == ("--file-locks", "--tcp-established")
    assert got.notes == ("criu engine: --tcp-established (test feature)",)
    plain = TestDesc(name="static/t", kind="static", binary=Path("/x/static/t"),
                     feature=("tcp", "file_locks"))
    assert cr_options("bundled", plain) == CrOptions()  # the bundled engine needs none


def test_every_feature_our_tests_declare_is_mapped_for_criu() -> None:
    """A feature name missing from the criu map reads as absent: the test would SKIP under
    criu ("Unknown feature") instead of gating it. Each of ours is mapped."""
    declared = {f for t in discover() for f in (*t.feature, *t.crfail_unless)}
    assert sorted(declared - set(FEATURES)) == []


def test_criu_known_failures_name_tests_of_the_suite() -> None:
    """known/criu-4.2.yaml loads, and each entry names a test this suite has (a renamed
    test would leave an entry that matches nothing)."""
    entries = known.load(ROOT_DIR / "known" / "criu-4.2.yaml")
    names = {t.name for t in discover()}
    assert entries and all(e.engine == "criu" and e.reason for e in entries)
    assert sorted({e.test for e in entries} - names) == []
