"""TCP repair mode and the socket options the engine saves: uapi numbers (linux/tcp.h)
and small typed helpers over socket.getsockopt/setsockopt, shared by dump and restore."""

from __future__ import annotations

import fcntl
import socket
import struct

TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_REPAIR_OPTIONS = 22
TCP_TIMESTAMP = 24
TCP_REPAIR_WINDOW = 29
TCP_RECV_QUEUE, TCP_SEND_QUEUE = 1, 2
TCPOPT_MSS, TCPOPT_WINDOW, TCPOPT_SACK_PERM, TCPOPT_TIMESTAMP = 2, 3, 4, 8
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE = 1, 2, 4
SIOCINQ, SIOCOUTQ = 0x541B, 0x5411
_WINDOW = struct.Struct("=5I")

#: the options saved and set again: name -> (level, option); values are ints
SOCKOPTS: dict[str, tuple[int, int]] = {
    "SO_REUSEADDR": (socket.SOL_SOCKET, socket.SO_REUSEADDR),
    "SO_REUSEPORT": (socket.SOL_SOCKET, socket.SO_REUSEPORT),
    "SO_KEEPALIVE": (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    "SO_BROADCAST": (socket.SOL_SOCKET, socket.SO_BROADCAST),
    "TCP_NODELAY": (socket.IPPROTO_TCP, socket.TCP_NODELAY),
    "IPV6_V6ONLY": (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY),
}


def applies(name: str, family: int, stype: int) -> bool:
    """Whether option `name` exists for sockets of this family and type."""
    if name == "TCP_NODELAY":
        return stype == socket.SOCK_STREAM
    if name == "IPV6_V6ONLY":
        return family == socket.AF_INET6
    if name == "SO_BROADCAST":
        return stype == socket.SOCK_DGRAM
    return True


def tcp_info(s: socket.socket) -> tuple[int, int, int, int, int]:
    """(state, options, snd_wscale, rcv_wscale, unacked) from TCP_INFO; for a listener
    `unacked` is its accept queue length."""
    raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    wscale = raw[6]
    return raw[0], raw[5], wscale & 0xF, wscale >> 4, struct.unpack_from("=I", raw, 24)[0]


def nothing_sent(s: socket.socket) -> bool:
    """Whether no data went either way on this connection yet (tcpi_bytes_acked counts
    the SYN, tcpi_bytes_received does not) and none waits to be sent."""
    raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 136)
    acked, received = struct.unpack_from("=QQ", raw, 120)
    outq = struct.unpack("=i", fcntl.ioctl(s.fileno(), SIOCOUTQ, b"\0" * 4))[0]
    return acked <= 1 and received == 0 and outq == 0


def get_window(s: socket.socket) -> list[int]:
    """struct tcp_repair_window (repair mode only)."""
    return list(_WINDOW.unpack(s.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW,
                                            _WINDOW.size)))


def set_window(s: socket.socket, window: list[int]) -> None:
    """Set struct tcp_repair_window (repair mode only)."""
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, _WINDOW.pack(*window))


def set_options(s: socket.socket, mss: int, snd_wscale: int, rcv_wscale: int,
                options: int) -> None:
    """TCP_REPAIR_OPTIONS: what the handshake negotiated (after a repair connect)."""
    opts = [(TCPOPT_MSS, mss)]
    if options & TCPI_OPT_WSCALE:
        opts.append((TCPOPT_WINDOW, snd_wscale | rcv_wscale << 16))
    if options & TCPI_OPT_SACK:
        opts.append((TCPOPT_SACK_PERM, 0))
    if options & TCPI_OPT_TIMESTAMPS:
        opts.append((TCPOPT_TIMESTAMP, 0))
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_OPTIONS,
                 b"".join(struct.pack("=II", code, val) for code, val in opts))
