"""/proc/PID/mountinfo: the mounts a task sees (id, device, mount point)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Mount:
    """One mount as the task sees it; `point` in the task's own root."""

    id: int
    kdev: int  # the kernel's encoding of the device (major << 20 | minor), as in fdinfo
    root: str
    point: str
    fstype: str = ""
    options: str = ""  # the superblock's options, as the kernel writes them


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes
    return os.fsdecode(field.encode("latin-1").decode("unicode_escape").encode("latin-1"))


def read(pid: int) -> list[Mount]:
    """Every mount of the task's mount namespace below its root."""
    out = []
    with open(f"/proc/{pid}/mountinfo", encoding="latin-1") as f:
        for line in f:
            # Single spaces separate the fields (the kernel escapes those in names);
            # str.split() would also split at bytes such as 0x85 or 0xa0 read as latin-1.
            parts = line.rstrip("\n").split(" ")
            major, minor = (int(x) for x in parts[2].split(":"))
            sep = parts.index("-", 6)  # after the optional fields
            out.append(Mount(int(parts[0]), major << 20 | minor, _unescape(parts[3]),
                             _unescape(parts[4]), _unescape(parts[sep + 1]),
                             os.fsdecode(parts[sep + 3].encode("latin-1"))))
    return out


def kdev_of(st_dev: int) -> int:
    """The kernel's encoding of a stat() st_dev (as fdinfo and mountinfo show it)."""
    return os.major(st_dev) << 20 | os.minor(st_dev)
