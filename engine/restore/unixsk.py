"""Unix sockets rebuilt from their dumped records (in the restored root, before it forks,
like every other file), in two stages.

`Sockets.end()` makes the socket of a record when open_all asks for it: a listener is
bound and listens, then the connections accepted from it are made again (connect +
accept, so both ends carry its name) and the connections still waiting are connected in
their queue order; two ends that are each other's peer are a socketpair; a socket whose
queue must be filled and that no peer or name can reach is one end of a socketpair whose
other end (the spare) only sends that queue; names are bound as dumped (a relative path
from its directory, a stale socket file at the path removed first).

`Sockets.finish()` runs once every description is open (fds in flight are among them):
each queue is written message by message with the fds it carried, from its peer, from
the dumped sender of a datagram (by name), from the spare, or from a throwaway socket to
its name; spares are closed (the socket then sees its peer gone, as dumped), datagram
sockets connected one way are connected, and the shutdown states are set.
"""

from __future__ import annotations

import array
import fcntl
import os
import socket
import stat

from engine.errors import EngineError
from engine.images.fdkinds import UnixSocketState
from engine.images.records import FileRecord
from engine.kernel import uapi
from engine.kernel.sys import syscall
from engine.restore.fsowner import as_fs_owner

_SHUT = ((2, socket.SHUT_WR), (1, socket.SHUT_RD))  # (sk_shutdown bit, how)
_LISTEN = 10


def _st(rec: FileRecord) -> UnixSocketState:
    assert rec.unix is not None
    return rec.unix


def address(st: UnixSocketState) -> bytes:
    """The address another socket connects or sends to (a relative path made absolute)."""
    return os.fsencode(os.path.join(st.dir, st.name) if st.dir else st.name)


class Sockets:
    """Unix sockets made so far: inode of a dumped socket -> the fd made for it."""

    def __init__(self, files: dict[int, FileRecord], contents: dict[int, bytes],
                 owners: dict[int, tuple[int, int]], floor: int) -> None:
        self.contents = contents  # file id -> saved queue
        self.owners = owners  # file id -> owner of its socket file inside a user namespace
        self.floor = floor  # our fds go above every fd number of the tree
        self.recs = {r.inode: r for r in files.values() if r.unix is not None}
        self._fd: dict[int, int] = {}
        self._spare: dict[int, int] = {}  # inode -> the other end that sends its queue
        self._via = _listeners_of(self.recs)  # inode -> the listener that makes it

    def end(self, rec: FileRecord) -> int:
        """The fd for this socket (above the floor), made (with the sockets made together
        with it) the first time; it is the description's fd: the caller places it and sets
        its status flags, and the queues are filled through it at finish()."""
        if rec.inode not in self._fd:
            self._make(rec)
        return self._fd[rec.inode]

    def _keep(self, ino: int, s: socket.socket) -> socket.socket:
        """Keep our fd of the socket made for `ino`, with its dumped buffer sizes."""
        st = _st(self.recs[ino])
        for size, force, opt in ((st.sndbuf, uapi.SO_SNDBUFFORCE, socket.SO_SNDBUF),
                                 (st.rcvbuf, uapi.SO_RCVBUFFORCE, socket.SO_RCVBUF)):
            if size:
                _set_buffer(s, size, force, opt)
        self._fd[ino] = fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, self.floor)
        return s

    def _make(self, rec: FileRecord) -> None:
        st = _st(rec)
        via = self._via.get(rec.inode)
        if st.state == _LISTEN or via is not None:
            self._listener(self.recs[via] if via is not None else rec)
            return
        peer = self.recs.get(st.peer)
        if peer is not None and _st(peer).peer == rec.inode:
            a, b = socket.socketpair(socket.AF_UNIX, st.type)
            with a, b:
                self._bind(self._keep(rec.inode, a), rec)
                self._bind(self._keep(peer.inode, b), peer)
        elif st.type != socket.SOCK_DGRAM and st.state == 1 or st.queued and not st.name:
            a, b = socket.socketpair(socket.AF_UNIX, st.type)
            with a, b:
                self._bind(self._keep(rec.inode, a), rec)
                self._spare[rec.inode] = fcntl.fcntl(b.fileno(), fcntl.F_DUPFD_CLOEXEC,
                                                     self.floor)
        else:
            with socket.socket(socket.AF_UNIX, st.type) as s:
                self._bind(self._keep(rec.inode, s), rec)

    def _listener(self, rec: FileRecord) -> None:
        """The listener, then its accepted connections, then its waiting ones."""
        st = _st(rec)
        with socket.socket(socket.AF_UNIX, st.type) as lsn:
            self._bind(self._keep(rec.inode, lsn), rec)
            lsn.listen(st.backlog)
            for acc in self.recs.values():
                if self._via.get(acc.inode) == rec.inode and acc.inode not in st.icons \
                        and _st(acc).name == st.name:
                    self._connect(self.recs[_st(acc).peer], st)
                    conn, _ = lsn.accept()
                    with conn:
                        self._keep(acc.inode, conn)
            for ino in st.icons:
                self._connect(self.recs[ino], st)

    def _connect(self, rec: FileRecord, listener: UnixSocketState) -> None:
        with socket.socket(socket.AF_UNIX, _st(rec).type) as s:
            self._bind(s, rec)
            s.setblocking(False)  # a full backlog fails instead of waiting
            s.connect(address(listener))
            s.setblocking(True)
            self._keep(rec.inode, s)

    def _bind(self, s: socket.socket, rec: FileRecord) -> None:
        """Bind the dumped name: a stale socket file at a path is removed first, a
        relative path is bound from its directory (so the socket's name stays relative),
        the file gets its dumped owner and mode."""
        st = _st(rec)
        if not st.name:
            return
        if st.name.startswith("\0"):
            s.bind(os.fsencode(st.name))
            return
        path = os.fsdecode(address(st))
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        def make() -> None:
            s.bind(os.fsencode(st.name))
            os.chmod(path, st.mode)

        owner = self.owners.get(rec.id)
        here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.chdir(st.dir or "/")
            if owner is None:
                s.bind(os.fsencode(st.name))
                os.chown(path, rec.uid, rec.gid, follow_symlinks=False)
                os.chmod(path, st.mode)
            else:
                as_fs_owner(owner, make)  # (in a user namespace: made by the owner)
        finally:
            os.fchdir(here)
            os.close(here)


    def finish(self, by_file: dict[int, int]) -> None:
        """Once every description is open (by_file: file id -> fd): queues, spares,
        one-way datagram connections, shutdown states."""
        names = {_st(r).name: r.inode for r in self.recs.values()
                 if _st(r).name and _st(r).state != _LISTEN}
        for rec in self.recs.values():
            if rec.inode in self._fd:
                self._fill(rec, by_file, names)
        for fd in self._spare.values():
            os.close(fd)
        self._spare.clear()
        for rec in self.recs.values():
            st = _st(rec)
            peer = self.recs.get(st.peer)
            if rec.inode not in self._fd:
                continue
            if peer is not None and _st(peer).peer != rec.inode:
                with socket.socket(fileno=os.dup(self._fd[rec.inode])) as s:
                    s.connect(address(_st(peer)))
            for bit, how in _SHUT:
                if st.shutdown & bit:
                    syscall(uapi.SYS_shutdown, self._fd[rec.inode], how)

    def _fill(self, rec: FileRecord, by_file: dict[int, int], names: dict[str, int]) -> None:
        st = _st(rec)
        data = memoryview(self.contents.get(rec.id, b""))
        peer = self.recs.get(st.peer)
        pair = peer is not None and _st(peer).peer == rec.inode
        for i, n in enumerate(st.queued):
            chunk, data = data[:n], data[n:]
            fds = [by_file[f] for f in st.rights[i]] if st.rights else []
            sender = st.senders[i] if st.senders else ""
            if pair and peer is not None and (not sender or sender == _st(peer).name):
                _send(self._fd[peer.inode], chunk, fds, None, rec)
            elif sender:
                _send(self._fd[names[sender]], chunk, fds, address(st), rec)
            elif rec.inode in self._spare:
                _send(self._spare[rec.inode], chunk, fds, None, rec)
            else:
                with socket.socket(socket.AF_UNIX, st.type) as tmp:
                    _send(tmp.fileno(), chunk, fds, address(st), rec)


def _set_buffer(s: socket.socket, size: int, force: int, opt: int) -> None:
    """Set a buffer size as getsockopt read it (the kernel doubles what it is given):
    beyond the sysctl maximum where CAP_NET_ADMIN allows, else up to it."""
    try:
        s.setsockopt(socket.SOL_SOCKET, force, size // 2)
    except PermissionError:
        s.setsockopt(socket.SOL_SOCKET, opt, size // 2)


def _send(fd: int, data: memoryview, fds: list[int], to: bytes | None,
          rec: FileRecord) -> None:
    """One queued message (or stretch of a stream), non-blocking: a queue that does not
    fit the new socket fails instead of waiting."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    s = socket.socket(fileno=fd)
    try:
        sent = s.sendmsg([data], anc, 0, to) if to is not None else s.sendmsg([data], anc)
        while sent < len(data) and s.type == socket.SOCK_STREAM:
            sent += s.send(data[sent:])
        if sent != len(data):
            raise EngineError("files", f"unix socket {rec.link}: short write")
    except BlockingIOError:
        raise EngineError("files", f"unix socket {rec.link}: the queued data does not fit "
                                   "the new socket") from None
    finally:
        s.detach()
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


def _listeners_of(recs: dict[int, FileRecord]) -> dict[int, int]:
    """inode -> inode of the listener that makes it: the connections waiting in its
    queue, the ends accepted from it (they carry its name) and their peers."""
    by_name = {_st(r).name: r.inode for r in recs.values() if _st(r).state == _LISTEN}
    via: dict[int, int] = {}
    for r in recs.values():
        st = _st(r)
        for ino in st.icons:
            via[ino] = r.inode
        if st.state != _LISTEN and st.name in by_name and st.peer in recs:
            via[r.inode] = via[st.peer] = by_name[st.name]
    return via


def check(files: dict[int, FileRecord], contents: dict[int, bytes]) -> None:
    """Every peer, waiting connection, named sender and fd in flight is in the plan,
    pairs are of one type, and each saved queue holds exactly its messages."""
    by_ino = {r.inode: r for r in files.values() if r.unix is not None}
    named = {_st(r).name for r in by_ino.values() if _st(r).name}
    for r in by_ino.values():
        st = _st(r)
        peer = by_ino.get(st.peer)
        if st.peer and (peer is None or _st(peer).peer == r.inode
                        and _st(peer).type != st.type):
            raise EngineError("read", f"file {r.id}: unix socket {r.inode}: its peer "
                                      f"{st.peer} is not a matching socket in the image")
        missing = [i for i in st.icons if i not in by_ino] + \
            [f for ids in st.rights for f in ids if f not in files] + \
            [s for s in st.senders if s and s not in named]
        if missing:
            raise EngineError("read", f"file {r.id}: unix socket {r.inode}: {missing[0]} "
                                      "is not in the image")
        size = len(contents.get(r.id, b""))
        if sum(st.queued) != size:
            raise EngineError("read", f"file {r.id}: unix socket queue {r.content} holds "
                                      f"{size} bytes, its messages {sum(st.queued)}")
