"""Terminal state: termios and window size of every tty fd, a process's controlling tty and
the terminal's foreground process group.

termios and the window size belong to the terminal, so an ioctl on a copy of the task's fd
(pidfd_getfd) reads the same. The controlling tty and the foreground group come from
/proc/PID/stat (tty_nr, tpgid); the tty is named after the first fd of the tree open on it
("tty[pid 1 fd 0]"), as pty numbers can change across a restore, and the group by its pgid
in the tree's own pid namespace.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
from collections.abc import Mapping

TCGETS = 0x5401
TIOCGWINSZ = 0x5413
TERMIOS_SIZE = 36  # struct termios: 4 flag words, c_line, 19 control characters
TTY_MAJORS = frozenset({4, 5, *range(136, 144)})  # ttyN/ttyS, tty/ptmx, pts


def is_tty(pid: int, fd: int) -> int | None:
    """The device number when PID's fd is a terminal device, else None."""
    try:
        st = os.stat(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    if stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in TTY_MAJORS:
        return st.st_rdev
    return None


def terminal(copy: int) -> dict[str, str]:
    """termios and window size of the terminal behind an fd (what the fd allows)."""
    out = {}
    try:
        raw = fcntl.ioctl(copy, TCGETS, bytes(TERMIOS_SIZE))
        iflag, oflag, cflag, lflag = struct.unpack_from("4I", raw)
        cc = raw[17:TERMIOS_SIZE].hex()
        out["termios"] = (f"iflag {iflag:#o} oflag {oflag:#o} cflag {cflag:#o} "
                          f"lflag {lflag:#o} line {raw[16]} cc {cc}")
    except OSError:
        pass  # /dev/ptmx without a peer, or a device without termios
    try:
        rows, cols, xpix, ypix = struct.unpack("4H", fcntl.ioctl(copy, TIOCGWINSZ, bytes(8)))
        out["winsize"] = f"{rows}x{cols} ({xpix}x{ypix} px)"
    except OSError:
        pass
    return out


def controlling(tty_nr: int, tpgid: int, ttys: Mapping[int, str],
                inner_pgid: Mapping[int, int]) -> dict[str, str]:
    """Controlling tty (a label from ``ttys``: device -> label) and foreground group."""
    if not tty_nr:
        return {}
    name = ttys.get(tty_nr, f"device {os.major(tty_nr)}:{os.minor(tty_nr)}")
    out = {"controlling tty": name}
    if tpgid > 0:
        shown = inner_pgid.get(tpgid)
        out["foreground pgrp"] = str(shown) if shown is not None else f"outside {tpgid}"
    return out
