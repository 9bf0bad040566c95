"""Free page reporting (virtio-balloon): the guest hands freed memory back to the host, and
the first touch of such memory afterwards faults on the host. On these VMs it makes a
memory-heavy step vary several-fold for either engine, its CPU time with it (a 1 GiB dump
in one sitting: ours 0.29-1.39 s, CRIU's 0.46-1.38 s); the bench says so next to its
figures, and each sample records how much was handed back while it ran."""

from __future__ import annotations

from pathlib import Path

PARAMS = Path("/sys/module/page_reporting/parameters")


def reported_kib() -> int | None:
    """KiB handed back to the host since boot; None without free page reporting."""
    try:
        return int((PARAMS / "reported_kib").read_text())
    except (OSError, ValueError):
        return None


def delta_mib(before: int | None, after: int | None) -> float | None:
    """MiB handed back between two readings; None when either is missing."""
    if before is None or after is None:
        return None
    return round((after - before) / 1024, 1)


def describe(before: int | None, after: int | None) -> str:
    """One line for the report header."""
    mib = delta_mib(before, after)
    if mib is None:
        return "free page reporting: not on this machine"
    return (f"free page reporting: on, {mib / 1024:.1f} GiB of freed memory handed back to "
            "the host during the run (its first touch faults on the host: memory-heavy "
            "figures vary with it, for either engine; per sample: host_reported_mib)")
