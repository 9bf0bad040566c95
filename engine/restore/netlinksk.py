"""Netlink sockets made again: options, the same port id, the multicast groups and the
default destination. Made by the tree's root task, in the tree's network namespace."""

from __future__ import annotations

import socket

from engine.errors import EngineError
from engine.images.fdkinds import BUFFER_OPTIONS, NETLINK_OPTIONS
from engine.images.records import FileRecord
from engine.kernel.tcprepair import set_buffer, set_filter

_SOL_NETLINK = 270
_NETLINK_ADD_MEMBERSHIP = 1


def create(rec: FileRecord) -> int:
    """A new fd on a netlink socket equal to the dumped one (status flags set by the
    caller)."""
    st = rec.netlink
    assert st is not None
    s = socket.socket(socket.AF_NETLINK, st.type, st.protocol)
    try:
        for name, value in st.options.items():
            if name in BUFFER_OPTIONS:
                set_buffer(s, name, value)
            else:
                s.setsockopt(_SOL_NETLINK, NETLINK_OPTIONS[name], value)
        set_filter(s, st.bpf_filter, st.filter_locked)
        if st.portid:
            s.bind((st.portid, 0))
        for group in st.groups:
            s.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, group)
        if st.dst_portid or st.dst_group:
            s.connect((st.dst_portid, st.dst_group))
    except OSError as e:
        s.close()
        raise EngineError("files", f"netlink socket {rec.link} (protocol {st.protocol}, "
                                   f"port id {st.portid}): {e.strerror}") from None
    return s.detach()
