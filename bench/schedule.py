"""In what order measurements run: engines in turn rep by rep, and the scaling sweeps' points.

The machine's speed drifts by up to +-50% between batches (DESIGN.md section 8), so the
engines are never measured one batch after the other: rep 1 of every engine, then rep 2
of every engine, and so on, for each workload.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import hostmem, measure, report
from bench.procs import DeadlineExceeded

# What a failed repetition may raise; anything else is a bug of the benchmark itself.
STEP_ERRORS = (measure.StepFailed, DeadlineExceeded, RuntimeError, OSError)


def rep_order(reps: int, jobs: int) -> list[tuple[int, int]]:
    """(rep, job index) in running order: every job once per rep, in turn (A B A B)."""
    return [(rep, j) for rep in range(reps) for j in range(jobs)]


@dataclass
class Job:
    """One engine's measurement of one workload: fn(ctx, *args) -> sample, into res."""

    res: report.Result
    fn: Callable[..., dict[str, Any]]
    args: tuple[Any, ...] = ()
    failed: bool = field(default=False, init=False)


def alternate(ctx: Any, jobs: list[Job], reps: int, seq: Iterator[int]) -> None:
    """Run the jobs rep by rep in turn. A job that fails once is not run again (it would
    repeat the failure); the others go on. seq numbers the samples over the whole run, so
    the JSON shows the order in which everything ran."""
    for rep, j in rep_order(reps, len(jobs)):
        job = jobs[j]
        if not job.failed:
            run_once(ctx, job, rep, reps, seq)


def run_once(ctx: Any, job: Job, rep: int, reps: int, seq: Iterator[int]) -> None:
    """One repetition of a job; its sample (with rep, order and load) or its error."""
    res = job.res
    tag = f"[{res.scenario}{' cold' if res.cold else ''} {res.workload} {res.engine} " \
          f"{rep + 1}/{reps}]"
    load1, started = os.getloadavg()[0], time.time()
    reported = hostmem.reported_kib()
    try:
        sample = job.fn(ctx, *job.args)
    except STEP_ERRORS as exc:
        res.errors.append(str(exc))
        job.failed = True
        log(f"{tag} FAILED: {exc}")
        return
    # In the JSON: which rep, the order over the whole run, how busy the machine was and
    # how much freed memory went back to the host meanwhile (bench/hostmem.py).
    sample.update(rep=rep + 1, seq=next(seq), started_at=started, load1_at_start=load1)
    handed_back = hostmem.delta_mib(reported, hostmem.reported_kib())
    if handed_back is not None:
        sample["host_reported_mib"] = handed_back
    res.samples.append(sample)
    figures = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in sample.items()
                       if k not in ("verify_detail", "started_at", "seq"))
    log(f"{tag} {figures}")


def log(msg: str) -> None:
    """Progress line on stderr (the tables go to stdout)."""
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class SweepKind:
    """One scaling sweep: the workload it grows and how its per-unit cost is printed."""

    name: str  # memory | vmas | procs
    workload: str  # the Workload constructor: anon | maps | tree
    unit: str  # what a point counts, e.g. "MiB"
    cost_unit: str  # e.g. "s/GiB"
    cost_scale: float  # seconds per unit -> cost_unit
    default_points: tuple[int, ...]


SWEEP_KINDS = {
    "memory": SweepKind("memory", "anon", "MiB", "s/GiB", 1024.0,
                        (64, 256, 1024, 2048, 4096)),
    "vmas": SweepKind("vmas", "maps", "VMAs", "us/VMA", 1e6,
                      (1000, 3000, 10000, 30000, 60000)),
    "procs": SweepKind("procs", "tree", "processes", "ms/process", 1e3,
                       (1, 2, 5, 10, 20, 50)),
}


@dataclass(frozen=True)
class SweepPoint:
    """One size of one sweep."""

    kind: SweepKind
    units: int


def sweep_plan(kinds: Sequence[str],
               points: dict[str, Sequence[int] | None]) -> list[SweepPoint]:
    """The points to measure, sweep by sweep, smallest first; points[kind] overrides
    the kind's defaults (None or missing: the defaults)."""
    plan = []
    for name in kinds:
        kind = SWEEP_KINDS[name]
        chosen = points.get(name) or kind.default_points
        plan += [SweepPoint(kind, n) for n in sorted(set(chosen))]
    return plan
