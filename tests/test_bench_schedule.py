"""bench/schedule.py and the loop of bench/run.py: engines in turn rep by rep, sweep plans.

Fake measurement functions stand in for the engines: only the order and the bookkeeping
are checked here; no timing is measured or asserted.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(REPO))

from bench import hostmem, measure, report, run, schedule
from bench.cmdlines import Bundled, Criu, Engine


def _job(engine: str, calls: list[str], fail_at: int | None = None) -> schedule.Job:
    """A job that records its engine's name on every call and fails on call fail_at."""
    def fn(ctx: object, name: str) -> dict[str, Any]:
        calls.append(name)
        if fail_at is not None and calls.count(name) == fail_at:
            raise measure.StepFailed(f"restore: {name} broke")
        return {"dump_s": 1.0, "restore_s": 2.0}
    return schedule.Job(report.Result("cycle", "anon", "x", engine, []), fn, (engine,))


def test_rep_order_is_every_engine_per_rep() -> None:
    """A B A B ..., never A A B B."""
    assert schedule.rep_order(3, 2) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert schedule.rep_order(2, 1) == [(0, 0), (1, 0)]
    assert schedule.rep_order(0, 2) == []


def test_alternate_runs_engines_in_turn() -> None:
    """Each rep runs bundled then criu; samples carry their rep and the run-wide order."""
    calls: list[str] = []
    jobs = [_job("bundled", calls), _job("criu", calls)]
    schedule.alternate(None, jobs, 3, itertools.count(1))
    assert calls == ["bundled", "criu"] * 3
    assert [s["rep"] for s in jobs[0].res.samples] == [1, 2, 3]
    assert [s["seq"] for s in jobs[0].res.samples] == [1, 3, 5]
    assert [s["seq"] for s in jobs[1].res.samples] == [2, 4, 6]
    assert all("load1_at_start" in s for j in jobs for s in j.res.samples)


def test_a_sample_records_memory_handed_back_to_the_host(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With free page reporting, each sample says how many MiB went back to the host
    while it ran (the counter read before and after); without it, no such figure."""
    (tmp_path / "reported_kib").write_text("1000\n")
    monkeypatch.setattr(hostmem, "PARAMS", tmp_path)

    def fn(ctx: object) -> dict[str, Any]:
        (tmp_path / "reported_kib").write_text("3048\n")  # 2 MiB freed during the step
        return {"dump_s": 1.0}
    job = schedule.Job(report.Result("cycle", "anon", "x", "bundled", []), fn)
    schedule.run_once(None, job, 0, 1, itertools.count(1))
    assert job.res.samples[0]["host_reported_mib"] == 2.0
    assert hostmem.describe(1000, 1000 + 3 * 1024 * 1024).startswith(
        "free page reporting: on, 3.0 GiB of freed memory handed back")
    monkeypatch.setattr(hostmem, "PARAMS", tmp_path / "absent")
    job = schedule.Job(report.Result("cycle", "anon", "x", "bundled", []), fn)
    schedule.run_once(None, job, 0, 1, itertools.count(1))
    assert "host_reported_mib" not in job.res.samples[0]
    assert hostmem.describe(None, None) == "free page reporting: not on this machine"


def test_a_failed_engine_stops_and_the_other_goes_on() -> None:
    """After criu fails in rep 1 only bundled runs; criu's error is kept, once."""
    calls: list[str] = []
    jobs = [_job("bundled", calls), _job("criu", calls, fail_at=1)]
    schedule.alternate(None, jobs, 3, itertools.count(1))
    assert calls == ["bundled", "criu", "bundled", "bundled"]
    assert jobs[1].res.errors == ["restore: criu broke"]
    assert not jobs[1].res.samples and len(jobs[0].res.samples) == 3


def _engines() -> list[Engine]:
    bundled, criu = Bundled(), Criu("/nonexistent/criu")
    for eng in (bundled, criu):
        eng.available, eng.message = True, "ok"
    return [bundled, criu]


def test_measure_all_alternates_per_workload_warm_then_cold(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """run.py's loop: for each workload, bundled then criu in every rep; with --cold the
    cold rows come after the warm ones, as separate Results."""
    calls: list[tuple[str, str, bool]] = []

    def fake_cycle(ctx: object, eng: Engine, wl: Any, cold: bool = False) -> dict[str, Any]:
        calls.append((wl.name, eng.name, cold))
        return {"dump_s": 0.1, "restore_s": 0.1}

    monkeypatch.setattr(measure, "cycle", fake_cycle)
    args = run.parse_args(["--reps", "2", "--workloads", "small,tree", "--scenarios", "cycle",
                           "--cold"])
    results = run.measure_all(args, None, _engines(), itertools.count(1))  # type: ignore[arg-type]
    want = [(w, e, cold) for cold in (False, True) for w in ("small", "tree")
            for _ in range(2) for e in ("bundled", "criu")]
    assert calls == want
    assert [(r.workload, r.engine, r.cold) for r in results] == [
        (w, e, cold) for cold in (False, True) for w in ("small", "tree")
        for e in ("bundled", "criu")]


def test_sweep_points_alternate_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each sweep point is a cycle of the sweep's workload, engines in turn."""
    calls: list[tuple[str, str, str]] = []

    def fake_cycle(ctx: object, eng: Engine, wl: Any, cold: bool = False) -> dict[str, Any]:
        calls.append((wl.name, wl.args[1], eng.name))
        return {"dump_s": 0.1, "restore_s": 0.1}

    monkeypatch.setattr(measure, "cycle", fake_cycle)
    args = run.parse_args(["--reps", "1", "--scenarios", "", "--sweeps", "procs",
                           "--sweep-procs", "5,1"])
    results = run.measure_all(args, None, _engines(), itertools.count(1))  # type: ignore[arg-type]
    assert calls == [("tree", "1", "bundled"), ("tree", "1", "criu"),
                     ("tree", "5", "bundled"), ("tree", "5", "criu")]
    assert [(r.sweep, r.units, r.workload) for r in results[:2]] == [
        ("procs", 1, "1 processes"), ("procs", 1, "1 processes")]


def test_sweep_plan_defaults_and_overrides() -> None:
    """Defaults span issue 14's ranges; given points are sorted and deduplicated."""
    plan = schedule.sweep_plan(["memory", "vmas", "procs"], {})
    by_kind = {k: [p.units for p in plan if p.kind.name == k]
               for k in ("memory", "vmas", "procs")}
    assert by_kind["memory"][0] == 64 and by_kind["memory"][-1] == 4096
    assert by_kind["vmas"][0] == 1000 and by_kind["vmas"][-1] == 60000
    assert by_kind["procs"][0] == 1 and by_kind["procs"][-1] == 50
    assert [p.kind.name for p in plan] == sorted(
        [p.kind.name for p in plan], key=["memory", "vmas", "procs"].index)
    small = schedule.sweep_plan(["vmas"], {"vmas": [2000, 1000, 2000], "memory": [1]})
    assert [(p.kind.workload, p.units) for p in small] == [("maps", 1000), ("maps", 2000)]
    assert schedule.sweep_plan([], {"vmas": [1]}) == []


def test_sweep_options_rejected_when_bad() -> None:
    """Unknown sweeps and non-positive points are refused before anything starts."""
    with pytest.raises(SystemExit):
        run.parse_args(["--sweeps", "memory,disks"])
    with pytest.raises(SystemExit):
        run.parse_args(["--sweeps", "vmas", "--sweep-vmas", "1000,0"])
    with pytest.raises(SystemExit):
        run.parse_args(["--sweep-memory", "64,lots"])
    args = run.parse_args(["--sweeps", "memory", "--sweep-memory", "64,128"])
    assert args.sweeps == ["memory"] and args.sweep_points["memory"] == [64, 128]
    assert args.sweep_points["vmas"] is None
