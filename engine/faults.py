"""Fault injection points for failure tests: ENGINE_FAULT=step[,step...] makes a step fail
(or imposes a condition, see CONDITIONS).

The dump and restore code call fault_point("<step>") at the start of each step; the
failure tests set ENGINE_FAULT and check that the engine cleans up (dump: the task keeps
running unharmed; restore: no task is left behind).
"""

from __future__ import annotations

import os

from engine.errors import EngineError

ENV = "ENGINE_FAULT"

#: Every step that has a fault point, by command. A name outside these is rejected so a
#: misspelled ENGINE_FAULT cannot make a failure test pass vacuously.
DUMP_STEPS = ("seize", "regs", "sigactions", "memory", "files", "write")
RESTORE_STEPS = ("read", "fork", "files", "mm", "pages", "regs", "detach")
STEPS = frozenset(DUMP_STEPS + RESTORE_STEPS)
#: Conditions that fail no step but make the engine behave as on an older kernel or
#: another filesystem (no-direct-io: O_DIRECT refused, as by tmpfs before 6.6).
CONDITIONS = frozenset({"no-direct-io"})


def requested() -> frozenset[str]:
    """The steps named in ENGINE_FAULT (empty when unset). Unknown names raise EngineError."""
    value = os.environ.get(ENV, "")
    names = frozenset(s.strip() for s in value.split(",") if s.strip())
    unknown = sorted(names - STEPS - CONDITIONS)
    if unknown:
        raise EngineError("fault", f"{ENV} names unknown step(s): {', '.join(unknown)} "
                                   f"(known: {', '.join(sorted(STEPS | CONDITIONS))})")
    return names


def fault_point(step: str) -> None:
    """Raise EngineError(step, "fault injected") when ENGINE_FAULT names ``step``."""
    if step not in STEPS:
        raise ValueError(f"fault_point: unknown step {step!r}")
    if step in requested():
        raise EngineError(step, f"fault injected ({ENV}={os.environ[ENV]})")


def condition(name: str) -> bool:
    """Whether ENGINE_FAULT imposes the condition ``name`` (one of CONDITIONS)."""
    if name not in CONDITIONS:
        raise ValueError(f"condition: unknown condition {name!r}")
    return name in requested()
