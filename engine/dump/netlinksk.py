"""Netlink sockets: protocol, port id, multicast groups, default destination and options.

What a netlink socket holds beyond that cannot be made again: messages queued for
reading (answers and notifications the kernel sent) and a multi-part dump the kernel is
still producing for it. Such a socket is refused.
"""

from __future__ import annotations

import socket
import struct

from engine.errors import EngineError
from engine.images.fdkinds import NETLINK_OPTIONS, NetlinkSocketState
from engine.images.records import FileRecord
from engine.kernel import sockdiag
from engine.kernel.tcprepair import buffer_options, get_filter

_SOL_NETLINK = 270
_NETLINK_LIST_MEMBERSHIPS = 9
_MAX_GROUP_BYTES = 1024
#: options sock_diag shows as flags and getsockopt cannot read
_DIAG_ONLY = {"NETLINK_LISTEN_ALL_NSID": sockdiag.NDIAG_FLAG_LISTEN_ALL_NSID}


def fill(rec: FileRecord, pid: int, fd: int, s: socket.socket) -> None:
    """Record the netlink socket `s` (the engine's descriptor of the task's fd)."""
    where = f"task {pid} fd {fd}"
    proto = s.proto
    portid, _ = s.getsockname()
    # sock_diag lists bound sockets only; one never bound cannot have been sent anything
    info = _diag(pid, proto, rec.inode, where) if portid else sockdiag.NetlinkSock(0, 0, 0)
    if info.flags & sockdiag.NDIAG_FLAG_CB_RUNNING:
        raise EngineError("files", f"{where}: cannot dump a netlink socket ({rec.link}) "
                                   "with a dump in progress: the kernel's state of it "
                                   "cannot be made again")
    if info.rmem:
        raise EngineError("files", f"{where}: cannot dump a netlink socket ({rec.link}) "
                                   f"with {info.rmem} bytes queued: messages from the "
                                   "kernel cannot be queued again")
    try:
        dst_portid, dst_group = s.getpeername()
    except OSError:
        dst_portid = dst_group = 0
    opts = {name: s.getsockopt(_SOL_NETLINK, opt) for name, opt in NETLINK_OPTIONS.items()
            if name not in _DIAG_ONLY}
    opts.update({name: int(bool(info.flags & flag)) for name, flag in _DIAG_ONLY.items()})
    opts = {k: v for k, v in opts.items() if v}
    opts.update(buffer_options(s))
    rec.netlink = NetlinkSocketState(int(s.type), proto, portid & 0xFFFFFFFF, _groups(s),
                                     dst_portid & 0xFFFFFFFF, dst_group, opts,
                                     *get_filter(s))


def _diag(pid: int, protocol: int, ino: int, where: str) -> sockdiag.NetlinkSock:
    try:
        diag = sockdiag.DiagSocket(pid)
        try:
            return sockdiag.netlink_sock(diag, protocol, ino)
        finally:
            diag.close()
    except OSError as e:
        raise EngineError("files", f"{where}: sock_diag: {e.strerror or e}") from None


def _groups(s: socket.socket) -> list[int]:
    """The multicast groups joined (NETLINK_LIST_MEMBERSHIPS: a bitmap of u32 words)."""
    raw = s.getsockopt(_SOL_NETLINK, _NETLINK_LIST_MEMBERSHIPS, _MAX_GROUP_BYTES)
    words = struct.unpack(f"={len(raw) // 4}I", raw[:len(raw) // 4 * 4])
    return [i * 32 + bit + 1 for i, w in enumerate(words) for bit in range(32)
            if w >> bit & 1]
