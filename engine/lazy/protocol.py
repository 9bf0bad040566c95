"""Hand-over of userfaultfds from `restore --lazy-pages` to the `lazy-pages` daemon.

On a unix stream socket, the restore sends one message per process, then a final one:
a 4-byte little-endian length and that many bytes of JSON; a process message carries
its userfaultfd as SCM_RIGHTS on the sendmsg() of the length. Process message:
``{"pid": image pid, "real": pid as the engine sees it, "ranges": [[start, end], ...]}``
(the registered, still unpopulated ranges); final: ``{"done": true}``. The daemon then
answers ACK, which the restore waits for before it lets the tasks go (it restores their
state meanwhile): a daemon that did not take them fails the restore.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

ACK = b"ok\n"
_LEN = struct.Struct("<I")
_MAX_MESSAGE = 64 << 20


@dataclass
class Handover:
    """One process's userfaultfd and what it covers."""

    pid: int
    real: int
    ranges: list[tuple[int, int]]
    fd: int = -1


def send_task(sock: socket.socket, h: Handover) -> None:
    """Send one process message with its fd."""
    body = json.dumps({"pid": h.pid, "real": h.real, "ranges": h.ranges}).encode()
    fds = array.array("i", [h.fd])
    sock.sendmsg([_LEN.pack(len(body))], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    sock.sendall(body)


def send_done(sock: socket.socket) -> None:
    """Send the final message."""
    body = json.dumps({"done": True}).encode()
    sock.sendall(_LEN.pack(len(body)) + body)


def recv_message(sock: socket.socket) -> tuple[dict[str, Any], int]:
    """One message and the fd that came with it (-1 when none). ConnectionError when the
    peer closed or sent garbage (any fd received with garbage is closed)."""
    fds = array.array("i")
    data, anc, _, _ = sock.recvmsg(_LEN.size, socket.CMSG_LEN(fds.itemsize))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    fd = fds[0] if fds else -1
    try:
        while len(data) < _LEN.size:
            more = sock.recv(_LEN.size - len(data))
            if not more:
                raise ConnectionError("restore closed the connection")
            data += more
        (size,) = _LEN.unpack(data)
        if size > _MAX_MESSAGE:
            raise ConnectionError(f"message of {size} bytes is too long")
        body = bytearray()
        while len(body) < size:
            more = sock.recv(size - len(body))
            if not more:
                raise ConnectionError("restore closed the connection mid-message")
            body += more
        msg = json.loads(body)
        if not isinstance(msg, dict):
            raise ConnectionError("message is not a JSON object")
    except (ConnectionError, ValueError) as e:
        if fd >= 0:
            os.close(fd)
        raise ConnectionError(str(e)) from None
    return msg, fd
