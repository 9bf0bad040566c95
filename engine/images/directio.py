"""O_DIRECT on image files where the filesystem really does it, buffered I/O where not.

Pages files are written and read with O_DIRECT (the data skips the page cache), but not
every filesystem takes it, and not every one says so at open: tmpfs refuses O_DIRECT
before Linux 6.6 (open and F_SETFL fail with EINVAL), and overlayfs on such a tmpfs
(the /tmp of a virtme-ng guest) accepts it at open/F_SETFL and then fails every read,
write and even close(2) with EINVAL. So O_DIRECT is only kept once one aligned page of
real I/O went through; anything else means buffered I/O, which is always correct.

``ENGINE_FAULT=no-direct-io`` makes every probe fail as on such a filesystem, so the
buffered paths can be tested on a kernel whose filesystems all take O_DIRECT.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os

from engine.faults import condition

PAGE = mmap.PAGESIZE


def close_quietly(fd: int) -> None:
    """close(2) that ignores the error: the descriptor is gone whatever close reports
    (overlayfs reports its real file's EINVAL here), and a second close could hit a
    descriptor another thread just got."""
    with contextlib.suppress(OSError):
        os.close(fd)


def _probe(fd: int, write: bool) -> bool:
    """One page of O_DIRECT I/O at offset 0 (a write is undone by truncating the file,
    which must be new and empty)."""
    if condition("no-direct-io"):
        return False
    buf = mmap.mmap(-1, PAGE)  # page aligned, as O_DIRECT needs
    try:
        if write:
            os.pwrite(fd, buf, 0)
            os.ftruncate(fd, 0)
        else:
            os.preadv(fd, [buf], 0)
        return True
    except OSError:
        return False  # the buffered path reports a real I/O error, if there is one
    finally:
        buf.close()


def open_direct_read(path: str) -> int:
    """A read-only O_DIRECT descriptor of `path` that has shown it works, or -1."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
    except OSError:
        return -1
    if _probe(fd, write=False):
        return fd
    close_quietly(fd)
    return -1


def enable_direct_write(fd: int) -> bool:
    """Turn on O_DIRECT on a new, empty file opened for writing, if writes through it
    work; otherwise leave (or put) it buffered. Returns whether O_DIRECT is on."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
    except OSError:
        return False
    if _probe(fd, write=True):
        return True
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
    return False


def task_flags(direct: bool) -> int:
    """The O_DIRECT bit for a descriptor the dumped or restored task opens itself on a
    file the engine probed (selfwrite, selfread): direct only where the engine's was."""
    return os.O_DIRECT if direct else 0
