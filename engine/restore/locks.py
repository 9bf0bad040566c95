"""File locks taken again: flock and OFD locks belong to the open file and are taken
where it is opened (the root, before forking); a POSIX lock belongs to a process and is
taken by its owner once its fds are in place. Never blocking: a lock someone else holds
now is an error, not a wait."""

from __future__ import annotations

import fcntl
import struct

from engine.errors import EngineError
from engine.images.fdkinds import LockRecord
from engine.images.records import FileRecord

F_OFD_SETLK = 37  # fcntl.h; Python's fcntl module lacks it
_FLOCK = struct.Struct("@hhqqi4x")  # struct flock (native alignment): type, whence, start, len, pid


def flock_struct(lk: LockRecord) -> bytes:
    """The struct flock that takes `lk` again (F_SETLK / F_OFD_SETLK)."""
    return _FLOCK.pack(fcntl.F_WRLCK if lk.write else fcntl.F_RDLCK, 0, lk.start, lk.length, 0)


def _setlk(fd: int, cmd: int, lk: LockRecord) -> None:
    fcntl.fcntl(fd, cmd, flock_struct(lk))


def take_file_locks(fd: int, rec: FileRecord) -> None:
    """The flock and OFD locks held through this open file."""
    for lk in rec.locks:
        try:
            if lk.kind == "flock":
                fcntl.flock(fd, (fcntl.LOCK_EX if lk.write else fcntl.LOCK_SH)
                            | fcntl.LOCK_NB)
            elif lk.kind == "ofd":
                _setlk(fd, F_OFD_SETLK, lk)
        except OSError as e:
            raise EngineError("files", f"{rec.path or rec.link}: {lk.kind} lock: "
                                       f"{e.strerror}") from None


def take_posix(owned: list[tuple[int, LockRecord]], fd_of_file: dict[int, int]) -> None:
    """In the owning task, its fds in place: its POSIX locks, each through its fd on the
    open file (file id) it was taken through."""
    for fid, lk in owned:
        if fid not in fd_of_file:
            raise EngineError("files", f"file {fid}: the POSIX lock's owner has no fd on it")
        try:
            _setlk(fd_of_file[fid], fcntl.F_SETLK, lk)
        except OSError as e:
            raise EngineError("files", f"file {fid}: POSIX lock at {lk.start}: "
                                       f"{e.strerror}") from None


def posix_by_owner(files: dict[int, FileRecord]) -> dict[int, list[tuple[int, LockRecord]]]:
    """Task pid -> [(file id, lock)] of the POSIX locks it owns."""
    out: dict[int, list[tuple[int, LockRecord]]] = {}
    for rec in files.values():
        for lk in rec.locks:
            if lk.kind == "posix":
                out.setdefault(lk.owner, []).append((rec.id, lk))
    return out
