"""/proc/swaps: the active swap areas (a header line, then one line per area)."""

from __future__ import annotations


def in_use() -> bool:
    """Whether any swap area is active; True when /proc/swaps cannot be read (assuming
    swap is always correct for the dump, only slower)."""
    try:
        with open("/proc/swaps", encoding="ascii") as f:
            return len(f.read().splitlines()) > 1
    except OSError:
        return True
