"""TCP, UDP and raw IP sockets made again: options, bound address, listeners, and established
connections put back through TCP repair mode (no handshake: the peer, restored beside it
or still running elsewhere, sees the same connection go on).

Connections leave repair mode only once every socket of the tree exists (`leave_repair`):
leaving it sends a window probe, and a probe to a peer not restored yet would be answered
with a reset."""

from __future__ import annotations

import socket
import struct

from engine.errors import EngineError
from engine.images.fdkinds import (
    BUFFER_OPTIONS,
    TCP_ESTABLISHED,
    TCP_LISTEN,
    InetSocketState,
    TcpRepair,
)
from engine.images.records import FileRecord
from engine.kernel import tcprepair as tr


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
        if st.repair is not None:
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
    for which, seq in ((tr.TCP_SEND_QUEUE, r.send_seq), (tr.TCP_RECV_QUEUE, r.recv_seq)):
        s.setsockopt(tcp, tr.TCP_REPAIR_QUEUE, which)
        s.setsockopt(tcp, tr.TCP_QUEUE_SEQ, struct.pack("=I", seq))
    s.bind((st.local[0], int(st.local[1])))
    s.connect((st.peer[0], int(st.peer[1])))  # repair mode: straight to ESTABLISHED
    tr.set_options(s, r.mss, r.snd_wscale, r.rcv_wscale, r.options)
    if r.options & tr.TCPI_OPT_TIMESTAMPS:
        s.setsockopt(tcp, tr.TCP_TIMESTAMP, struct.pack("=I", r.timestamp))
    for which, data in ((tr.TCP_SEND_QUEUE, queues[:r.send_len]),
                        (tr.TCP_RECV_QUEUE, queues[r.send_len:])):
        s.setsockopt(tcp, tr.TCP_REPAIR_QUEUE, which)
        view = memoryview(data)
        while view:
            view = view[s.send(view):]
    tr.set_window(s, r.window)


def leave_repair(fds: list[int]) -> None:
    """Take the restored connections out of repair mode: they are live from now on."""
    for fd in fds:
        s = socket.socket(fileno=fd)
        try:
            s.setsockopt(socket.IPPROTO_TCP, tr.TCP_REPAIR, 0)
        except OSError as e:
            raise EngineError("files", f"socket {s.getsockname()}: leaving TCP repair "
                                       f"mode: {e.strerror}") from None
        finally:
            s.detach()
