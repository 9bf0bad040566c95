"""The kind-specific lines of /proc/PID/fdinfo for eventfd, signalfd, timerfd and epoll.

Formats (fs/eventfd.c, fs/signalfd.c, fs/timerfd.c, fs/eventpoll.c):
    eventfd-count: <hex>            eventfd-semaphore: <0|1> (6.7+; absent before)
    sigmask: <hex>
    clockid: <n>  ticks: <n>  settime flags: 0<octal>
    it_value: (<sec>, <nsec>)  it_interval: (<sec>, <nsec>)   (time left, not absolute)
    tfd: <fd> events: <hex> data: <hex>  pos:<n> ino:<hex> sdev:<hex>   (one per watch)
and for inotify, fanotify and pidfd (fs/notify/fdinfo.c, kernel/pid.c):
    inotify wd:<n> ino:<hex> sdev:<hex> mask:<hex> ignored_mask:<hex> <fhandle>  (per watch)
    fanotify flags:<hex> event-flags:<hex>
    fanotify ino:<hex> sdev:<hex> mflags:<hex> mask:<hex> ignored_mask:<hex> <fhandle>
    fanotify mnt_id:<hex> mflags:<hex> mask:<hex> ignored_mask:<hex>
    fanotify sdev:<hex> mflags:<hex> mask:<hex> ignored_mask:<hex>    (filesystem mark)
    Pid: <pid in the reader's pid namespace, -1 once reaped>
where <fhandle> is fhandle-bytes:<hex> fhandle-type:<hex> f_handle:<hex bytes>.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass

from engine.kernel import uapi
from engine.kernel.sys import syscall

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


_FIELD = re.compile(r"([a-z_-]+):([0-9a-fA-F]+)")


def _fields(line: str) -> dict[str, str]:
    return dict(_FIELD.findall(line))


@dataclass(frozen=True)
class Handle:
    """A file handle as fdinfo prints it (for open_by_handle_at), and its inode."""

    ino: int
    dev: int  # the kernel's encoding (major << 20 | minor)
    type: int
    data: bytes


def _handle(f: dict[str, str]) -> Handle:
    raw = bytes.fromhex(f["f_handle"])
    if len(raw) != int(f["fhandle-bytes"], 16):
        raise ValueError("fhandle length does not match fhandle-bytes")
    return Handle(int(f["ino"], 16), int(f["sdev"], 16), int(f["fhandle-type"], 16), raw)


@dataclass(frozen=True)
class InotifyMark:
    """One inotify watch: its watch descriptor, event mask and the watched inode."""

    wd: int
    mask: int
    ignored_mask: int
    handle: Handle


def inotify(extra: dict[str, str]) -> list[InotifyMark]:
    """Every watch of an inotify instance (one 'inotify wd:' line each)."""
    out = []
    for line in extra.get("inotify wd", "").splitlines():
        f = _fields("wd:" + line)
        try:
            out.append(InotifyMark(int(f["wd"], 16), int(f["mask"], 16),
                                   int(f["ignored_mask"], 16), _handle(f)))
        except KeyError as e:
            raise ValueError(f"bad inotify line {line!r}: no {e}") from None
    return out


@dataclass(frozen=True)
class FanotifyMark:
    """One fanotify mark: on an inode (`handle`), a mount (`mnt_id`) or a whole
    filesystem (`dev`); mflags are FAN_MARK_* flags as fanotify_mark() takes them."""

    mflags: int
    mask: int
    ignored_mask: int
    handle: Handle | None = None
    mnt_id: int | None = None
    dev: int | None = None


def fanotify(extra: dict[str, str]) -> tuple[int, int, list[FanotifyMark]]:
    """(fanotify_init flags, event_f_flags, marks)."""
    head = _fields("flags:" + extra["fanotify flags"])
    marks = []
    for key, target in (("fanotify ino", "ino"), ("fanotify mnt_id", "mnt_id"),
                        ("fanotify sdev", "sdev")):
        for line in extra.get(key, "").splitlines():
            f = _fields(f"{target}:" + line)
            try:
                masks = (int(f["mflags"], 16), int(f["mask"], 16), int(f["ignored_mask"], 16))
                if target == "ino":
                    marks.append(FanotifyMark(*masks, handle=_handle(f)))
                elif target == "mnt_id":
                    marks.append(FanotifyMark(*masks, mnt_id=int(f["mnt_id"], 16)))
                else:
                    marks.append(FanotifyMark(*masks, dev=int(f["sdev"], 16)))
            except KeyError as e:
                raise ValueError(f"bad fanotify line {line!r}: no {e}") from None
    return int(head["flags"], 16), int(head["event-flags"], 16), marks


def pidfd(extra: dict[str, str]) -> int:
    """The pid a pidfd refers to, in the reader's pid namespace (-1: already reaped)."""
    return int(extra["Pid"])


def inotify_identity(path: str) -> tuple[int, int] | None:
    """(kernel dev, inode) of `path` itself as an inotify watch names it (what a task's
    fdinfo shows), or None where no watch can be set. stat() may say otherwise: overlayfs
    shows a file's upper-layer inode and device."""
    fd = syscall(uapi.SYS_inotify_init1, uapi.O_CLOEXEC)
    try:
        name = ctypes.create_string_buffer(os.fsencode(path))
        try:
            syscall(uapi.SYS_inotify_add_watch, fd, name, uapi.IN_ATTRIB | uapi.IN_DONT_FOLLOW)
        except OSError:
            return None
        # bytes, decoded without a codec lookup: the restore runs this in the new root,
        # where Python's encodings package may not be reachable
        info = os.open(f"/proc/self/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(info, 65536).decode("ascii")
        finally:
            os.close(info)
        extra = {"inotify wd": "\n".join(ln.split("inotify wd:", 1)[1]
                                         for ln in text.splitlines()
                                         if ln.startswith("inotify wd:"))}
        marks = inotify(extra)
        return (marks[0].handle.dev, marks[0].handle.ino) if marks else None
    finally:
        os.close(fd)
