"""The outcome of one test x flavour run, as shown on the console and in reports.

Outcome, phase and kind are str-valued enums: they compare equal to their plain strings
("pass", "dump", "engine error") and serialise to them in JSON. The harness names them by
member (Phase.DUMP, Kind.TIMEOUT or the aliases below); Result.fail and Result.skip take
members, and a string read back from a results file is turned into one (from_dict).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """What became of a test x flavour."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    FLAKY = "flaky"  # failed, then passed when rerun (--rerun-failures): never "pass"


class Phase(StrEnum):
    """Phases of a run, in the order it goes through them."""

    BUILD = "build"
    START = "start"
    PRE_DUMP = "pre-dump"
    DUMP = "dump"
    RESTORE = "restore"
    CHECK = "check"
    STOP = "stop"


class Kind(StrEnum):
    """Kinds of failure."""

    ENGINE_CRASHED = "engine crashed"
    ENGINE_ERROR = "engine error"
    CHECK_FAILED = "check failed"
    TEST_FAIL = "test FAIL"
    HARNESS_ERROR = "harness error"
    TIMEOUT = "timeout"
    KERNEL = "kernel"  # new taint or a kernel log line of trouble during the run


# the names the lifecycle and the drivers import
PASS, FAIL, SKIP, FLAKY = Outcome.PASS, Outcome.FAIL, Outcome.SKIP, Outcome.FLAKY
ENGINE_CRASHED, ENGINE_ERROR = Kind.ENGINE_CRASHED, Kind.ENGINE_ERROR
CHECK_FAILED, TEST_FAIL = Kind.CHECK_FAILED, Kind.TEST_FAIL
HARNESS_ERROR, TIMEOUT, KERNEL = Kind.HARNESS_ERROR, Kind.TIMEOUT, Kind.KERNEL

# Prefixes of the detail lines that are log tails (the lifecycle adds them): the results
# file keeps them apart from the problems.
ENGINE_LOG_PREFIX = "engine: "
TEST_LOG_PREFIX = "outfile: "


@dataclass
class Result:
    """What happened to one test in one flavour."""

    test: str
    flavor: str
    engine: str
    outcome: Outcome = Outcome.PASS
    phase: Phase | None = None     # where it failed (or why it was skipped)
    kind: Kind | None = None       # for failures
    message: str = ""              # one line a person reads first
    details: list[str] = field(default_factory=list)  # every problem, log tails
    notes: list[str] = field(default_factory=list)    # mode switches, limits of the run
    allowed: list[str] = field(default_factory=list)  # deviations the engine declared
    timings: list[str] = field(default_factory=list)  # per engine step: time, frozen time
    iterations: int = 0            # C/R iterations completed with all checks
    duration: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase
    workdir: str | None = None     # kept with --keep-img
    attempts: list[dict[str, Any]] = field(default_factory=list)  # earlier tries (reruns)
    known: str | None = None       # reason from the known-failures file, when it matched
    kernel: str | None = None      # release of the kernel it ran under (runner --kernel)

    @property
    def ident(self) -> str:
        """``static/maps06 [ns]`` (``static/maps06 [ns] @6.1.0-57-amd64`` under --kernel)"""
        ident = f"{self.test} [{self.flavor}]"
        return f"{ident} @{self.kernel}" if self.kernel else ident

    @property
    def key(self) -> tuple[str, str, str]:
        """(test, flavour, kernel release or ""): what identifies a case across runs."""
        return self.test, self.flavor, self.kernel or ""

    def fail(self, phase: Phase, kind: Kind, message: str, details: list[str] | None = None
             ) -> None:
        """Record the first failure; later ones only add details."""
        if self.outcome == FAIL:
            self.details.append(f"also in {phase} ({kind}): {message}")
            self.details.extend(details or [])
            return
        self.outcome, self.phase, self.kind = FAIL, Phase(phase), Kind(kind)
        self.message = message
        self.details.extend(details or [])

    def skip(self, phase: Phase, message: str) -> None:
        """Mark the run skipped, with the probed reason."""
        self.outcome, self.phase, self.message = SKIP, Phase(phase), message

    def headline(self) -> str:
        """``static/a [h] dump: engine error: seize failed`` (what failed, in one line)."""
        if self.outcome == SKIP:
            return f"{self.ident} ({self.message})"
        if self.phase is None:
            return self.ident
        return f"{self.ident} {self.phase}: {self.kind}: {self.message}"

    def summary(self) -> str:
        """One console line."""
        head = f"{self.outcome.upper():4} "
        if self.outcome in (FAIL, SKIP):
            head += self.headline()
        else:
            head += f"{self.ident} ({self.iterations} iteration(s), {self.duration:.1f}s)"
        if self.outcome == FLAKY:
            head += f" after {len(self.attempts)} failed attempt(s)"
        if self.known:
            head += f" (known: {self.known})"
        if self.allowed:
            head += f" ({len(self.allowed)} allowed deviation(s))"
        if self.notes:
            head += " [" + "; ".join(self.notes) + "]"
        return head

    def problems(self) -> list[str]:
        """Detail lines that are not log tails."""
        return [d for d in self.details
                if not d.startswith((ENGINE_LOG_PREFIX, TEST_LOG_PREFIX))]

    def log_tail(self, prefix: str) -> list[str]:
        """The log lines recorded with ``prefix`` (ENGINE_LOG_PREFIX, TEST_LOG_PREFIX)."""
        return [d[len(prefix):] for d in self.details if d.startswith(prefix)]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able) for passing between processes."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        """Inverse of to_dict; raises ValueError on an unknown outcome, phase or kind."""
        r = cls(**data)
        r.outcome = Outcome(r.outcome)
        r.phase = Phase(r.phase) if r.phase is not None else None
        r.kind = Kind(r.kind) if r.kind is not None else None
        return r


class PhaseClock:
    """Adds the wall time between phase changes to ``phase_seconds`` (phase -> seconds)."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings
        self.current: str | None = None
        self.since = 0.0

    def enter(self, phase: str) -> None:
        """The run is in ``phase`` from now on."""
        self.stop()
        self.current, self.since = str(phase), time.monotonic()

    def stop(self) -> None:
        """Close the current phase."""
        if self.current is not None:
            spent = time.monotonic() - self.since
            self.timings[self.current] = round(self.timings.get(self.current, 0.0) + spent, 3)
        self.current = None
