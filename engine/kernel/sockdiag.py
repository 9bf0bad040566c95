"""NETLINK_SOCK_DIAG queries for unix sockets (peer, name, shutdown state, queue lengths)
and netlink sockets (flags, queued bytes); what packet sockets set up beyond getsockopt.

Unix sockets are only visible to a diag socket of their own network namespace, so the
netlink socket is opened by a short-lived thread that joined the target's netns (a
socket keeps the namespace it was created in). uapi: linux/sock_diag.h, linux/unix_diag.h.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from engine.kernel.sys import setns

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2
NLMSG_DONE = 3
UDIAG_SHOW_NAME = 0x01
UDIAG_SHOW_VFS = 0x02
UDIAG_SHOW_PEER = 0x04
UDIAG_SHOW_ICONS = 0x08
UDIAG_SHOW_RQLEN = 0x10
UDIAG_SHOW_SHUTDOWN = 0x40
UNIX_DIAG_NAME, UNIX_DIAG_VFS, UNIX_DIAG_PEER, UNIX_DIAG_ICONS = 0, 1, 2, 3
UNIX_DIAG_RQLEN, UNIX_DIAG_SHUTDOWN = 4, 6
_NLMSG = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBHIIIII")  # family, protocol, pad, states, ino, show, cookie[2]
_MSG = struct.Struct("=BBBBIII")  # family, type, state, pad, ino, cookie[2]
_RTA = struct.Struct("=HH")
_NO_COOKIE = 0xFFFFFFFF


@dataclass(frozen=True)
class UnixSock:
    """What sock_diag tells of one unix socket."""

    ino: int
    type: int  # SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
    state: int  # TCP_* numbering: 1 established, 7 close, 10 listen
    peer: int  # peer's inode, 0 if none
    name: bytes | None  # bound address (a leading NUL: abstract), None if unbound
    shutdown: int  # sk_shutdown: 1 RCV_SHUTDOWN, 2 SEND_SHUTDOWN
    rqueue: int  # bytes queued for reading (listening: pending connections)
    wqueue: int = 0  # bytes sent and not yet read by the peer (listening: the backlog)
    vfs: tuple[int, int] | None = None  # (inode, st_dev) of the bound path's socket file
    icons: tuple[int, ...] = ()  # listening: the connecting sockets waiting, in queue order


class DiagSocket:
    """A NETLINK_SOCK_DIAG socket in the network namespace of a task."""

    def __init__(self, pid: int, ns: str | None = None) -> None:
        """In the netns of task `pid`, or the one the path `ns` names."""
        result: list[socket.socket | OSError] = []
        thread = threading.Thread(target=self._open, args=(ns or f"/proc/{pid}/ns/net", result),
                                  daemon=True)
        thread.start()
        thread.join()
        if not result:
            raise OSError(0, f"cannot join the network namespace of {pid} ({ns})")
        if isinstance(result[0], OSError):
            raise result[0]
        self.sock = result[0]

    @staticmethod
    def _open(ns: str, out: list[socket.socket | OSError]) -> None:
        try:
            fd = os.open(ns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd, 0)
            finally:
                os.close(fd)
            out.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                     NETLINK_SOCK_DIAG))
        except OSError as e:  # handed to the caller's thread
            out.append(e)

    def close(self) -> None:
        """Close the netlink socket."""
        self.sock.close()

    def unix(self, ino: int) -> UnixSock:
        """The unix socket with inode `ino` (OSError ENOENT if this netns has none)."""
        show = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS \
            | UDIAG_SHOW_RQLEN | UDIAG_SHOW_SHUTDOWN
        body = _REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, ino, show, _NO_COOKIE, _NO_COOKIE)
        self.sock.send(_NLMSG.pack(_NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY,
                                   NLM_F_REQUEST, 1, 0) + body)
        data = self.sock.recv(65536)
        length, kind, _, _, _ = _NLMSG.unpack_from(data)
        if kind == NLMSG_ERROR:
            err = -struct.unpack_from("=i", data, _NLMSG.size)[0]
            raise OSError(err, f"sock_diag of unix socket {ino}: {os.strerror(err)}")
        return _parse(data[_NLMSG.size:length])


def _parse(msg: bytes) -> UnixSock:
    _, stype, state, _, ino, _, _ = _MSG.unpack_from(msg)
    peer = shutdown = rqueue = wqueue = 0
    name = vfs = None
    icons: tuple[int, ...] = ()
    pos = _MSG.size
    while pos + _RTA.size <= len(msg):
        rlen, rtype = _RTA.unpack_from(msg, pos)
        if rlen < _RTA.size:
            break
        value = msg[pos + _RTA.size:pos + rlen]
        if rtype == UNIX_DIAG_NAME:
            name = value
        elif rtype == UNIX_DIAG_PEER:
            peer = struct.unpack_from("=I", value)[0]
        elif rtype == UNIX_DIAG_RQLEN:
            rqueue, wqueue = struct.unpack_from("=II", value)
        elif rtype == UNIX_DIAG_VFS:
            vino, vdev = struct.unpack_from("=II", value)
            vfs = (vino, os.makedev(vdev >> 20, vdev & 0xFFFFF))  # the kernel's own dev_t
        elif rtype == UNIX_DIAG_ICONS:
            icons = struct.unpack_from(f"={len(value) // 4}I", value)
        elif rtype == UNIX_DIAG_SHUTDOWN:
            shutdown = value[0]
        pos += (rlen + 3) & ~3
    return UnixSock(ino, stype, state, peer, name, shutdown, rqueue, wqueue, vfs, icons)


# netlink sockets (linux/netlink_diag.h): only a dump of one protocol's sockets is offered
NLM_F_DUMP = 0x300
NDIAG_SHOW_MEMINFO = 0x01
NDIAG_SHOW_FLAGS = 0x08
NETLINK_DIAG_MEMINFO, NETLINK_DIAG_FLAGS = 0, 4
NDIAG_FLAG_CB_RUNNING = 0x01
NDIAG_FLAG_LISTEN_ALL_NSID = 0x10
_NL_REQ = struct.Struct("=BBHIIII")  # family, protocol, pad, ino, show, cookie[2]
_NL_MSG = struct.Struct("=BBBBIIII")  # family, type, protocol, state, portid, dst_portid,
#                                       dst_group, ino (then cookie[2])


@dataclass(frozen=True)
class NetlinkSock:
    """What sock_diag tells of one netlink socket beyond its socket options."""

    ino: int
    flags: int  # NDIAG_FLAG_*: a dump running, NETLINK_LISTEN_ALL_NSID, ...
    rmem: int  # bytes queued for reading (sk_rmem_alloc)


def netlink_sock(diag: DiagSocket, protocol: int, ino: int) -> NetlinkSock:
    """The netlink socket `ino` of `protocol` in the diag socket's netns (OSError ENOENT
    if there is none)."""
    body = _NL_REQ.pack(socket.AF_NETLINK, protocol, 0, 0,
                        NDIAG_SHOW_MEMINFO | NDIAG_SHOW_FLAGS, _NO_COOKIE, _NO_COOKIE)
    msg = _dump_find(diag, body, ino, lambda m: _NL_MSG.unpack_from(m)[7], "netlink")
    attrs = _attrs(msg, _NL_MSG.size + 8)  # after the cookie
    flags = struct.unpack_from("=I", attrs[NETLINK_DIAG_FLAGS])[0] \
        if NETLINK_DIAG_FLAGS in attrs else 0
    rmem = struct.unpack_from("=I", attrs[NETLINK_DIAG_MEMINFO])[0] \
        if NETLINK_DIAG_MEMINFO in attrs else 0  # SK_MEMINFO_RMEM_ALLOC
    return NetlinkSock(ino, flags, rmem)


# packet sockets (linux/packet_diag.h): only a dump of every packet socket is offered
PACKET_SHOW_MCLIST, PACKET_SHOW_RING_CFG, PACKET_SHOW_FANOUT = 0x02, 0x04, 0x08
PACKET_DIAG_MCLIST, PACKET_DIAG_RX_RING, PACKET_DIAG_TX_RING, PACKET_DIAG_FANOUT = 1, 2, 3, 4
_PK_REQ = struct.Struct("=BBHIIII")  # family, protocol, pad, ino, show, cookie[2]
_PK_MSG = struct.Struct("=BBHIII")  # family, type, num, ino, cookie[2]


def packet_sock_extras(diag: DiagSocket, ino: int) -> list[str]:
    """What packet socket `ino` has set up that getsockopt cannot read back: the names
    of its multicast/promiscuous memberships, rx/tx rings and fanout group, if any."""
    body = _PK_REQ.pack(socket.AF_PACKET, 0, 0, 0,
                        PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG | PACKET_SHOW_FANOUT,
                        _NO_COOKIE, _NO_COOKIE)
    msg = _dump_find(diag, body, ino, lambda m: _PK_MSG.unpack_from(m)[3], "packet")
    attrs = _attrs(msg, _PK_MSG.size)
    names = {PACKET_DIAG_RX_RING: "an rx ring", PACKET_DIAG_TX_RING: "a tx ring",
             PACKET_DIAG_FANOUT: "a fanout group"}
    out = [names[k] for k in sorted(names) if k in attrs]
    if attrs.get(PACKET_DIAG_MCLIST):  # a nest of one record per membership
        out.append("memberships (PACKET_ADD_MEMBERSHIP)")
    return out


def _dump_find(diag: DiagSocket, body: bytes, ino: int, ino_of: Callable[[bytes], int],
               what: str) -> bytes:
    """Run a sock_diag dump request; the message (after its nlmsghdr) of socket `ino`."""
    diag.sock.send(_NLMSG.pack(_NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY,
                               NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body)
    found = None
    while True:
        data = diag.sock.recv(65536)
        if not data:
            raise OSError(0, f"sock_diag: {what} dump ended early")
        pos = 0
        while pos + _NLMSG.size <= len(data):
            length, kind, _, _, _ = _NLMSG.unpack_from(data, pos)
            if kind == NLMSG_DONE:
                if found is None:
                    raise OSError(2, f"no {what} socket {ino}")
                return found
            if kind == NLMSG_ERROR:
                err = -struct.unpack_from("=i", data, pos + _NLMSG.size)[0]
                raise OSError(err, f"sock_diag of {what} sockets: {os.strerror(err)}")
            msg = data[pos + _NLMSG.size:pos + length]
            if ino_of(msg) == ino:
                found = msg
            pos += (length + 3) & ~3


def _attrs(msg: bytes, pos: int) -> dict[int, bytes]:
    """The netlink attributes of a message from offset `pos`: type -> payload."""
    out = {}
    while pos + _RTA.size <= len(msg):
        rlen, rtype = _RTA.unpack_from(msg, pos)
        if rlen < _RTA.size:
            break
        out[rtype & 0x3FFF] = msg[pos + _RTA.size:pos + rlen]  # without NLA_F_NESTED
        pos += (rlen + 3) & ~3
    return out
