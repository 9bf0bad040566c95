"""TCP and UDP sockets: addresses, the options the engine gives back, listeners, and
established TCP connections read through TCP repair mode.

A connection put in repair mode stays there until the dump ends: when the dumped tree is
killed its sockets then close silently (no FIN, no RST), so the restored connection
carries on with the same sequence numbers. A dump that fails, or leaves the tree
running, takes every socket out of repair mode before the tasks run again.
"""

from __future__ import annotations

import fcntl
import socket
import struct

from engine.errors import EngineError
from engine.images import names
from engine.images.fdkinds import (
    TCP_CLOSE,
    TCP_ESTABLISHED,
    TCP_LISTEN,
    InetSocketState,
    TcpRepair,
)
from engine.images.imgdir import ImageDir
from engine.images.records import FileRecord
from engine.kernel import tcprepair as tr

_STATE_NAMES = {2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
                6: "TIME_WAIT", 8: "CLOSE_WAIT", 9: "LAST_ACK", 11: "CLOSING"}


class Repaired:
    """The connections this dump put in repair mode (the engine's own descriptors)."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []

    def end(self, keep: bool) -> None:
        """Close our descriptors; with keep=False take each connection out of repair
        mode first (the task goes on using it)."""
        for s in self.socks:
            if not keep:
                try:
                    s.setsockopt(socket.IPPROTO_TCP, tr.TCP_REPAIR, 0)
                except OSError:
                    pass  # the connection is gone with its task
            s.close()
        self.socks.clear()


def _addr(s: socket.socket, peer: bool) -> list[str]:
    try:
        a = s.getpeername() if peer else s.getsockname()
    except OSError:
        return []
    return [a[0], str(a[1])] if a[1] or a[0] not in ("0.0.0.0", "::") else []


def fill(img: ImageDir, repaired: Repaired, rec: FileRecord, pid: int, fd: int,
         s: socket.socket) -> None:
    """Record the TCP/UDP socket `s` (the engine's descriptor of the task's fd)."""
    where = f"task {pid} fd {fd}"
    if s.proto not in (socket.IPPROTO_TCP, socket.IPPROTO_UDP, 0) or \
            s.type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        raise EngineError("files", f"{where}: cannot dump a raw or other inet socket "
                                   f"({rec.link}): not supported by this engine")
    opts = {name: s.getsockopt(level, opt) for name, (level, opt) in tr.SOCKOPTS.items()
            if tr.applies(name, s.family, s.type)}
    local, peer = _addr(s, False), _addr(s, True)
    state = TCP_ESTABLISHED if peer else TCP_CLOSE
    backlog = 0
    repair = None
    if s.type == socket.SOCK_STREAM:
        state, _, _, _, queued = tr.tcp_info(s)
        if state == TCP_LISTEN:
            if queued:
                raise EngineError("files", f"{where}: cannot dump a TCP listener with {queued} "
                                           "connections waiting to be accepted")
            backlog = struct.unpack_from("=I", s.getsockopt(socket.IPPROTO_TCP,
                                                            socket.TCP_INFO, 104), 28)[0]
        elif state == TCP_ESTABLISHED:
            repair = _repair(img, repaired, rec, s, where)
        elif state != TCP_CLOSE:
            raise EngineError("files", f"{where}: cannot dump a TCP socket in state "
                                       f"{_STATE_NAMES.get(state, state)}: not supported")
    elif _queued(s):
        raise EngineError("files", f"{where}: cannot dump a UDP socket with datagrams "
                                   "queued: not supported")
    rec.inet = InetSocketState(int(s.family), int(s.type), state, local, peer, opts, backlog,
                               repair)


def _queued(s: socket.socket) -> int:
    return int(struct.unpack("=i", fcntl.ioctl(s.fileno(), tr.SIOCINQ, b"\0" * 4))[0])


def _repair(img: ImageDir, repaired: Repaired, rec: FileRecord, s: socket.socket,
            where: str) -> TcpRepair:
    """Put the connection in repair mode (kept) and read what gives it back."""
    _, options, snd_ws, rcv_ws, _ = tr.tcp_info(s)
    mss = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    try:
        s.setsockopt(socket.IPPROTO_TCP, tr.TCP_REPAIR, 1)
    except OSError as e:
        raise EngineError("files", f"{where}: TCP repair mode: {e.strerror}") from None
    mine = s.dup()
    repaired.socks.append(mine)
    try:
        send = _queue(s, tr.TCP_SEND_QUEUE, tr.SIOCOUTQ)
        recv = _queue(s, tr.TCP_RECV_QUEUE, tr.SIOCINQ)
        window = tr.get_window(s)
        stamp = s.getsockopt(socket.IPPROTO_TCP, tr.TCP_TIMESTAMP)
    except OSError as e:
        raise EngineError("files", f"{where}: TCP repair: {e.strerror}") from None
    rec.content = names.socket_queue(rec.inode)
    img.write_bytes(rec.content, send[1] + recv[1])
    # TCP_QUEUE_SEQ reads the sequence number after the queue; the restore sets the first.
    return TcpRepair((send[0] - len(send[1])) & 0xFFFFFFFF, (recv[0] - len(recv[1]))
                     & 0xFFFFFFFF, len(send[1]), len(recv[1]), mss, snd_ws, rcv_ws, options,
                     window, stamp & 0xFFFFFFFF)


def _queue(s: socket.socket, which: int, ioctl: int) -> tuple[int, bytes]:
    """(sequence number after the queue, its data), peeked in repair mode."""
    size = struct.unpack("=i", fcntl.ioctl(s.fileno(), ioctl, b"\0" * 4))[0]
    s.setsockopt(socket.IPPROTO_TCP, tr.TCP_REPAIR_QUEUE, which)
    seq = s.getsockopt(socket.IPPROTO_TCP, tr.TCP_QUEUE_SEQ)
    # One peek returns the whole queue: TCP copies across its segments.
    data = s.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT) if size else b""
    if len(data) != size:
        raise OSError(0, f"queue {which}: peeked {len(data)} of {size} bytes")
    return seq & 0xFFFFFFFF, data
