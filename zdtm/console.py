"""What runner.py prints while it runs: each result line ends with a ``[k/N elapsed]`` counter,
each result is one block (never interleaved with another job's lines under -p), and the
closing list of failures.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from zdtm.result import FAIL, FLAKY, Result

MAX_DETAILS = 60


def elapsed(seconds: float) -> str:
    """``1:02:03`` / ``2:03``"""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Console:
    """Thread-safe console lines and the run's counter."""

    def __init__(self, total: int = 0, results_out: Path | None = None) -> None:
        self.lock = threading.Lock()
        self.results_out = results_out
        self.total = total
        self.done = 0
        self.t0 = time.monotonic()

    def line(self, text: str) -> None:
        """Print one line now."""
        self.block([text])

    def block(self, lines: Sequence[str]) -> None:
        """Print lines together (no other thread's line comes between them)."""
        with self.lock:
            print("\n".join(lines), flush=True)

    def counter(self) -> str:
        """``[k/N 2:03]``: k results so far of N, time since the run began."""
        return f"[{self.done}/{self.total} {elapsed(time.monotonic() - self.t0)}]"

    def record(self, r: Result) -> None:
        """Append a result to ``results_out`` (JSON lines) as soon as it is known: a VM
        (--kernel) that hangs later still gives back what it ran."""
        if self.results_out is not None:
            with self.lock, open(self.results_out, "a", encoding="utf-8") as f:
                f.write(json.dumps(r.to_dict()) + "\n")

    def result(self, r: Result) -> None:
        """A finished case: recorded, then its summary line and its details if it failed."""
        self.record(r)
        with self.lock:
            self.done += 1
        # the outcome first (grep ^FAIL), the counter last
        lines = [f"{r.summary()} {self.counter()}"]
        shown = r.details if r.outcome == FAIL else []
        lines += [f"    {d}" for d in shown[:MAX_DETAILS]]
        if len(shown) > MAX_DETAILS:
            lines.append(f"    ... {len(shown) - MAX_DETAILS} more lines")
        if r.outcome == FLAKY:
            lines += [f"    attempt {i}: {Result.from_dict(a).headline()}"
                      for i, a in enumerate(r.attempts, 1)]
        if r.workdir:
            lines.append(f"    work dir kept: {r.workdir}")
        self.block(lines)


def closing_lines(results: Sequence[Result]) -> list[str]:
    """Each failure (and flaky case) with its headline, for the end of the run."""
    failed = [r for r in results if r.outcome == FAIL]
    flaky = [r for r in results if r.outcome == FLAKY]
    lines = []
    if failed:
        lines.append(f"failed ({len(failed)}):")
        lines += [f"  {r.headline()}" + (f" (known: {r.known})" if r.known else "")
                  for r in failed]
    if flaky:
        lines.append(f"flaky ({len(flaky)}):")
        lines += [f"  {r.ident}: passed after {len(r.attempts)} failed attempt(s)"
                  for r in flaky]
    return lines
