"""Raw IP sockets as /proc/PID/net/raw and raw6 list them (the task's network namespace):

      sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
       1: 0100007F:00FD 0100007F:0000 01 00000000:00000000 00:00000000 00000000     0        0 8021 2 ...

Addresses are the kernel's bytes printed as 32-bit words in host (little-endian) order.
A raw socket's connect() address is only seen here: getpeername() needs a port.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

_FILES = {socket.AF_INET: "raw", socket.AF_INET6: "raw6"}


@dataclass(frozen=True)
class RawSock:
    """One raw socket: TCP_* state (1: connected), remote address ("" when none)."""

    state: int
    remote: str


def _address(hexwords: str) -> str:
    raw = b"".join(bytes.fromhex(hexwords[i:i + 8])[::-1] for i in range(0, len(hexwords), 8))
    return str(ipaddress.ip_address(raw))


def raw_socket(pid: int, family: socket.AddressFamily, inode: int) -> RawSock | None:
    """The raw socket with this inode in the netns of `pid`, None if not listed."""
    with open(f"/proc/{pid}/net/{_FILES[family]}", encoding="ascii") as f:
        lines = f.read().splitlines()[1:]
    for line in lines:
        cols = line.split()
        if len(cols) > 9 and cols[9] == str(inode):
            remote = cols[2].split(":")[0]
            return RawSock(int(cols[3], 16), _address(remote) if int(remote, 16) else "")
    return None
