"""/proc/PID/limits: the only way to read another task's rlimits without CAP_SYS_RESOURCE."""

from __future__ import annotations

from dataclasses import dataclass

from engine.kernel import uapi

# Row titles of fs/proc/base.c lnames[], in RLIMIT_* index order.
_ROWS = (
    "Max cpu time", "Max file size", "Max data size", "Max stack size", "Max core file size",
    "Max resident set", "Max processes", "Max open files", "Max locked memory",
    "Max address space", "Max file locks", "Max pending signals", "Max msgqueue size",
    "Max nice priority", "Max realtime priority", "Max realtime timeout",
)


@dataclass(frozen=True)
class Limit:
    """One resource limit; RLIM_INFINITY for "unlimited"."""

    resource: int  # RLIMIT_* index
    name: str  # "RLIMIT_NOFILE", ...
    soft: int
    hard: int


def _value(text: str) -> int:
    return uapi.RLIM_INFINITY if text == "unlimited" else int(text)


def parse_limits(text: str) -> list[Limit]:
    """Parse limits content into 16 Limits in RLIMIT_* order; ValueError if a row is missing."""
    found: dict[int, Limit] = {}
    for line in text.splitlines()[1:]:
        for idx, title in enumerate(_ROWS):
            if line.startswith(title + " "):
                fields = line[len(title):].split()
                found[idx] = Limit(idx, uapi.RLIMIT_NAMES[idx], _value(fields[0]),
                                   _value(fields[1]))
                break
    missing = [uapi.RLIMIT_NAMES[i] for i in range(len(_ROWS)) if i not in found]
    if missing:
        raise ValueError(f"limits: rows missing: {', '.join(missing)}")
    return [found[i] for i in range(len(_ROWS))]


def read_limits(pid: int) -> list[Limit]:
    """Resource limits of ``pid``."""
    with open(f"/proc/{pid}/limits", encoding="utf-8") as f:
        return parse_limits(f.read())
