"""Packet sockets (AF_PACKET): protocol, the interface and protocol they are bound to,
and their options.

Refused: packets queued for reading, and what only sock_diag shows and the engine does
not make again (rx/tx rings, a fanout group, multicast or promiscuous memberships).
"""

from __future__ import annotations

import socket

from engine.dump.inetsk import queued_bytes
from engine.errors import EngineError
from engine.images.fdkinds import PACKET_OPTIONS, PacketSocketState
from engine.images.records import FileRecord
from engine.kernel import sockdiag
from engine.kernel import tcprepair as tr

_SOL_PACKET = 263


def fill(rec: FileRecord, pid: int, fd: int, s: socket.socket) -> None:
    """Record the packet socket `s` (the engine's descriptor of the task's fd)."""
    where = f"task {pid} fd {fd}: cannot dump a packet socket ({rec.link})"
    try:
        diag = sockdiag.DiagSocket(pid)
        try:
            extras = sockdiag.packet_sock_extras(diag, rec.inode)
        finally:
            diag.close()
    except OSError as e:
        raise EngineError("files", f"{where}: sock_diag: {e.strerror or e}") from None
    if extras:
        raise EngineError("files", f"{where} with {', '.join(extras)}: not supported")
    if queued_bytes(s):
        raise EngineError("files", f"{where} with packets queued: not supported")
    ifname, bound_proto = s.getsockname()[:2]
    if not ifname and bound_proto != socket.ntohs(s.proto):
        # bind() to every interface with another protocol: not made again by name
        raise EngineError("files", f"{where} bound to protocol {bound_proto:#x} on every "
                                   "interface: not supported")
    opts = {name: s.getsockopt(_SOL_PACKET, opt) for name, opt in PACKET_OPTIONS.items()}
    opts.update({name: s.getsockopt(level, opt) for name, (level, opt) in tr.SOCKOPTS.items()
                 if level == socket.SOL_SOCKET and tr.applies(name, s.family, s.type)})
    opts.update(tr.buffer_options(s))
    rec.packet = PacketSocketState(int(s.type), s.proto, ifname, bound_proto, opts,
                                   *tr.get_filter(s))
