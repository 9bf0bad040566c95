"""TCP, UDP and raw IP sockets: addresses, the options the engine gives back, listeners, and
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
    TCP_CLOSE_WAIT,
    TCP_CONNECTED,
    TCP_ESTABLISHED,
    TCP_FIN_WAIT2,
    TCP_LISTEN,
    InetSocketState,
    TcpRepair,
)
from engine.images.imgdir import ImageDir
from engine.images.records import FileRecord
from engine.kernel import tcprepair as tr
from engine.proc import netraw

_STATE_NAMES = {2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 6: "TIME_WAIT", 9: "LAST_ACK",
                11: "CLOSING"}


class Repaired:
    """The connections this dump put in repair mode (the engine's own descriptors)."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []
        self.fresh: set[int] = set()  # inodes of connections nothing was sent on yet

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
    raw = s.type == socket.SOCK_RAW
    if not raw and (s.proto not in (socket.IPPROTO_TCP, socket.IPPROTO_UDP, 0) or
                    s.type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM)):
        raise EngineError("files", f"{where}: cannot dump an inet socket of type {s.type} "
                                   f"protocol {s.proto} ({rec.link}): not supported by "
                                   "this engine")
    opts = {name: s.getsockopt(level, opt) for name, (level, opt) in tr.SOCKOPTS.items()
            if tr.applies(name, s.family, s.type)}
    if s.type != socket.SOCK_STREAM:
        opts.update(tr.buffer_options(s))  # TCP's sizes grow by themselves unless set
    local = _addr(s, False)
    peer = _raw_peer(pid, s.family, rec.inode, where) if raw else _addr(s, True)
    state = TCP_ESTABLISHED if peer else TCP_CLOSE
    backlog = 0
    repair = None
    waiting = 0
    if s.type == socket.SOCK_STREAM:
        state, _, _, _, queued = tr.tcp_info(s)
        if state == TCP_LISTEN:
            waiting = queued  # matched with clients in the tree once every fd is known
            backlog = struct.unpack_from("=I", s.getsockopt(socket.IPPROTO_TCP,
                                                            socket.TCP_INFO, 104), 28)[0]
        elif state in TCP_CONNECTED:
            if tr.nothing_sent(s):
                repaired.fresh.add(rec.inode)
            repair = _repair(img, repaired, rec, s, where)
        elif state != TCP_CLOSE:
            raise EngineError("files", f"{where}: cannot dump a TCP socket in state "
                                       f"{_STATE_NAMES.get(state, state)}: not supported")
    elif queued_bytes(s):
        raise EngineError("files", f"{where}: cannot dump a {'raw' if raw else 'UDP'} socket "
                                   "with datagrams queued: not supported")
    rec.inet = InetSocketState(int(s.family), int(s.type), state, local, peer, opts, backlog,
                               repair, s.proto if raw else 0, *tr.get_filter(s),
                               waiting=waiting)


def _raw_peer(pid: int, family: socket.AddressFamily, inode: int, where: str) -> list[str]:
    """[host, "0"] of a connected raw socket, [] if not connected."""
    try:
        found = netraw.raw_socket(pid, family, inode)
    except OSError as e:
        raise EngineError("files", f"{where}: /proc/{pid}/net: {e.strerror}") from None
    if found is None:
        raise EngineError("files", f"{where}: raw socket {inode} not in /proc/{pid}/net")
    return [found.remote, "0"] if found.state == TCP_ESTABLISHED and found.remote else []


def queued_bytes(s: socket.socket) -> int:
    """Bytes of the next datagram or packet waiting to be read (SIOCINQ), 0 if none."""
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


def _is_peer(a: InetSocketState, b: InetSocketState) -> bool:
    """Whether connection b is the other end of connection a."""
    return a.local == b.peer and a.peer == b.local


def _listens_for(lsn: InetSocketState, conn: InetSocketState) -> bool:
    """Whether a connection to conn.peer reaches this listener (a wildcard address
    listens on every local one)."""
    return lsn.family == conn.family and bool(lsn.local) and bool(conn.peer) \
        and lsn.local[1] == conn.peer[1] and lsn.local[0] in (conn.peer[0], "0.0.0.0", "::")


def check_tree(files: list[FileRecord], fresh: set[int]) -> None:
    """What only the whole tree tells: each connection waiting in a listener's accept
    queue is a dumped client nothing was sent on yet (marked pending: it connects
    again at restore), and a connection whose peer shut down has that peer dumped too
    (the restored peer's FIN puts it back in CLOSE_WAIT)."""
    conns = [r for r in files if r.inet is not None and r.inet.state in TCP_CONNECTED]
    for lsn in files:
        st = lsn.inet
        if st is None or not st.waiting:
            continue
        clients = [r for r in conns if r.inet is not None and _listens_for(st, r.inet) and
                   not any(o.inet is not None and _is_peer(r.inet, o.inet) for o in conns)]
        unsent = [c for c in clients if c.inode in fresh]
        if len(unsent) != st.waiting:
            raise EngineError("files", f"socket {lsn.link} {st.local}: cannot dump a TCP "
                                       f"listener with {st.waiting} connections waiting to be "
                                       f"accepted: {len(clients)} from clients in the dumped "
                                       f"tree, {len(unsent)} with nothing sent: not supported")
        for c in clients:
            assert c.inet is not None
            c.inet.pending = True
    for r in conns:
        st = r.inet
        if st is not None and st.state == TCP_CLOSE_WAIT and not any(
                o.inet is not None and o.inet.state == TCP_FIN_WAIT2 and _is_peer(st, o.inet)
                for o in conns):
            raise EngineError("files", f"socket {r.link} {st.local}->{st.peer}: cannot dump a "
                                       "TCP connection in state CLOSE_WAIT whose peer is not in "
                                       "the dumped tree in FIN_WAIT2: not supported")
