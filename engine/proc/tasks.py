"""Threads, children, namespaces and per-task odds and ends from /proc."""

from __future__ import annotations

import errno
import os

# The kernel hands out pids from here on when it wraps past pid_max (RESERVED_PIDS).
_FIRST_REUSED_PID = 300


def threads(pid: int) -> list[int]:
    """Thread ids of process ``pid`` (leader first, then ascending)."""
    tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    if pid in tids:
        tids.remove(pid)
        tids.insert(0, pid)
    return tids


def children(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (/proc/PID/task/TID/children), sorted, unique."""
    kids: set[int] = set()
    for tid in threads(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                kids.update(int(x) for x in f.read().split())
        except FileNotFoundError:
            continue  # thread exited meanwhile
    return sorted(kids)


def namespaces(pid: int) -> dict[str, str]:
    """Namespace links of ``pid``: {"pid": "pid:[4026531836]", ...}."""
    out: dict[str, str] = {}
    base = f"/proc/{pid}/ns"
    for name in sorted(os.listdir(base)):
        try:
            out[name] = os.readlink(f"{base}/{name}")
        except OSError:
            continue  # a namespace the kernel will not show to us
    return out


def namespace(pid: int, name: str) -> str:
    """The namespace link of ``pid`` of type ``name``: "ipc:[4026531839]"."""
    return os.readlink(f"/proc/{pid}/ns/{name}")


def id_map(pid: int, which: str) -> list[list[int]]:
    """Rows (inside, outside, count) of /proc/PID/uid_map or gid_map (``which``)."""
    with open(f"/proc/{pid}/{which}", encoding="ascii") as f:
        return [[int(x) for x in line.split()] for line in f if line.strip()]


def cwd(pid: int) -> str:
    """Current directory of ``pid``."""
    return os.readlink(f"/proc/{pid}/cwd")


def root(pid: int) -> str:
    """Root directory of ``pid`` as we see it."""
    return os.readlink(f"/proc/{pid}/root")


def exe(pid: int) -> str:
    """Executable path of ``pid``."""
    return os.readlink(f"/proc/{pid}/exe")


def comm(pid: int, tid: int | None = None) -> str:
    """comm of the process (or of one thread)."""
    path = f"/proc/{pid}/comm" if tid is None else f"/proc/{pid}/task/{tid}/comm"
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read().rstrip("\n")


def personality(pid: int) -> int:
    """personality(2) value of ``pid``."""
    with open(f"/proc/{pid}/personality", encoding="ascii") as f:
        return int(f.read(), 16)


def oom_score_adj(pid: int) -> int:
    """/proc/PID/oom_score_adj (-1000..1000)."""
    with open(f"/proc/{pid}/oom_score_adj", encoding="ascii") as f:
        return int(f.read())


def exists(pid: int) -> bool:
    """True while /proc/PID exists (zombies included)."""
    return os.path.exists(f"/proc/{pid}")


def free_pid_after(offset: int) -> int:
    """A pid no task holds, ``offset`` past the last one handed out, wrapping at pid_max
    the way the kernel does (a guess: another process may take it before it is used)."""
    with open("/proc/sys/kernel/ns_last_pid", encoding="ascii") as f:
        pid = int(f.read()) + offset
    with open("/proc/sys/kernel/pid_max", encoding="ascii") as f:
        pid_max = int(f.read())
    for _ in range(1000):
        if pid >= pid_max:
            pid = _FIRST_REUSED_PID + pid % pid_max
        if not exists(pid):
            return pid
        pid += 1
    raise OSError(errno.EAGAIN, "no free pid found")
