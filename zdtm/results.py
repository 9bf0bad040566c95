"""The results file of a run: one versioned JSON document (docs/RESULTS.md).

    {"schema": "zdtm-results", "version": 1,
     "run": {...metadata...}, "cases": [{...one test x flavour...}, ...]}

JUnit XML and the HTML page are rendered from it (zdtm.report), ``compare`` reads two of
them, ``merge`` joins the files of shards.  Loading validates the document and names the
file and the field that is wrong.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zdtm import ROOT_DIR
from zdtm.result import ENGINE_LOG_PREFIX, TEST_LOG_PREFIX, Result

SCHEMA = "zdtm-results"
VERSION = 1
GIT_TIMEOUT = 10.0


class ResultsError(ValueError):
    """A results file that cannot be read or is not a valid results document."""


@dataclass
class RunResults:
    """A run's metadata and its cases."""

    run: dict[str, Any]
    cases: list[Result] = field(default_factory=list)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(ROOT_DIR), *args], capture_output=True,
                              text=True, timeout=GIT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def harness_commit() -> dict[str, Any]:
    """{"commit": sha or None, "dirty": tracked files modified} of this checkout."""
    sha = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if sha else None
    return {"commit": sha, "dirty": bool(status)}


def kernel_taint() -> int | None:
    """/proc/sys/kernel/tainted (a bit mask; 0 is clean), None when unreadable."""
    try:
        return int(Path("/proc/sys/kernel/tainted").read_text().strip())
    except (OSError, ValueError):
        return None


def start_metadata(*, engine: str, engine_version: str, argv: Sequence[str],
                   options: dict[str, Any], shard: str | None = None) -> dict[str, Any]:
    """Metadata taken when a run starts; finish_metadata() completes it."""
    return {
        "started": _now(),
        "finished": None,
        "wall_seconds": None,
        "host": socket.gethostname(),
        "kernel": {"release": os.uname().release, "taint_start": kernel_taint(),
                   "taint_end": None},
        "engine": {"name": engine, "version": engine_version},
        "harness": harness_commit(),
        "command": ["runner.py", *argv],
        "options": options,
        "shard": shard,
        "selected": None,
        "interrupted": False,
        "_t0": time.monotonic(),
    }


def finish_metadata(run: dict[str, Any], *, selected: int, interrupted: bool) -> None:
    """Stamp the end of the run: time, wall seconds, taint now, how many were selected."""
    t0 = run.pop("_t0", None)
    run["finished"] = _now()
    if t0 is not None:
        run["wall_seconds"] = round(time.monotonic() - t0, 3)
    run["kernel"]["taint_end"] = kernel_taint()
    run["selected"] = selected
    run["interrupted"] = interrupted


def case_record(r: Result) -> dict[str, Any]:
    """One case as stored in the file (log tails apart from the problems)."""
    return {
        "test": r.test, "flavor": r.flavor, "engine": r.engine,
        "outcome": str(r.outcome), "phase": r.phase and str(r.phase),
        "kind": r.kind and str(r.kind), "message": r.message,
        "problems": r.problems(), "allowed": list(r.allowed), "notes": list(r.notes),
        "iterations": r.iterations, "duration": round(r.duration, 3),
        "phase_seconds": dict(r.phase_seconds), "steps": list(r.timings),
        "logs": {"engine": r.log_tail(ENGINE_LOG_PREFIX), "test": r.log_tail(TEST_LOG_PREFIX)},
        "workdir": r.workdir, "known": r.known,
        "attempts": [case_record(Result.from_dict(a)) for a in r.attempts],
    }


def case_from_record(rec: dict[str, Any]) -> Result:
    """Inverse of case_record (raises KeyError/ValueError/TypeError on a bad record)."""
    logs = rec["logs"]
    details = (list(rec["problems"]) + [ENGINE_LOG_PREFIX + ln for ln in logs["engine"]]
               + [TEST_LOG_PREFIX + ln for ln in logs["test"]])
    attempts = [case_from_record(a).to_dict() for a in rec["attempts"]]
    r = Result(test=rec["test"], flavor=rec["flavor"], engine=rec["engine"],
               outcome=rec["outcome"], phase=rec["phase"], kind=rec["kind"],
               message=rec["message"], details=details, notes=list(rec["notes"]),
               allowed=list(rec["allowed"]), iterations=int(rec["iterations"]),
               duration=float(rec["duration"]), phase_seconds=dict(rec["phase_seconds"]), timings=list(rec["steps"]),
               workdir=rec["workdir"], attempts=attempts, known=rec["known"])
    return Result.from_dict(r.to_dict())  # validates outcome, phase and kind


def to_document(results: RunResults) -> dict[str, Any]:
    """The JSON document of ``results``."""
    run = {k: v for k, v in results.run.items() if not k.startswith("_")}
    return {"schema": SCHEMA, "version": VERSION, "run": run,
            "cases": [case_record(r) for r in results.cases]}


def save(results: RunResults, path: Path) -> None:
    """Write ``path`` atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(to_document(results), indent=1) + "\n")
    os.replace(tmp, path)


def load(path: Path) -> RunResults:
    """Read and validate a results file; ResultsError names the file and what is wrong."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ResultsError(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ResultsError(f"{path}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ResultsError(f"{path}: not a zdtm results file (no \"schema\": \"{SCHEMA}\")")
    if doc.get("version") != VERSION:
        raise ResultsError(f"{path}: results schema version {doc.get('version')!r}, "
                           f"this harness reads version {VERSION}")
    if not isinstance(doc.get("run"), dict) or not isinstance(doc.get("cases"), list):
        raise ResultsError(f"{path}: \"run\" must be an object and \"cases\" a list")
    cases = []
    for i, rec in enumerate(doc["cases"]):
        try:
            cases.append(case_from_record(rec))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise ResultsError(f"{path}: case {i}: bad or missing field: {exc}") from None
    return RunResults(doc["run"], cases)


def durations(results: RunResults) -> dict[tuple[str, str], float]:
    """(test, flavour) -> seconds, for balancing shards (the keys zdtm.shard splits; a
    case run under several kernels counts with its longest run)."""
    out: dict[tuple[str, str], float] = {}
    for r in results.cases:
        key = (r.test, r.flavor)
        out[key] = max(out.get(key, 0.0), r.duration)
    return out


def merge(parts: Sequence[tuple[str, RunResults]]) -> RunResults:
    """One run from the results of its shards (name, results); a case in two is an error.

    The merged metadata is the first shard's, with the earliest start, the latest end, the
    longest wall time, and every shard's own metadata under "shards".
    """
    if not parts:
        raise ResultsError("merge: no results files given")
    seen: dict[tuple[str, str, str], str] = {}
    cases: list[Result] = []
    for name, part in parts:
        for r in part.cases:
            if r.key in seen:
                raise ResultsError(f"merge: {r.ident} is in both {seen[r.key]} and {name}")
            seen[r.key] = name
            cases.append(r)
    runs = [part.run for _, part in parts]
    run = dict(runs[0])
    run["started"] = min(str(r.get("started")) for r in runs)
    run["finished"] = max(str(r.get("finished")) for r in runs)
    walls = [r["wall_seconds"] for r in runs if r.get("wall_seconds") is not None]
    run["wall_seconds"] = max(walls) if walls else None
    run["selected"] = sum(int(r.get("selected") or 0) for r in runs)
    run["interrupted"] = any(r.get("interrupted") for r in runs)
    run["shard"] = None
    run["shards"] = [{"file": name, **{k: v for k, v in part.run.items() if k != "shards"}}
                     for name, part in parts]
    return RunResults(run, cases)
