"""Unix sockets: type, peer, name and socket file, listening state and waiting
connections, shutdown state, buffer sizes and the queued data with the fds in flight in
it, read without taking anything away from the task.

The engine takes its own descriptor of the very socket (pidfd_getfd) and peeks at the
receive queue from offset 0 with SO_PEEK_OFF, one message per read for datagram and
seqpacket sockets; the task's peek offset is put back. What the restore cannot build is
refused here, while the tree still runs (check_peers for what needs the whole tree):
other families, peers, waiting connections or named senders outside the tree, a path
whose socket file is gone, data sent on a connection not yet accepted, files with a
path or cycles of sockets in flight, a name bound twice.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.errors import EngineError
from engine.images import names
from engine.images.fdkinds import UnixSocketState
from engine.images.imgdir import ImageDir
from engine.images.records import FileRecord
from engine.kernel import sockdiag, uapi
from engine.kernel.sys import pidfd_getfd, pidfd_open
from engine.proc import anonfd, tasks

_LISTEN = 10
_SCM_MAX_FD = 253  # most fds one SCM_RIGHTS message carries
_PEEK_MAX = 8 << 20  # one peek's buffer: more than any queue a default socket can hold
_FAMILIES = {socket.AF_NETLINK: "a netlink", socket.AF_PACKET: "a packet"}


class Diag:
    """sock_diag sockets, one per network namespace of the dumped tree (by ns inode)."""

    def __init__(self) -> None:
        self._by_ns: dict[int, sockdiag.DiagSocket] = {}

    def query(self, pid: int, s: socket.socket, ino: int) -> sockdiag.UnixSock:
        """The unix socket `ino` (our descriptor `s`, held by task `pid`) as seen from
        its own netns (a file in flight may come from another netns than its holder's)."""
        nsfd = fcntl.ioctl(s.fileno(), uapi.SIOCGSKNS)
        try:
            ns = os.fstat(nsfd).st_ino
            if ns not in self._by_ns:
                self._by_ns[ns] = sockdiag.DiagSocket(pid, f"/proc/self/fd/{nsfd}")
        finally:
            os.close(nsfd)
        return self._by_ns[ns].unix(ino)

    def close(self) -> None:
        """Close every netlink socket."""
        for d in self._by_ns.values():
            d.close()
        self._by_ns.clear()


def _refuse(pid: int, fd: int, what: str) -> EngineError:
    return EngineError("files", f"task {pid} fd {fd}: cannot dump {what}: not supported "
                                "by this engine")


def take(pid: int, fd: int) -> socket.socket:
    """The engine's own descriptor of the socket behind the task's fd."""
    try:
        pidfd = pidfd_open(pid)
        try:
            return socket.socket(fileno=pidfd_getfd(pidfd, fd))
        finally:
            os.close(pidfd)
    except OSError as e:
        raise EngineError("files", f"task {pid} fd {fd}: cannot take the socket: "
                                   f"{e.strerror}") from None


def refuse_family(pid: int, fd: int, s: socket.socket, link: str) -> EngineError:
    """The dump's error for a socket family the engine does not restore."""
    return _refuse(pid, fd, f"{_FAMILIES.get(s.family, 'a')} socket ({link})")


def fill(img: ImageDir, diag: Diag, rec: FileRecord, pid: int, fd: int, s: socket.socket,
         in_flight: Callable[[int], int]) -> None:
    """Record the unix socket `s` (the engine's descriptor of the task's fd) with its
    name, listening state and queued data; `in_flight(our_fd)` records a file found in
    flight in the queue (taking over our descriptor of it) and returns its file id."""
    try:
        info = diag.query(pid, s, rec.inode)
    except OSError as e:
        raise EngineError("files", f"task {pid} fd {fd}: sock_diag: {e.strerror}") from None
    st = UnixSocketState(info.type, info.peer, info.shutdown, [], state=info.state)
    st.sndbuf, st.rcvbuf = _buffers(s)
    if info.name is not None:
        st.name, st.dir, file = _bound(pid, fd, info)
        if file is not None:
            st.mode, rec.uid, rec.gid = stat.S_IMODE(file.st_mode), file.st_uid, file.st_gid
    rec.content = names.socket_queue(rec.inode)
    if info.state == _LISTEN:
        st.backlog, st.icons = info.wqueue, list(info.icons)
        img.write_bytes(rec.content, b"")
    else:
        if not info.peer and info.type != socket.SOCK_DGRAM and info.wqueue:
            # a connecting socket whose data waits in a connection nobody accepted yet:
            # that queue belongs to no file the engine can reach without accepting it
            raise _refuse(pid, fd, "a unix socket whose sent data waits in a connection "
                                   "not yet accepted")
        queue = _peek_queue(s, pid, fd, info.type, in_flight)
        st.queued, st.rights, st.senders = queue.lens, queue.rights, queue.senders
        img.write_bytes(rec.content, queue.data)
    rec.unix = st


_BUFS = (socket.SO_SNDBUF, socket.SO_RCVBUF)


def _buffers(s: socket.socket) -> tuple[int, int]:
    """SO_SNDBUF and SO_RCVBUF where they differ from a new socket's (else 0)."""
    with socket.socket(socket.AF_UNIX, s.type) as fresh:
        sizes = [s.getsockopt(socket.SOL_SOCKET, o) for o in _BUFS]
        default = [fresh.getsockopt(socket.SOL_SOCKET, o) for o in _BUFS]
    return (sizes[0] if sizes[0] != default[0] else 0,
            sizes[1] if sizes[1] != default[1] else 0)


def _is_socket_file(path: str, st: os.stat_result, vfs: tuple[int, int] | None) -> bool:
    """Whether `path` (stat `st`) is the file sock_diag names; on overlayfs stat() shows
    the upper layer's inode, so the kernel's own name for it is asked too (an inotify
    watch names the inode the way sock_diag does)."""
    if vfs is None:
        return False
    if (st.st_ino, st.st_dev) == vfs:
        return True
    ino, dev = vfs
    return anonfd.inotify_identity(path) == ((os.major(dev) << 20) | os.minor(dev), ino)


def _bound(pid: int, fd: int, info: sockdiag.UnixSock) -> tuple[str, str, os.stat_result | None]:
    """(name, directory of a relative path name, its socket file) of a bound socket;
    a path name must still lead to the socket's own file (restore binds it again)."""
    assert info.name is not None
    if info.name[:1] == b"\0":
        return os.fsdecode(info.name), "", None
    name = os.fsdecode(info.name.rstrip(b"\0"))
    where = f"/proc/{pid}/root{name}" if name.startswith("/") else f"/proc/{pid}/cwd/{name}"
    try:
        st = os.stat(where, follow_symlinks=False)
        found = stat.S_ISSOCK(st.st_mode) and _is_socket_file(where, st, info.vfs)
    except OSError:
        found = False
    if not found:
        raise _refuse(pid, fd, f"a unix socket bound to {name!r} whose socket file was "
                               "removed or replaced" + ("" if name.startswith("/") else
                                                        " (or the task changed directory)"))
    return name, "" if name.startswith("/") else tasks.cwd(pid), st


@dataclass
class _Queue:
    lens: list[int] = field(default_factory=list)
    rights: list[list[int]] = field(default_factory=list)  # file ids per message
    senders: list[str] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def _peek_queue(s: socket.socket, pid: int, fd: int, stype: int,
                in_flight: Callable[[int], int]) -> _Queue:
    """Everything queued for reading, left in the queue: one entry per datagram, or per
    stretch of a stream that ends in data carrying fds (a peek stops there)."""
    old = s.getsockopt(socket.SOL_SOCKET, uapi.SO_PEEK_OFF)
    s.setsockopt(socket.SOL_SOCKET, uapi.SO_PEEK_OFF, 0)
    q = _Queue()
    stream = stype == socket.SOCK_STREAM
    try:
        while True:
            try:
                data, anc, flags, addr = s.recvmsg(
                    _PEEK_MAX, socket.CMSG_SPACE(_SCM_MAX_FD * 4),
                    socket.MSG_PEEK | socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                break
            ids = _take_rights(anc, pid, fd, flags, in_flight)
            if flags & socket.MSG_TRUNC:
                raise _refuse(pid, fd, f"a message over {_PEEK_MAX} bytes")
            if not data and stream and not ids:
                break  # end of file (peer shut down): nothing more queued
            q.chunks.append(data)
            q.lens.append(len(data))
            q.rights.append(ids)
            sender = addr if stype == socket.SOCK_DGRAM and addr else ""
            q.senders.append(sender if isinstance(sender, str) else os.fsdecode(sender))
    except OSError as e:
        if e.errno != errno.EAGAIN:
            raise EngineError("files", f"task {pid} fd {fd}: peek: {e.strerror}") from None
    finally:
        s.setsockopt(socket.SOL_SOCKET, uapi.SO_PEEK_OFF, old)
    if not any(q.rights):
        q.rights = []
        if stream and q.lens:
            q.lens = [sum(q.lens)]
    if not any(q.senders):
        q.senders = []
    return q


def _take_rights(anc: list[tuple[int, int, bytes]], pid: int, fd: int, flags: int,
                 in_flight: Callable[[int], int]) -> list[int]:
    """File ids of the fds a peeked message carries (our copies handed to in_flight)."""
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(payload[i:i + 4], "little")
                    for i in range(0, len(payload) - len(payload) % 4, 4)]
    try:
        if flags & socket.MSG_CTRUNC:
            raise _refuse(pid, fd, "a message with more fds in flight than one peek takes")
        ids = []
        while fds:
            ids.append(in_flight(fds.pop(0)))
        return ids
    finally:
        for f in fds:
            os.close(f)


def check_peers(files: list[FileRecord]) -> None:
    """What the restore needs from the whole tree: every peer, pending connection and
    named sender of a queued datagram is a dumped socket; names are not bound twice
    (but an accepted connection shares its listener's); a datagram socket connected
    one way connects to a name."""
    socks = {r.inode: r.unix for r in files if r.unix is not None}
    listeners = {st.name for st in socks.values() if st.state == _LISTEN}
    bound: dict[str, int] = {}
    for r in files:
        st = r.unix
        if st is None:
            continue
        why = _peer_problem(r, st, socks, listeners)
        if why:
            raise EngineError("files", f"unix socket {r.link}: {why}")
        if st.name and (st.state == _LISTEN or st.name not in listeners):
            if st.name in bound:
                raise EngineError("files", f"unix socket {r.link}: cannot dump two sockets "
                                           f"bound to {st.name!r}: not supported by this engine")
            bound[st.name] = r.inode
    for r in files:
        st = r.unix
        for sender in st.senders if st is not None else []:
            if sender and sender not in bound:
                raise EngineError("files", f"unix socket {r.link}: a datagram from "
                                           f"{sender!r} (outside the dumped tree) is queued")


def _peer_problem(r: FileRecord, st: UnixSocketState, socks: dict[int, UnixSocketState],
                  listeners: set[str]) -> str:
    """Why this socket's connections cannot be rebuilt ("" if they can)."""
    if st.peer and st.peer not in socks:
        return f"its peer (inode {st.peer}) is outside the dumped tree"
    outside = [ino for ino in st.icons if ino not in socks]
    if outside:
        return f"a connection from outside the dumped tree (inode {outside[0]}) waits in its queue"
    if st.state != _LISTEN and st.name in listeners and not st.peer:
        return "cannot dump a connection accepted from a listener whose peer is gone"
    peer = socks.get(st.peer)
    if peer is not None and peer.peer != r.inode and not peer.name:
        return "cannot dump a datagram socket connected to an unnamed one that is not its peer"
    named = {s for s in st.senders if s}
    pair = peer is not None and peer.peer == r.inode
    if named and (peer is not None and pair and named != {peer.name}
                  or not pair and not st.name):
        return ("cannot dump datagrams of named senders queued on a socket they cannot "
                "address again: not supported")
    return ""
