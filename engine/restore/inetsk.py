"""TCP, UDP and raw IP sockets made again: options, bound address, listeners, and established
connections put back through TCP repair mode (no handshake: the peer, restored beside it
or still running elsewhere, sees the same connection go on).

Connections leave repair mode only once every socket of the tree exists (`finish`):
leaving it sends a window probe, and a probe to a peer not restored yet would be answered
with a reset."""

from __future__ import annotations

import socket
import struct

from engine.errors import EngineError
from engine.images.fdkinds import (
    BUFFER_OPTIONS,
    TCP_CLOSE_WAIT,
    TCP_ESTABLISHED,
    TCP_FIN_WAIT2,
    TCP_LISTEN,
    InetSocketState,
    TcpRepair,
)
from engine.images.records import FileRecord
from engine.kernel import tcprepair as tr
from engine.kernel import uapi


def create(rec: FileRecord, queues: bytes) -> int:
    """A new fd on a socket equal to the dumped one (status flags set by the caller); an
    established connection is left in repair mode. queues: the saved data, send queue
    then receive queue."""
    st = rec.inet
    assert st is not None
    s = socket.socket(st.family, st.type, st.protocol)
    try:
        unknown = set(st.options) - set(tr.SOCKOPTS) - set(BUFFER_OPTIONS)
        if unknown:
            raise EngineError("files", f"socket {rec.link}: unknown option {min(unknown)}")
        tr.apply_sockopts(s, st.options)
        tr.set_filter(s, st.bpf_filter, st.filter_locked)
        if st.pending:
            s.bind((st.local[0], int(st.local[1])))  # connected by finish()
        elif st.repair is not None:
            _connect_repaired(s, st, st.repair, queues)
        else:
            if st.local:
                s.bind((st.local[0], int(st.local[1])))
            if st.state == TCP_LISTEN:
                s.listen(st.backlog)
            elif st.peer and st.state == TCP_ESTABLISHED:
                s.connect((st.peer[0], int(st.peer[1])))  # UDP: sets the default peer
    except OSError as e:
        s.close()
        raise EngineError("files", f"socket {rec.link} {st.local}->{st.peer}: "
                                   f"{e.strerror}") from None
    return s.detach()


def _connect_repaired(s: socket.socket, st: InetSocketState, r: TcpRepair,
                      queues: bytes) -> None:
    if len(queues) != r.send_len + r.recv_len:
        raise OSError(0, "saved queues do not match their lengths")
    tcp = socket.IPPROTO_TCP
    s.setsockopt(tcp, tr.TCP_REPAIR, 1)
    # A FIN sent or received took a sequence number: the connection is made established
    # just before it, and the FIN is sent again by the side that sent it (finish()).
    fin_sent, fin_received = int(st.state == TCP_FIN_WAIT2), int(st.state == TCP_CLOSE_WAIT)
    for which, seq in ((tr.TCP_SEND_QUEUE, (r.send_seq - fin_sent) & 0xFFFFFFFF),
                       (tr.TCP_RECV_QUEUE, (r.recv_seq - fin_received) & 0xFFFFFFFF)):
        s.setsockopt(tcp, tr.TCP_REPAIR_QUEUE, which)
        s.setsockopt(tcp, tr.TCP_QUEUE_SEQ, struct.pack("=I", seq))
    s.bind((st.local[0], int(st.local[1])))
    s.connect((st.peer[0], int(st.peer[1])))  # repair mode: straight to ESTABLISHED
    tr.set_options(s, r.mss, r.snd_wscale, r.rcv_wscale, r.options)
    if r.options & tr.TCPI_OPT_TIMESTAMPS:
        s.setsockopt(tcp, tr.TCP_TIMESTAMP, struct.pack("=I", r.timestamp))
    for which, data in ((tr.TCP_SEND_QUEUE, queues[:r.send_len]),
                        (tr.TCP_RECV_QUEUE, queues[r.send_len:])):
        _room_for(s, socket.SO_SNDBUF if which == tr.TCP_SEND_QUEUE else socket.SO_RCVBUF,
                  len(data))
        s.setsockopt(tcp, tr.TCP_REPAIR_QUEUE, which)
        view = memoryview(data)
        while view:
            view = view[s.send(view):]
    snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup = r.window
    if fin_received:  # the window was advanced over the FIN too
        rcv_wnd, rcv_wup = rcv_wnd + 1, (rcv_wup - 1) & 0xFFFFFFFF
    tr.set_window(s, [snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup])


def _room_for(s: socket.socket, opt: int, size: int) -> None:
    """A buffer that holds `size` bytes of queue: a new socket's is small (it grows by
    itself as the connection runs), and a send queue that does not fit waits for room,
    long enough for its retransmission to be answered with a reset."""
    want = 2 * size + (64 << 10)  # skb overhead; the kernel doubles what it is given
    if s.getsockopt(socket.SOL_SOCKET, opt) >= want:
        return
    force = uapi.SO_SNDBUFFORCE if opt == socket.SO_SNDBUF else uapi.SO_RCVBUFFORCE
    try:
        s.setsockopt(socket.SOL_SOCKET, force, want // 2)
    except PermissionError:  # beyond the sysctl maximum only with CAP_NET_ADMIN
        s.setsockopt(socket.SOL_SOCKET, opt, want // 2)


def finish(socks: list[tuple[int, FileRecord]]) -> None:
    """Once every socket of the tree exists: take the restored connections out of repair
    mode (they are live from now on), connect again the clients whose connection was
    waiting in a listener's queue, and send the FIN of each side that had shut down for
    writing (its peer, restored established, reads end-of-file again)."""
    steps = ((lambda st: st.repair is not None and not st.pending, _leave_repair),
             (lambda st: st.pending, _reconnect),
             (lambda st: st.state == TCP_FIN_WAIT2, _send_fin))
    for wanted, step in steps:
        for fd, rec in socks:
            st = rec.inet
            assert st is not None
            if not wanted(st):
                continue
            s = socket.socket(fileno=fd)
            try:
                step(s, st)
            except OSError as e:
                raise EngineError("files", f"socket {st.local}->{st.peer}: {step.__doc__}: "
                                           f"{e.strerror}") from None
            finally:
                s.detach()


def _leave_repair(s: socket.socket, st: InetSocketState) -> None:
    """leaving TCP repair mode"""
    s.setsockopt(socket.IPPROTO_TCP, tr.TCP_REPAIR, 0)


def _reconnect(s: socket.socket, st: InetSocketState) -> None:
    """connecting again to its listener"""
    s.connect((st.peer[0], int(st.peer[1])))


def _send_fin(s: socket.socket, st: InetSocketState) -> None:
    """shutting down for writing"""
    s.shutdown(socket.SHUT_WR)
