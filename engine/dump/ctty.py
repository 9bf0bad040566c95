"""The controlling terminal of a task: its path and foreground process group.

A pseudo-terminal is found again by its /dev/pts path at restore: its master is held
outside the dumped tree (a shell under a terminal emulator, tmux or pexpect), or inside
it, and then made again with the same index before (engine/restore/pty.py).
"""

from __future__ import annotations

import os

from engine.errors import EngineError
from engine.proc.stat import Stat

_PTS_MAJORS = range(136, 144)  # Unix98 pty slaves: minor + 256 * (major - 136)


def controlling_tty(pid: int, st: Stat, tree_pgids: set[int]) -> tuple[str | None, int]:
    """(path of the controlling terminal or None, foreground pgrp if it is one of the
    tree's process groups, else 0)."""
    if st.tty_nr == 0:
        return None, 0
    major, minor = os.major(st.tty_nr), os.minor(st.tty_nr)
    if major in _PTS_MAJORS:
        path = f"/dev/pts/{minor + 256 * (major - 136)}"
    else:
        path = _fd_path(pid, st.tty_nr)
    try:
        if os.stat(f"/proc/{pid}/root{path}").st_rdev != st.tty_nr:  # in the task's root
            raise OSError(0, "another device")
    except OSError as e:
        raise EngineError("files", f"task {pid}: controlling terminal {major}:{minor} is not "
                                   f"at {path} ({e.strerror})") from None
    return path, st.tpgid if st.tpgid in tree_pgids else 0


def _fd_path(pid: int, rdev: int) -> str:
    """A path of the terminal from one of the task's fds on it."""
    for name in os.listdir(f"/proc/{pid}/fd"):
        link = f"/proc/{pid}/fd/{name}"
        try:
            if os.stat(link).st_rdev == rdev:
                return os.readlink(link)
        except OSError:
            continue
    raise EngineError("files", f"task {pid}: controlling terminal {os.major(rdev)}:"
                               f"{os.minor(rdev)} has no path (no fd of the task is on it)")
