"""The kind-specific lines of /proc/PID/fdinfo for eventfd, signalfd, timerfd and epoll.

Formats (fs/eventfd.c, fs/signalfd.c, fs/timerfd.c, fs/eventpoll.c):
    eventfd-count: <hex>            eventfd-semaphore: <0|1> (6.7+; absent before)
    sigmask: <hex>
    clockid: <n>  ticks: <n>  settime flags: 0<octal>
    it_value: (<sec>, <nsec>)  it_interval: (<sec>, <nsec>)   (time left, not absolute)
    tfd: <fd> events: <hex> data: <hex>  pos:<n> ino:<hex> sdev:<hex>   (one per watch)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

#: the link of an anon-inode fd names its kind: anon_inode:[eventfd], anon_inode:[pidfd], ...
ANON_PREFIX = "anon_inode:"

_PAIR = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_WATCH = re.compile(r"(\d+)\s+events:\s*([0-9a-fA-F]+)\s+data:\s*([0-9a-fA-F]+)"
                    r".*?ino:\s*([0-9a-fA-F]+)\s+sdev:\s*([0-9a-fA-F]+)")


def anon_kind(target: str) -> str | None:
    """'eventfd' for 'anon_inode:[eventfd]' (also 'anon_inode:eventfd'); None otherwise."""
    if not target.startswith(ANON_PREFIX):
        return None
    return target[len(ANON_PREFIX):].strip("[]")


@dataclass(frozen=True)
class Timer:
    """A timerfd as fdinfo shows it; times in ns, `value_ns` the time left."""

    clockid: int
    ticks: int
    settime_flags: int
    value_ns: int
    interval_ns: int


@dataclass(frozen=True)
class Watch:
    """One epoll interest-list entry; `dev` in the kernel's encoding (major << 20 | minor)."""

    tfd: int
    events: int
    data: int
    ino: int
    dev: int

    def same_file(self, st_dev: int, st_ino: int) -> bool:
        """Whether this is the file a stat() of some fd returned."""
        major, minor = self.dev >> 20, self.dev & 0xFFFFF
        return self.ino == st_ino and (major, minor) == (os.major(st_dev), os.minor(st_dev))


def _ns(pair: str) -> int:
    m = _PAIR.search(pair)
    if not m:
        raise ValueError(f"bad time {pair!r}")
    return int(m.group(1)) * 1_000_000_000 + int(m.group(2))


def eventfd(extra: dict[str, str]) -> tuple[int, bool | None]:
    """(counter, semaphore mode or None when the kernel does not show it)."""
    sem = extra.get("eventfd-semaphore")
    return int(extra["eventfd-count"], 16), None if sem is None else sem.strip() == "1"


def signalfd(extra: dict[str, str]) -> int:
    """The signal mask (bit n-1 for signal n)."""
    return int(extra["sigmask"], 16)


def timerfd(extra: dict[str, str]) -> Timer:
    """Clock, pending expirations, settime flags, time left and interval."""
    return Timer(int(extra["clockid"]), int(extra["ticks"]), int(extra["settime flags"], 8),
                 _ns(extra["it_value"]), _ns(extra["it_interval"]))


def epoll(extra: dict[str, str]) -> list[Watch]:
    """Every watch of an epoll instance (fdinfo has one 'tfd:' line each)."""
    lines = extra.get("tfd", "")
    out = []
    for line in lines.splitlines():
        m = _WATCH.search(line)
        if not m:
            raise ValueError(f"bad epoll line {line!r}")
        out.append(Watch(int(m.group(1)), int(m.group(2), 16), int(m.group(3), 16),
                         int(m.group(4), 16), int(m.group(5), 16)))
    return out
