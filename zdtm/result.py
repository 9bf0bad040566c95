"""The outcome of one test x flavour run, as shown on the console and in reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# phases, in the order a run goes through them
PHASES = ("build", "start", "pre-dump", "dump", "restore", "check", "stop")

# kinds of failure
ENGINE_CRASHED = "engine crashed"
ENGINE_ERROR = "engine error"
CHECK_FAILED = "check failed"
TEST_FAIL = "test FAIL"
HARNESS_ERROR = "harness error"
TIMEOUT = "timeout"
KERNEL = "kernel"  # new taint or a kernel log line of trouble during the run
KINDS = (ENGINE_CRASHED, ENGINE_ERROR, CHECK_FAILED, TEST_FAIL, HARNESS_ERROR, TIMEOUT, KERNEL)

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass
class Result:
    """What happened to one test in one flavour."""

    test: str
    flavor: str
    engine: str
    outcome: str = PASS            # pass, fail or skip
    phase: str | None = None       # where it failed (or why it was skipped)
    kind: str | None = None        # one of KINDS for failures
    message: str = ""              # one line a person reads first
    details: list[str] = field(default_factory=list)  # every problem, log tails
    notes: list[str] = field(default_factory=list)    # mode switches, limits of the run
    iterations: int = 0            # C/R iterations completed with all checks
    duration: float = 0.0
    workdir: str | None = None     # kept with --keep-img
    kernel: str | None = None      # release of the kernel it ran under (runner --kernel)

    @property
    def ident(self) -> str:
        """``static/maps06 [ns]`` (``static/maps06 [ns] @6.1.0-57-amd64`` under --kernel)"""
        ident = f"{self.test} [{self.flavor}]"
        return f"{ident} @{self.kernel}" if self.kernel else ident

    def fail(self, phase: str, kind: str, message: str, details: list[str] | None = None
             ) -> None:
        """Record the first failure; later ones only add details."""
        if self.outcome == FAIL:
            self.details.append(f"also in {phase} ({kind}): {message}")
            self.details.extend(details or [])
            return
        self.outcome, self.phase, self.kind, self.message = FAIL, phase, kind, message
        self.details.extend(details or [])

    def skip(self, phase: str, message: str) -> None:
        """Mark the run skipped, with the probed reason."""
        self.outcome, self.phase, self.message = SKIP, phase, message

    def summary(self) -> str:
        """One console line."""
        head = f"{self.outcome.upper():4} {self.ident}"
        if self.outcome == FAIL:
            head += f" {self.phase}: {self.kind}: {self.message}"
        elif self.outcome == SKIP:
            head += f" ({self.message})"
        else:
            head += f" ({self.iterations} iteration(s), {self.duration:.1f}s)"
        if self.notes:
            head += " [" + "; ".join(self.notes) + "]"
        return head

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able) for passing between processes."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        """Inverse of to_dict."""
        return cls(**data)
