"""A pty master made again (in the restored root, before its slaves are opened by path):
its devpts mounted where a new root lacks it, the same pair number (ptmx opened until it
comes, the others closed), lock, window size, termios and both queues."""

from __future__ import annotations

import ctypes
import os

from engine.errors import EngineError
from engine.images.records import FileRecord
from engine.kernel import pty, uapi
from engine.kernel.sys import mount, syscall
from engine.restore.fsowner import as_fs_owner

_MAX_TRIES = 4096


def open_master(rec: FileRecord, flags: int, queues: bytes,
                owner: tuple[int, int] | None) -> int:
    """A new master equal to the dumped one (status flags set by the caller); its slave
    belongs to the dumped owner (`owner`: ids inside the tasks' user namespace, where
    the master is opened by the owner since devpts gives the slave to the opener)."""
    st = rec.pty
    assert st is not None and rec.path is not None
    path = rec.path
    if not _is_devpts(st.devpts):
        try:
            mount("devpts", st.devpts, "devpts", *devpts_mount_args(st.devpts_opts))
        except OSError as e:
            raise EngineError("files", f"mount devpts at {st.devpts} ({st.devpts_opts}): "
                                       f"{e.strerror}") from None
    if owner is None:
        master = _with_index(path, flags, st.index, st.devpts)
    else:
        master = as_fs_owner(owner, lambda: _with_index(path, flags, st.index, st.devpts))
    pty.set_locked(master, False)
    slave = pty.peer(master)
    try:
        if owner is None:
            os.fchown(slave, rec.uid, rec.gid)
        termios = bytes.fromhex(st.termios)
        pty.set_winsize(master, st.winsize)
        pty.refill(master, slave, termios, queues[:st.inq_len], queues[st.inq_len:])
    finally:
        os.close(slave)
    pty.set_locked(master, st.locked)
    return master


def devpts_mount_args(opts: str) -> tuple[int, str]:
    """mount(2) flags and data for a devpts of the super options `opts` (as mountinfo
    shows them). Their leading "rw"/"ro" is a flag: a devpts on the legacy mount API (Linux
    6.12 and older) refuses it in the data with EINVAL."""
    flags = 0
    data = []
    for opt in opts.split(","):
        if opt == "ro":
            flags |= uapi.MS_RDONLY
        elif opt and opt != "rw":
            data.append(opt)
    return flags, ",".join(data)


def _is_devpts(path: str) -> bool:
    buf = ctypes.create_string_buffer(120)  # struct statfs; f_type comes first
    syscall(uapi.SYS_statfs, ctypes.create_string_buffer(os.fsencode(path)), buf)
    return int.from_bytes(buf.raw[:8], "little") == uapi.DEVPTS_SUPER_MAGIC


def _with_index(path: str, flags: int, want: int, devpts: str) -> int:
    """Open ptmx until the pair numbered `want` comes (the lowest free number comes
    first). A number another terminal holds is refused: the slaves are opened by path, so
    another number would hand the restored tasks that other terminal."""
    extra: list[int] = []
    try:
        for _ in range(_MAX_TRIES):
            fd = os.open(path, flags | os.O_NOCTTY)
            extra.append(fd)
            if pty.index(fd) == want:
                return extra.pop()
            if pty.index(fd) > want:
                break
        raise EngineError("files", f"pty {want} of {devpts} is taken by "
                                   "another terminal: cannot restore it")
    finally:
        for fd in extra:
            os.close(fd)
