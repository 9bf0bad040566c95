"""Pseudo-terminal pairs: uapi ioctls (asm-generic/ioctls.h) and the two queues of a
pair, taken out and written back without changing them.

The queues of a tty cannot be peeked: the input queue (written to the master, not yet
read from the slave) is read from the slave with canonical mode off, so a partial line
comes out too; the output queue (written to the slave, not yet read from the master) is
read from the master, whose own termios is raw. Writing them back goes through the line
discipline again, so it runs with echo, signals, input mapping and output processing off
(canonical mode as it was, so lines are lines again), then the termios is put back.
Writes are processed by a work item: poll() on the reading side waits for it.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct

from engine.kernel.uapi import (
    TCGETS,
    TCSETS,
    TIOCGPTLCK,
    TIOCGPTN,
    TIOCGPTPEER,
    TIOCGWINSZ,
    TIOCSPTLCK,
    TIOCSWINSZ,
)

_TERMIOS = struct.Struct("=IIIIB19s")  # iflag oflag cflag lflag line cc[NCCS=19]
_WINSIZE = struct.Struct("=4H")
# termbits.h bits the write-back turns off: input mapping (ISTRIP INLCR IGNCR ICRNL
# IUCLC IXON) and output processing (OPOST)
_IMAP = 0o000040 | 0o000100 | 0o000200 | 0o000400 | 0o001000 | 0o002000
_OPOST = 0o000001
_ISIG, _ICANON, _ECHO, _ECHOE, _ECHOK, _ECHONL, _IEXTEN = 1, 2, 8, 0o20, 0o40, 0o100, 0o100000
_VTIME, _VMIN = 5, 6


def get_termios(fd: int) -> bytes:
    """struct termios of the tty behind fd (of a master: its slave's)."""
    return fcntl.ioctl(fd, TCGETS, bytes(_TERMIOS.size))


def set_termios(fd: int, raw: bytes) -> None:
    """TCSETS (at once)."""
    fcntl.ioctl(fd, TCSETS, raw)


def get_winsize(fd: int) -> list[int]:
    """rows, cols, xpixel, ypixel."""
    return list(_WINSIZE.unpack(fcntl.ioctl(fd, TIOCGWINSZ, bytes(_WINSIZE.size))))


def set_winsize(fd: int, ws: list[int]) -> None:
    """TIOCSWINSZ."""
    fcntl.ioctl(fd, TIOCSWINSZ, _WINSIZE.pack(*ws))


def index(master: int) -> int:
    """The pty number of a master (TIOCGPTN): its slave is pts/N."""
    return int(struct.unpack("=I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0])


def locked(master: int) -> bool:
    """Whether the slave is still locked (no unlockpt yet)."""
    return bool(struct.unpack("=i", fcntl.ioctl(master, TIOCGPTLCK, b"\0" * 4))[0])


def set_locked(master: int, lock: bool) -> None:
    """TIOCSPTLCK."""
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("=i", int(lock)))


def peer(master: int) -> int:
    """An fd on the slave, opened through the master (no path: any mount namespace)."""
    return fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK
                       | os.O_CLOEXEC)


def _with(raw: bytes, iflag_off: int, oflag_off: int, lflag_off: int,
          noncanon: bool = False) -> bytes:
    iflag, oflag, cflag, lflag, line, cc = _TERMIOS.unpack(raw)
    cc = bytearray(cc)
    if noncanon:
        cc[_VMIN] = cc[_VTIME] = 0
    return _TERMIOS.pack(iflag & ~iflag_off, oflag & ~oflag_off, cflag, lflag & ~lflag_off,
                         line, bytes(cc))


def _settle(fd: int) -> None:
    p = select.poll()
    p.register(fd, select.POLLIN)
    p.poll(0)  # n_tty_poll waits for the flip buffer work: earlier writes are processed


def _read_all(fd: int) -> bytes:
    _settle(fd)
    out = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        out.append(chunk)
    return b"".join(out)


def take_queues(master: int, slave: int) -> tuple[bytes, bytes]:
    """(input queue, output queue) of the pair, written back at once (both fds ours,
    non-blocking). The termios is as before when this returns."""
    saved = get_termios(slave)
    mflags = fcntl.fcntl(master, fcntl.F_GETFL)
    fcntl.fcntl(master, fcntl.F_SETFL, mflags | os.O_NONBLOCK)
    try:
        set_termios(slave, _with(saved, 0, 0, _ICANON | _ECHO | _ISIG | _IEXTEN, True))
        inq = _read_all(slave)
        outq = _read_all(master)
        refill(master, slave, saved, inq, outq)
    finally:
        set_termios(slave, saved)
        fcntl.fcntl(master, fcntl.F_SETFL, mflags)
    return inq, outq


def refill(master: int, slave: int, termios: bytes, inq: bytes, outq: bytes) -> None:
    """Queue `inq` for the slave to read and `outq` for the master to read, as they
    were, then set `termios` on the pair."""
    quiet = _with(termios, _IMAP, _OPOST,
                  _ECHO | _ECHOE | _ECHOK | _ECHONL | _ISIG | _IEXTEN)
    set_termios(slave, quiet)
    try:
        for fd, data, reader in ((master, inq, slave), (slave, outq, master)):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            _settle(reader)
    finally:
        set_termios(slave, termios)
