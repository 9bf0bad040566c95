"""POSIX message queues held open by the tree: limits, owner, mode, times and messages.

A queue's messages can only be read by taking them (mq_timedreceive), so the dump takes
every one through a description of its own (reopened through /proc/PID/fd/N: linked or
unlinked alike) and sends each back at once, in receive order with its priority, which
rebuilds the queue as it was; the times the kernel moved are put back. Whatever fails
on the way, what was taken is sent back before the error is raised: a failed dump loses
no message. The tree is frozen meanwhile; a process outside it that shares the queue (a
linked queue of the engine's own ipc namespace) could, for that moment, find it emptied
or only partly refilled, take a message first (it would have had it next anyway), or
send one that then sorts before ours of the same priority.

Refused: a queue with a notification registered (mq_notify: its sigevent cannot be read
back, and the refill would fire it), and a linked queue that is not the one its name
gives in the holder's ipc namespace (a restore opens queues by name).
"""

from __future__ import annotations

import os
import stat

from engine.errors import EngineError
from engine.images import names
from engine.images.fdkinds import MqueueState
from engine.images.imgdir import ImageDir
from engine.images.records import FileRecord
from engine.kernel import ipc, uapi
from engine.kernel import sys as ksys

_DELETED = " (deleted)"
_TIMEOUT = 10.0


def is_mqueue(pid: int, fd: int) -> bool:
    """Whether task pid's fd is a POSIX message queue (a file of an mqueue filesystem)."""
    path = os.open(f"/proc/{pid}/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
    try:
        return ksys.fs_type(path) == uapi.MQUEUE_MAGIC
    finally:
        os.close(path)


def fill(img: ImageDir, done: dict[int, MqueueState], rec: FileRecord, pid: int,
         fd: int) -> None:
    """Record the queue behind task pid's fd into rec; its messages are saved once per
    queue (`done`: inode -> state of the queues seen so far)."""
    link = rec.link
    rec.deleted = link.endswith(_DELETED)
    rec.path = link.removesuffix(_DELETED)
    rec.content = names.mqueue_content(rec.inode)
    if rec.inode in done:
        rec.mqueue = done[rec.inode]
        return
    where = f"task {pid} fd {fd}: mqueue {rec.path}"
    try:
        own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise EngineError("files", f"{where}: cannot reopen it: {e.strerror}") from None
    try:
        _refuse_notify(own, where)
        if not rec.deleted:
            _check_name(pid, rec, where)
        st = os.fstat(own)
        attr = ipc.mq_getattr(own)
        messages = _take_and_give_back(own, attr.curmsgs, attr.msgsize, st, where)
    except OSError as e:
        raise EngineError("files", f"{where}: {e.strerror}") from None
    finally:
        os.close(own)
    img.write_bytes(rec.content, b"".join(data for _, data in messages))
    rec.mqueue = done[rec.inode] = MqueueState(
        rec.path[1:], attr.maxmsg, attr.msgsize, stat.S_IMODE(st.st_mode), st.st_uid,
        st.st_gid, st.st_atime_ns, st.st_mtime_ns, [p for p, _ in messages],
        [len(d) for _, d in messages])


def _refuse_notify(own: int, where: str) -> None:
    """Reading the queue's file gives "QSIZE:n NOTIFY:n SIGNO:n NOTIFY_PID:n"."""
    fields = dict(f.split(":", 1) for f in os.read(own, 256).decode("ascii").split())
    if int(fields.get("NOTIFY_PID", "0")):
        raise EngineError("files", f"{where}: a notification is registered (mq_notify by "
                                   f"pid {fields['NOTIFY_PID']}): its sigevent cannot be "
                                   "read back")


def _check_name(pid: int, rec: FileRecord, where: str) -> None:
    """A linked queue must be the one its name opens in the holder's ipc namespace."""
    assert rec.path is not None
    ns = ipc.NsThread(f"/proc/{pid}/ns/ipc", _TIMEOUT)
    try:
        found = ns.call(_identity, rec.path[1:])
    finally:
        ns.close()
    if found != (rec.dev, rec.inode):
        raise EngineError("files", f"{where}: that name opens another queue in the task's "
                                   "ipc namespace: it could not be opened again by name")


def _identity(name: str) -> tuple[int, int] | None:
    try:
        fd = ipc.mq_open(name, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino
    finally:
        os.close(fd)


def _take_and_give_back(own: int, count: int, msgsize: int, st: os.stat_result,
                        where: str) -> list[tuple[int, bytes]]:
    """Every message (priority, data) in receive order; the queue holds them again after,
    with its times as before."""
    taken: list[tuple[int, bytes]] = []
    try:
        for _ in range(count):
            taken.append(ipc.mq_receive(own, msgsize))
    finally:
        for n, (prio, data) in enumerate(taken):
            try:
                ipc.mq_send(own, data, prio)
            except OSError as e:
                raise EngineError("files", f"{where}: {len(taken) - n} of its messages "
                                           f"could not be put back: {e.strerror}") from None
        os.utime(own, ns=(st.st_atime_ns, st.st_mtime_ns))
    return taken
