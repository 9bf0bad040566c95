"""POSIX message queues of the restored tree, made by the root task before it forks.

A queue of the tree's own ipc namespace (a new one now) is made again with its name,
limits, messages (sent in receive order with their priorities), mode, owner (in a user
namespace: made by a thread whose fs ids are the owner's) and times; each description
of it is then opened with its own flags, and an unlinked queue is unlinked again. The
queues unlinked in the dump are made first: a linked queue of the same name made since
does not take their name. A linked queue of the engine's own ipc namespace outlived the
tree (the dump left its messages in it): it is opened again by name.
"""

from __future__ import annotations

import os

from engine.errors import EngineError
from engine.images.fdkinds import MqueueState
from engine.images.records import FileRecord
from engine.kernel import ipc
from engine.kernel.structs import MqAttr
from engine.restore.fsowner import as_fs_owner

_ACCESS = os.O_ACCMODE | os.O_NONBLOCK


class Queues:
    """Every description of every queue, opened at once (see the module docstring)."""

    def __init__(self, files: dict[int, FileRecord], contents: dict[int, bytes],
                 owners: dict[int, tuple[int, int]], own_ipc: bool) -> None:
        self.fds: dict[int, int] = {}  # file id -> fd of its description
        by_queue: dict[int, list[FileRecord]] = {}
        for rec in files.values():
            if rec.mqueue is not None:
                by_queue.setdefault(rec.inode, []).append(rec)
        for recs in sorted(by_queue.values(), key=lambda rs: not rs[0].deleted):
            try:
                self._queue(recs, contents, owners, own_ipc)
            except OSError as e:
                raise EngineError("files", f"mqueue {recs[0].path}: {e.strerror}") from None

    def _queue(self, recs: list[FileRecord], contents: dict[int, bytes],
               owners: dict[int, tuple[int, int]], own_ipc: bool) -> None:
        first = recs[0]
        mq = first.mqueue
        assert mq is not None
        if not own_ipc and not first.deleted:
            for rec in recs:
                self.fds[rec.id] = _reopen(mq, rec.flags)
            return
        fd = _make(mq, contents.get(first.id, b""), owners.get(first.id))
        try:
            for rec in recs:
                self.fds[rec.id] = os.open(f"/proc/self/fd/{fd}", rec.flags & _ACCESS)
        finally:
            os.close(fd)
        if first.deleted:
            ipc.mq_unlink(mq.name)

    def fd(self, rec: FileRecord) -> int:
        """The description made for `rec`."""
        return self.fds[rec.id]


def _make(mq: MqueueState, data: bytes, owner: tuple[int, int] | None) -> int:
    """The queue made anew and filled; an O_RDWR fd of it."""
    attr = MqAttr(0, mq.maxmsg, mq.msgsize, 0)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NONBLOCK | os.O_CLOEXEC

    def create() -> int:
        return ipc.mq_open(mq.name, flags, 0o600, attr)

    fd = as_fs_owner(owner, create) if owner is not None else create()
    try:
        view = memoryview(data)
        for prio, size in zip(mq.prios, mq.sizes):
            ipc.mq_send(fd, bytes(view[:size]), prio)
            view = view[size:]
        if owner is None:
            os.fchown(fd, mq.uid, mq.gid)
        os.fchmod(fd, mq.mode)  # after chown, which clears set-id bits
        os.utime(fd, ns=(mq.atime_ns, mq.mtime_ns))
    except BaseException:
        os.close(fd)
        ipc.mq_unlink(mq.name)
        raise
    return fd


def _reopen(mq: MqueueState, flags: int) -> int:
    """The linked queue that outlived the tree, opened by name (it must be the one)."""
    try:
        fd = ipc.mq_open(mq.name, flags & _ACCESS)
    except FileNotFoundError:
        raise EngineError("files", f"mqueue /{mq.name} is gone from the engine's ipc "
                                   "namespace since the dump") from None
    attr = ipc.mq_getattr(fd)
    if (attr.maxmsg, attr.msgsize) != (mq.maxmsg, mq.msgsize):
        os.close(fd)
        raise EngineError("files", f"mqueue /{mq.name} has limits {attr.maxmsg}/"
                                   f"{attr.msgsize} now, {mq.maxmsg}/{mq.msgsize} in the "
                                   "dump: another queue took its name")
    return fd
