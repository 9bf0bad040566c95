"""Packet sockets made again: options, then the binding to the interface (by name, in the
tree's network namespace) with its protocol."""

from __future__ import annotations

import socket

from engine.errors import EngineError
from engine.images.fdkinds import PACKET_OPTIONS
from engine.images.records import FileRecord
from engine.kernel import tcprepair as tr

_SOL_PACKET = 263


def create(rec: FileRecord) -> int:
    """A new fd on a packet socket equal to the dumped one (status flags set by the
    caller)."""
    st = rec.packet
    assert st is not None
    s = socket.socket(socket.AF_PACKET, st.type, st.protocol)
    try:
        for name, opt in PACKET_OPTIONS.items():  # PACKET_VERSION before PACKET_RESERVE
            value = st.options.get(name)
            if value is not None and s.getsockopt(_SOL_PACKET, opt) != value:
                s.setsockopt(_SOL_PACKET, opt, value)
        tr.apply_sockopts(s, st.options)
        tr.set_filter(s, st.bpf_filter, st.filter_locked)
        if st.ifname:
            s.bind((st.ifname, st.bound_protocol))
    except OSError as e:
        s.close()
        raise EngineError("files", f"packet socket {rec.link} on {st.ifname or 'no device'}: "
                                   f"{e.strerror}") from None
    return s.detach()
