"""File locks as /proc/PID/fdinfo lists them, one 'lock:' line per lock held through
that open file (fs/locks.c lock_get_status):

    lock:	1: POSIX  ADVISORY  WRITE 25215 fe:00:2147320 5 14
    lock:	1: FLOCK  ADVISORY  READ 25215 fe:00:2147324 0 EOF
    lock:	1: OFDLCK ADVISORY  READ -1 fe:00:2147320 50 EOF

kind, mode, type, owner pid (as this /proc sees it; -1 for OFD locks), device:inode,
first byte, last byte or EOF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE = re.compile(r"^\d+:\s+(\S+)\s+(\S+)\s+(\S+)\s+(-?\d+)\s+\S+\s+(\d+)\s+(\d+|EOF)$")
_KINDS = {"POSIX": "posix", "FLOCK": "flock", "OFDLCK": "ofd"}


@dataclass(frozen=True)
class Lock:
    """One lock: kind posix/flock/ofd, write or read, owner pid, byte range [start, end]
    (end None: to the end of the file, as far as it grows)."""

    kind: str
    write: bool
    pid: int
    start: int
    end: int | None


def parse(lines: str) -> list[Lock]:
    """Every lock of an fdinfo's 'lock' value (lines joined with newlines); ValueError
    names a kind the engine does not know (leases, mandatory locks, ...)."""
    out = []
    for line in lines.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            raise ValueError(f"unreadable lock line {line!r}")
        kind, mode, ltype, pid, start, end = m.groups()
        if kind not in _KINDS or mode != "ADVISORY" or ltype not in ("READ", "WRITE"):
            raise ValueError(f"{kind} {mode} {ltype} lock")
        out.append(Lock(_KINDS[kind], ltype == "WRITE", int(pid), int(start),
                        None if end == "EOF" else int(end)))
    return out
