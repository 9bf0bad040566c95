"""A pty master held by the tree: the pair's number, lock, termios, window size, both
queues (taken out and written back at once: engine/kernel/pty.py) and its devpts mount.
Its slave fds are ordinary character devices (/dev/pts/N) opened again by path."""

from __future__ import annotations

import os

from engine.errors import EngineError
from engine.images import names
from engine.images.fdkinds import PtyState
from engine.images.imgdir import ImageDir
from engine.images.records import FileRecord
from engine.kernel import pty
from engine.kernel.sys import pidfd_getfd, pidfd_open
from engine.proc import mountinfo
from engine.proc.fdinfo import read_fd


def fill(img: ImageDir, rec: FileRecord, pid: int, fd: int) -> None:
    """Record the pty master at the task's fd (its content: input then output queue)."""
    where = f"task {pid} fd {fd}"
    try:
        pidfd = pidfd_open(pid)
        try:
            master = pidfd_getfd(pidfd, fd)
        finally:
            os.close(pidfd)
        try:
            st = _read(master, pid, where)
            slave = pty.peer(master)
            try:
                inq, outq = pty.take_queues(master, slave)
                owner = os.fstat(slave)
            finally:
                os.close(slave)
        finally:
            os.close(master)
    except OSError as e:
        raise EngineError("files", f"{where}: pty master: {e.strerror}") from None
    st.inq_len = len(inq)
    rec.pty = st
    rec.uid, rec.gid = owner.st_uid, owner.st_gid  # of the slave: whoever opened ptmx
    rec.content = names.file_content(rec.id)
    img.write_bytes(rec.content, inq + outq)


def _read(master: int, pid: int, where: str) -> PtyState:
    index = pty.index(master)
    point, opts = _devpts(pid, master, where)
    return PtyState(index, pty.locked(master), pty.get_termios(master).hex(),
                    pty.get_winsize(master), 0, point, opts)


def _devpts(pid: int, master: int, where: str) -> tuple[str, str]:
    """Mount point (in the task's mount namespace) and options of the pair's devpts."""
    slave = pty.peer(master)
    try:
        mnt_id = read_fd(os.getpid(), slave).mnt_id
    finally:
        os.close(slave)
    for m in mountinfo.read(pid):
        if m.id == mnt_id:
            if m.fstype != "devpts":
                break
            return m.point, m.options
    raise EngineError("files", f"{where}: cannot dump a pty master whose devpts is not "
                               "mounted in the task's mount namespace")
