"""Fault injection points for failure tests: ENGINE_FAULT=step[,step...] makes a step fail
(or imposes a condition, see CONDITIONS).

The dump calls fault_point("<step>") where each step ends, after the step's own side
effects (engine/dump/dumper.py), so a fault exercises the cleanup of what it did; the
restore calls it where each step begins, so a fault finds whatever the earlier steps made
(the tasks from fork on) to clean up. The failure tests set ENGINE_FAULT and check that the
engine cleans up (dump: the task keeps running unharmed; restore: no task is left behind).

ENGINE_PAUSE=<step> (a step above, or `commit`: just after the command's result became
final) instead stops there for up to PAUSE_SECONDS after printing `engine: paused at
<step>` on stderr, so a test can signal the engine at exactly that moment.
"""

from __future__ import annotations

import os
import sys
import time

from engine.errors import EngineError, ignored_signals

ENV = "ENGINE_FAULT"
PAUSE_ENV = "ENGINE_PAUSE"
PAUSE_SECONDS = 30.0

#: Every step that has a fault point, by command. A name outside these is rejected so a
#: misspelled ENGINE_FAULT cannot make a failure test pass vacuously.
DUMP_STEPS = ("seize", "regs", "sigactions", "memory", "files", "write")
RESTORE_STEPS = ("read", "fork", "files", "mm", "pages", "regs", "detach")
STEPS = frozenset(DUMP_STEPS + RESTORE_STEPS)
#: Conditions that fail no step but make the engine behave as on an older kernel or
#: another filesystem (no-direct-io: O_DIRECT refused, as by tmpfs before 6.6), or restore
#: something wrong on purpose, for the harness's checks to be seen failing (unshare-sighand:
#: a task dumped sharing its parent's address space and signal handlers is created with
#: CLONE_VM but without CLONE_SIGHAND, engine/restore/vmchild.py).
CONDITIONS = frozenset({"no-direct-io", "unshare-sighand"})


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
    pause_point(step)
    if step in requested():
        raise EngineError(step, f"fault injected ({ENV}={os.environ[ENV]})")


def pause_point(step: str) -> None:
    """Pause at ``step`` when ENGINE_PAUSE names it (see the module docstring)."""
    if os.environ.get(PAUSE_ENV) != step:
        return
    print(f"engine: paused at {step}", file=sys.stderr, flush=True)
    end = time.monotonic() + PAUSE_SECONDS
    ignored = ignored_signals()
    # A termination signal's handler raises from the sleep; one it ignores (after the
    # commit) ends the pause, so the test sees the command finish.
    while time.monotonic() < end and ignored_signals() == ignored:
        time.sleep(0.05)


def condition(name: str) -> bool:
    """Whether ENGINE_FAULT imposes the condition ``name`` (one of CONDITIONS)."""
    if name not in CONDITIONS:
        raise ValueError(f"condition: unknown condition {name!r}")
    return name in requested()
