"""TCP repair mode and the socket options the engine saves: uapi numbers (linux/tcp.h)
and small typed helpers over socket.getsockopt/setsockopt, shared by dump and restore."""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct

from engine.kernel import uapi
from engine.kernel.sys import syscall

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

#: the options saved and set again, in the order they are set: name -> (level, option);
#: values are ints
SOCKOPTS: dict[str, tuple[int, int]] = {
    "SO_REUSEADDR": (socket.SOL_SOCKET, socket.SO_REUSEADDR),
    "SO_REUSEPORT": (socket.SOL_SOCKET, socket.SO_REUSEPORT),
    "SO_KEEPALIVE": (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    "SO_BROADCAST": (socket.SOL_SOCKET, socket.SO_BROADCAST),
    "TCP_NODELAY": (socket.IPPROTO_TCP, socket.TCP_NODELAY),
    "IPV6_V6ONLY": (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY),
    # set in this order: setting IP_TOS also sets the priority (from the TOS bits)
    "IP_TOS": (socket.IPPROTO_IP, socket.IP_TOS),
    "SO_PRIORITY": (socket.SOL_SOCKET, socket.SO_PRIORITY),
    "IP_HDRINCL": (socket.IPPROTO_IP, socket.IP_HDRINCL),
    # datagram and raw sockets only (_NOT_STREAM); numbers from linux/in.h and
    # asm-generic/socket.h (not all are in Python's socket module)
    "IP_PKTINFO": (socket.IPPROTO_IP, 8),
    "IP_RECVTTL": (socket.IPPROTO_IP, 12),
    "IP_RECVTOS": (socket.IPPROTO_IP, 13),
    "IP_MULTICAST_TTL": (socket.IPPROTO_IP, 33),
    "IP_MULTICAST_LOOP": (socket.IPPROTO_IP, 34),
    "SO_TIMESTAMP": (socket.SOL_SOCKET, 29),  # SO_TIMESTAMP_OLD
    "SO_TIMESTAMPNS": (socket.SOL_SOCKET, 35),  # SO_TIMESTAMPNS_OLD
}
_NOT_STREAM = ("IP_PKTINFO", "IP_RECVTTL", "IP_RECVTOS", "IP_MULTICAST_TTL",
               "IP_MULTICAST_LOOP", "SO_TIMESTAMP", "SO_TIMESTAMPNS")


#: buffer sizes (SOL_SOCKET): option, its *FORCE twin (CAP_NET_ADMIN: above the
#: net.core.*mem_max limit), and the sysctl every non-TCP socket starts with
_BUFFERS = {"SO_SNDBUF": (socket.SO_SNDBUF, 32, "wmem_default"),
            "SO_RCVBUF": (socket.SO_RCVBUF, 33, "rmem_default")}


def buffer_options(s: socket.socket) -> dict[str, int]:
    """The buffer sizes of a UDP, raw or netlink socket that differ from the default (one
    set again would lock the size: SOCK_*BUF_LOCK)."""
    out = {}
    for name, (opt, _, sysctl) in _BUFFERS.items():
        with open(f"/proc/sys/net/core/{sysctl}", encoding="ascii") as f:
            default = int(f.read())
        value = s.getsockopt(socket.SOL_SOCKET, opt)
        if value != default:
            out[name] = value
    return out


def set_buffer(s: socket.socket, name: str, value: int) -> None:
    """Give a buffer the size getsockopt showed (the kernel doubles what is set); past
    net.core.*mem_max only with CAP_NET_ADMIN, else the kernel clamps it."""
    opt, force, _ = _BUFFERS[name]
    try:
        s.setsockopt(socket.SOL_SOCKET, force, value // 2)
    except PermissionError:
        s.setsockopt(socket.SOL_SOCKET, opt, value // 2)


def apply_sockopts(s: socket.socket, options: dict[str, int]) -> None:
    """Set the saved SOCKOPTS and buffer sizes of `options` (others are the caller's), in
    SOCKOPTS order and only where a new socket differs: one option can reset another
    (SO_TIMESTAMP 0 clears SO_TIMESTAMPNS, IP_TOS sets the priority)."""
    for name, (level, opt) in SOCKOPTS.items():
        if name in options and s.getsockopt(level, opt) != options[name]:
            s.setsockopt(level, opt, options[name])
    for name in _BUFFERS:
        if name in options:
            set_buffer(s, name, options[name])


_SO_ATTACH_FILTER, _SO_GET_FILTER, _SO_LOCK_FILTER = 26, 26, 44
_BPF_MAXINSNS = 4096
_INSN = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k


def get_filter(s: socket.socket) -> tuple[str, bool]:
    """The classic BPF filter attached with SO_ATTACH_FILTER (its instructions as hex, ""
    for none) and SO_LOCK_FILTER. SO_GET_FILTER counts its length in instructions, not
    bytes (so not through socket.getsockopt). An eBPF program (SO_ATTACH_BPF) is not
    shown by the kernel here."""
    buf = ctypes.create_string_buffer(_BPF_MAXINSNS * _INSN)
    count = ctypes.c_uint32(_BPF_MAXINSNS)
    syscall(uapi.SYS_getsockopt, s.fileno(), socket.SOL_SOCKET, _SO_GET_FILTER, buf,
            count)
    return buf.raw[:count.value * _INSN].hex(), bool(s.getsockopt(socket.SOL_SOCKET,
                                                                    _SO_LOCK_FILTER))


def set_filter(s: socket.socket, program: str, locked: bool) -> None:
    """Attach a classic BPF filter saved by get_filter (struct sock_fprog points into our
    memory, which the kernel copies), then lock it if it was."""
    if program:
        insns = ctypes.create_string_buffer(bytes.fromhex(program))
        fprog = struct.pack("=HxxxxxxQ", len(insns.raw) // _INSN, ctypes.addressof(insns))
        s.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    if locked:
        s.setsockopt(socket.SOL_SOCKET, _SO_LOCK_FILTER, 1)


def applies(name: str, family: int, stype: int) -> bool:
    """Whether option `name` exists for sockets of this family and type."""
    if name == "TCP_NODELAY":
        return stype == socket.SOCK_STREAM
    if name == "IPV6_V6ONLY":
        return family == socket.AF_INET6
    if name == "SO_BROADCAST":
        return stype in (socket.SOCK_DGRAM, socket.SOCK_RAW)
    if name in _NOT_STREAM:
        return stype != socket.SOCK_STREAM and (family == socket.AF_INET
                                                 or not name.startswith("IP_"))
    if name == "IP_TOS":
        return family == socket.AF_INET
    if name == "IP_HDRINCL":
        return family == socket.AF_INET and stype == socket.SOCK_RAW
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
    return bool(acked <= 1 and received == 0 and outq == 0)


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
