"""Connected unix socket pairs: type, peer, shutdown state and the queued data, read
without taking it away from the task.

The engine takes its own descriptor of the very socket (pidfd_getfd) and peeks at the
receive queue from offset 0 with SO_PEEK_OFF, one message per read for datagram and
seqpacket sockets; the task's peek offset is put back. What the restore cannot build yet
is refused here, while the tree still runs: other families, bound or listening sockets,
sockets whose peer is outside the tree, and file descriptors in flight (SCM_RIGHTS).
"""

from __future__ import annotations

import errno
import os
import socket

from engine.errors import EngineError
from engine.images import names
from engine.images.fdkinds import UnixSocketState
from engine.images.imgdir import ImageDir
from engine.images.records import FileRecord
from engine.kernel import sockdiag
from engine.kernel.sys import pidfd_getfd, pidfd_open

SO_PEEK_OFF = 42  # asm-generic/socket.h; Python's socket module lacks it
_TCP_LISTEN = 10
_PEEK_MAX = 8 << 20  # one peek's buffer: more than any queue a default socket can hold
_FAMILIES = {socket.AF_NETLINK: "a netlink", socket.AF_PACKET: "a packet"}


class Diag:
    """sock_diag sockets, one per network namespace of the dumped tree (by ns inode)."""

    def __init__(self) -> None:
        self._by_ns: dict[int, sockdiag.DiagSocket] = {}

    def query(self, pid: int, ino: int) -> sockdiag.UnixSock:
        """The unix socket `ino` as seen from the netns of task `pid`."""
        ns = os.stat(f"/proc/{pid}/ns/net").st_ino
        if ns not in self._by_ns:
            self._by_ns[ns] = sockdiag.DiagSocket(pid)
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


def fill(img: ImageDir, diag: Diag, rec: FileRecord, pid: int, fd: int,
         s: socket.socket) -> None:
    """Record the unix socket `s` (the engine's descriptor of the task's fd) with its
    queued data."""
    try:
        info = diag.query(pid, rec.inode)
    except OSError as e:
        raise EngineError("files", f"task {pid} fd {fd}: sock_diag: {e.strerror}") from None
    if info.state == _TCP_LISTEN:
        raise _refuse(pid, fd, f"a listening unix socket ({rec.link})")
    if info.name is not None:
        raise _refuse(pid, fd, f"a unix socket bound to {info.name!r}")
    if not info.peer:
        raise _refuse(pid, fd, f"an unconnected unix socket ({rec.link})")
    lens, data = _peek_queue(s, pid, fd, info.type == socket.SOCK_STREAM)
    rec.unix = UnixSocketState(info.type, info.peer, info.shutdown, lens)
    rec.content = names.socket_queue(rec.inode)
    img.write_bytes(rec.content, data)


def _peek_queue(s: socket.socket, pid: int, fd: int, stream: bool) -> tuple[list[int], bytes]:
    """(message lengths, data) of everything queued for reading, left in the queue."""
    old = s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
    s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
    lens: list[int] = []
    chunks: list[bytes] = []
    try:
        while True:
            try:
                data, anc, flags, _ = s.recvmsg(_PEEK_MAX, socket.CMSG_SPACE(253 * 4),
                                                socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            _refuse_fds_in_flight(anc, pid, fd)
            if flags & socket.MSG_TRUNC:
                raise _refuse(pid, fd, f"a message over {_PEEK_MAX} bytes")
            if not data and stream:
                break  # end of file (peer shut down): nothing more queued
            chunks.append(data)
            lens.append(len(data))
    except OSError as e:
        if e.errno != errno.EAGAIN:
            raise EngineError("files", f"task {pid} fd {fd}: peek: {e.strerror}") from None
    finally:
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, old)
    if stream and lens:
        lens = [sum(lens)]
    return lens, b"".join(chunks)


def _refuse_fds_in_flight(anc: list[tuple[int, int, bytes]], pid: int, fd: int) -> None:
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            for i in range(0, len(payload) - len(payload) % 4, 4):
                os.close(int.from_bytes(payload[i:i + 4], "little"))
            raise _refuse(pid, fd, "a unix socket with file descriptors in flight")


def check_peers(files: list[FileRecord]) -> None:
    """Every dumped unix socket's peer is dumped too (else it is outside the tree)."""
    socks = {r.inode for r in files if r.unix is not None}
    for r in files:
        if r.unix is not None and r.unix.peer not in socks:
            raise EngineError("files", f"unix socket {r.link}: its peer (inode "
                                       f"{r.unix.peer}) is outside the dumped tree")
