"""Owners (F_SETOWN/F_SETOWN_EX) and signals (F_SETSIG) of open file descriptions: only
the task can tell, so they are asked with injected fcntl() calls, two per description."""

from __future__ import annotations

import struct

from engine.images.records import FileRecord
from engine.kernel import uapi
from engine.kernel.inject import Injector

INJECT_TIMEOUT = 10.0
_OWNER_EX = struct.Struct("<ii")  # struct f_owner_ex: int type; pid_t pid


def read_owners(pid: int, held: list[tuple[int, FileRecord]]) -> None:
    """Fill owner_type/owner_pid/signum of each record from the fd `pid` holds on it."""
    held = [(fd, rec) for fd, rec in held if not rec.flags & uapi.O_PATH]
    if not held:
        return
    with Injector(pid, INJECT_TIMEOUT) as inj:
        buf = inj.scratch(_OWNER_EX.size)
        for fd, rec in held:
            inj.check(uapi.SYS_fcntl, fd, uapi.F_GETOWN_EX, buf)
            rec.owner_type, rec.owner_pid = _OWNER_EX.unpack(inj.read(buf, _OWNER_EX.size))
            rec.signum = inj.check(uapi.SYS_fcntl, fd, uapi.F_GETSIG)
