"""/proc/PID/fd and /proc/PID/fdinfo: what each fd points to, its flags and offset."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FdInfo:
    """One open fd of a task."""

    fd: int
    target: str  # readlink of /proc/PID/fd/N: a path, "pipe:[ino]", "anon_inode:[x]", ...
    pos: int
    flags: int  # open flags (O_*), including O_CLOEXEC as the kernel reports it
    mnt_id: int
    ino: int
    extra: dict[str, str] = field(default_factory=dict)  # other fdinfo lines, raw

    @property
    def cloexec(self) -> bool:
        """FD_CLOEXEC is set."""
        return bool(self.flags & os.O_CLOEXEC)


def parse_fdinfo(fd: int, target: str, text: str) -> FdInfo:
    """Parse one fdinfo file's content."""
    values: dict[str, str] = {}
    extra: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        if key in ("pos", "flags", "mnt_id", "ino"):
            values[key] = value.strip()
        elif key in extra:
            extra[key] += "\n" + value.strip()
        else:
            extra[key] = value.strip()
    return FdInfo(
        fd=fd, target=target, pos=int(values.get("pos", "0")),
        flags=int(values.get("flags", "0"), 8), mnt_id=int(values.get("mnt_id", "0")),
        ino=int(values.get("ino", "0")), extra=extra,
    )


def list_fds(pid: int) -> list[int]:
    """Open fd numbers of ``pid``, sorted."""
    return sorted(int(name) for name in os.listdir(f"/proc/{pid}/fd"))


def read_fd(pid: int, fd: int) -> FdInfo:
    """Target and fdinfo of one fd (raises FileNotFoundError if it was closed meanwhile)."""
    target = os.readlink(f"/proc/{pid}/fd/{fd}")
    with open(f"/proc/{pid}/fdinfo/{fd}", encoding="utf-8", errors="surrogateescape") as f:
        return parse_fdinfo(fd, target, f.read())


def read_fds(pid: int) -> list[FdInfo]:
    """Every open fd of ``pid`` (the task should be stopped for a consistent view).

    An fd closed between listing and reading is left out (only possible for a running
    task, or for our own directory fd when pid is ourselves).
    """
    out: list[FdInfo] = []
    for fd in list_fds(pid):
        try:
            out.append(read_fd(pid, fd))
        except FileNotFoundError:
            continue
    return out


def is_same_file(pid: int, fd: int, own_fd: int) -> bool:
    """Whether the task's descriptor `fd` and our `own_fd` name the same file (by inode:
    a path the task resolves, in its root and mount namespace, may lead elsewhere)."""
    try:
        theirs = os.stat(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return False
    mine = os.fstat(own_fd)
    return (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino)
