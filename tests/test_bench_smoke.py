"""Smoke tests of bench/: the scripts import and parse, and the workloads' own checks work.

No timing is measured or asserted here; the benchmarks themselves never run in CI.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(REPO))

from bench import compare, measure, migrate, overhead, report, run, workloads
from bench.cmdlines import Bundled, Criu
from bench.procs import Procs, wait_pidfd
from zdtm import plumbing

TIMEOUT_S = 30.0


def test_run_help() -> None:
    """`python bench/run.py --help` works as a script from any directory."""
    res = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--help"],
                         check=False, capture_output=True, text=True, timeout=TIMEOUT_S,
                         cwd="/")
    assert res.returncode == 0, res.stderr
    assert "--engine" in res.stdout
    assert "--reps" in res.stdout


def test_bad_option_rejected() -> None:
    """Unknown workloads are refused before anything starts."""
    with pytest.raises(SystemExit):
        run.parse_args(["--workloads", "anon,nosuch"])


def test_criu_probe_is_the_drivers(tmp_path: Path) -> None:
    """criu is probed by the harness's criu driver: a failing `criu check` keeps criu's own
    words in the reason the benchmark prints."""
    fake = tmp_path / "criu"
    fake.write_text("#!/bin/sh\necho 'Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area "
                    "bounds'\nexit 1\n")
    fake.chmod(0o755)
    eng = Criu(str(fake))
    eng.probe()
    assert not eng.available
    assert "vdso: Unexpected rt vDSO area bounds" in eng.message, eng.message
    assert eng.base() == [str(fake)]


def test_reference_only_at_reference_size() -> None:
    """Ratios against DESIGN.md figures are never computed for another size."""
    assert report.reference_for("anon", ["--mib", "1024"]) is not None
    assert report.reference_for("anon", ["--mib", "64"]) is None


def test_whole_cycle_ratio_is_the_median_of_per_rep_sums() -> None:
    """d+r compares the median of dump + restore per repetition, not a sum of medians."""
    r = report.Result("cycle", "anon", "1 GiB", "bundled", ["--mib", "1024"])
    r.samples = [{"dump_s": 1.0, "restore_s": 1.0}, {"dump_s": 0.5, "restore_s": 2.0},
                 {"dump_s": 2.0, "restore_s": 0.25}]
    # Sums 2.0, 2.5, 2.25: median 2.25 (the sum of the medians would be 1.0 + 1.0).
    assert r.median_sum("dump_s", "restore_s") == 2.25
    (row,) = compare.cycle_rows([r], cold=False)  # against the reference: 1.6 + 0.65 s
    assert row[1:4] == ["0.62", "1.54", "1.00"], row


@pytest.fixture(scope="module")
def memload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """memload built once for the module."""
    return workloads.build_memload(tmp_path_factory.mktemp("memload"))


@pytest.fixture
def procs(tmp_path: Path) -> Procs:
    """A process tracker whose leftovers are killed after the test."""
    p = Procs(tmp_path)
    yield p
    p.cleanup()


def _flip_word(pid: int, addr: int) -> None:
    """Corrupt one 8-byte word of pid's memory (what a faulty restore would do)."""
    with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
        mem.seek(addr)
        (val,) = struct.unpack("Q", mem.read(8))
        mem.seek(addr)
        mem.write(struct.pack("Q", val ^ 1))


def test_served_steps_report_status_cpu_and_rss(procs: Procs, tmp_path: Path) -> None:
    """--served: a bundled step is a fork of the engine server; its exit status, output,
    CPU time and peak RSS come back as for a process of its own."""
    eng = Bundled(served=True)
    try:
        ok = eng.run(procs, eng.base() + ["check", "--json"], TIMEOUT_S)
        assert ok.returncode == 0, ok.output
        assert '"features"' in ok.output
        assert ok.cpu_s > 0 and ok.maxrss_kib > 1024
        bad = eng.run(procs, eng.base() + ["dump", "-t", str(2 ** 22 + 1), "-D",
                                           str(tmp_path / "img")], TIMEOUT_S)
        assert bad.returncode == 1
        assert bad.error_line() == f"engine: error: seize: no such process {2 ** 22 + 1}"
    finally:
        eng.close()
    assert eng.server is None


def test_served_lazy_daemon_is_measured(procs: Procs, memload: Path, tmp_path: Path) -> None:
    """--served: the lazy-pages daemon is forked from the engine server too (as the
    harness starts it); the lazy figures come back, the restored workload passes its own
    check, and no daemon is left behind."""
    eng = Bundled(served=True)
    try:
        ctx = measure.Context(procs, memload, tmp_path, TIMEOUT_S)
        sample = measure.lazy(ctx, eng, workloads.Workload.anon(8))
        server = eng.server.proc.pid if eng.server and eng.server.proc else None
        assert server is not None
        assert len(plumbing.descendants(server)) <= 1  # the spare for the next step
    finally:
        eng.close()
    assert sample["verified"], sample.get("verify_detail")
    assert all(sample[k] > 0 for k in ("daemon_ready_s", "restore_s", "all_in_s")), sample


def _region(pid: int, size: int) -> int:
    """Start of pid's anonymous mapping of exactly size bytes."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        anonymous = len(line.split()) == 5 or "/dev/zero" in line
        if hi - lo == size and anonymous:
            return lo
    raise AssertionError(f"no {size}-byte anonymous mapping in pid {pid}")


@pytest.mark.parametrize("corrupt", [False, True])
@pytest.mark.parametrize("kind", ["anon", "shm"])
def test_workload_check_sees_corruption(tmp_path: Path, procs: Procs, memload: Path,
                                        kind: str, corrupt: bool) -> None:
    """The memload verdict is PASS when memory is intact and FAIL when one word flips."""
    wl = workloads.Workload.anon(8) if kind == "anon" else workloads.Workload.shm(8)
    running = workloads.start(procs, memload, wl, tmp_path / "w", TIMEOUT_S)
    if corrupt:
        _flip_word(running.pid, _region(running.pid, 8 << 20) + 4096 * 100 + 16)
    ok, detail = workloads.stop_and_verify(procs, running.pid, running, TIMEOUT_S)
    assert ok is not corrupt, detail
    assert ("PASS" in detail) is not corrupt


@pytest.mark.parametrize("corrupt", [False, True])
def test_writer_workload_check_sees_corruption(tmp_path: Path, procs: Procs, memload: Path,
                                               corrupt: bool) -> None:
    """The live writer passes its own check while rewriting, and fails on a flipped word
    in a page it has not rewritten yet (1 MiB/s: page 2000 of 8 MiB comes after ~8 s)."""
    wl = workloads.Workload.writer(8, 1)
    running = workloads.start(procs, memload, wl, tmp_path / "w", TIMEOUT_S)
    if corrupt:
        _flip_word(running.pid, _region(running.pid, 8 << 20) + 4096 * 2000 + 16)
    ok, detail = workloads.stop_and_verify(procs, running.pid, running, TIMEOUT_S)
    assert ok is not corrupt, detail
    assert ("writer page 2000" in detail) is corrupt


@pytest.mark.parametrize("corrupt", [False, True])
def test_tree_workload_check_sees_corruption(tmp_path: Path, procs: Procs, memload: Path,
                                             corrupt: bool) -> None:
    """The tree passes when intact; one flipped word in a leaf task fails it, and the
    root's verdict names the task."""
    wl = workloads.Workload.tree(7)
    running = workloads.start(procs, memload, wl, tmp_path / "w", TIMEOUT_S)
    assert len(running.tree) == 7
    leaf = running.tree[-1]
    if corrupt:
        _flip_word(leaf, _region(leaf, workloads.TREE_TASK_BYTES) + 4096 * 3 + 8)
    ok, detail = workloads.stop_and_verify(procs, running.pid, running, TIMEOUT_S)
    assert ok is not corrupt, detail
    if corrupt:
        assert "1 of 7 tasks failed; first: FAIL: tree task" in detail
        assert f"(pid {leaf}): word 1537 wrong" in detail


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_tree_workload_check_sees_a_new_parent(tmp_path: Path, procs: Procs,
                                               memload: Path) -> None:
    """A task whose parent changed fails its own check (what a restore that rebuilt the
    tree wrongly would show): a middle task is killed, its children are re-parented."""
    running = workloads.start(procs, memload, workloads.Workload.tree(7), tmp_path / "w",
                              TIMEOUT_S)
    middle = next(c for c in plumbing.children(running.pid) if plumbing.children(c))
    orphans = plumbing.children(middle)
    os.kill(middle, signal.SIGKILL)
    deadline = time.monotonic() + TIMEOUT_S
    while any(_ppid(o) == middle for o in orphans) and time.monotonic() < deadline:
        time.sleep(0.01)
    for orphan in orphans:
        os.kill(orphan, signal.SIGTERM)
        assert wait_pidfd(orphan, TIMEOUT_S)
    ok, detail = workloads.stop_and_verify(procs, running.pid, running, TIMEOUT_S)
    assert not ok and "FAIL: tree: " in detail, detail
    lines = running.outfile.read_text()
    assert f"FAIL: tree task 0: child {middle} killed" in lines, lines
    for orphan in orphans:
        assert re.search(rf"\(pid {orphan}\): parent is \d+, was {middle}\n", lines), lines


def test_criu_frozen_time_from_its_stats_image() -> None:
    """frozen_time is field 2 of the dump entry (field 1) after two magics and a size."""
    dump = bytes([0x08, 0x05, 0x10, 0xC0, 0xC4, 0x07, 0x38, 0x63])  # 1: 5, 2: 123456, 7: 99
    entry = bytes([0x0A, len(dump)]) + dump
    raw = bytes(8) + struct.pack("<I", len(entry)) + entry
    assert migrate.criu_frozen_us(raw) == 123456
    with pytest.raises(ValueError, match="no dump entry"):
        migrate.criu_frozen_us(bytes(8) + struct.pack("<I", 2) + bytes([0x12, 0x00]))


def test_migrate_goal_line() -> None:
    """The goal is judged on the final dump's frozen time against a tenth of the full's."""
    r = report.Result("migrate", "10 MiB/s", "1 GiB", "bundled", [])
    r.samples = [{"full_frozen_s": 2.0, "chain_final_frozen_s": 0.15, "full_restore_s": 1.0,
                  "chain_restore_s": 1.1, "verified": True, "verify_detail": "PASS"}]
    text = report.migrate_table([r])
    assert "= 7.5% of the full dump's 2.000 s (goal <= 10%: met)" in text
    assert "restore of the chain 1.100 s vs full image 1.000 s (1.10x)" in text
    r.samples[0]["chain_final_frozen_s"] = 0.3
    assert "(goal <= 10%: NOT met)" in report.migrate_table([r])


def test_maps_workload_layout(tmp_path: Path, procs: Procs, memload: Path) -> None:
    """maps builds one VMA per page and passes its own check untouched."""
    running = workloads.start(procs, memload, workloads.Workload.maps(600), tmp_path / "w",
                              TIMEOUT_S)
    maps = Path(f"/proc/{running.pid}/maps").read_text()
    assert maps.count(str(tmp_path / "w" / "maps.file")) == 600
    assert len(os.listdir(f"/proc/{running.pid}/fd")) == 3  # stdio only: the file is closed
    ok, detail = workloads.stop_and_verify(procs, running.pid, running, TIMEOUT_S)
    assert ok, detail


def test_runner_summary_parsing() -> None:
    """A skipped or failed runner run is never timed as one C/R iteration."""
    assert overhead.ran_one("PASS static/mem_anon [h]\n1 passed, 0 failed, 0 skipped\n")
    assert not overhead.ran_one("SKIP static/mem_anon [h] (x)\n0 passed, 0 failed, 1 skipped\n")
    assert not overhead.ran_one("1 passed, 1 failed, 0 skipped\n")


def test_failed_step_row_spans_table() -> None:
    """A failed measurement prints its error in the table instead of figures."""
    res = report.Result("cycle", "anon", "x", "bundled", ["--mib", "8"],
                        errors=["restore: engine: error: read: bad image"])
    text = report.cycle_table([res])
    assert "FAILED: restore: engine: error: read: bad image" in text


def test_unsupported_uses_engine_reason() -> None:
    """A feature the engine's check reports false is skipped with the engine's words."""
    eng = Bundled()
    eng.features = {"lazy_pages": False, "pre_dump": True}
    eng.reasons = {"lazy_pages": "not implemented yet"}
    assert run.unsupported(eng, "lazy", "anon") == "lazy_pages: not implemented yet"
    assert run.unsupported(eng, "incremental", "anon") is None
    assert run.unsupported(eng, "cycle", "anon") is None  # unreported means supported
