"""Namespaces of a restored tree: which ones the root creates, and what goes into them.

A tree dumped in its own pid/mnt/net/uts/ipc namespaces (their root is pid 1 of the pid
namespace) is restored into new ones: the root is cloned with the matching CLONE_NEW*
flags and every task gets its pids at every level (clone3 set_tid, innermost first).
Inside, the root task (still Python) then makes the mount tree private and mounts a /proc
for the new pid namespace (the image has no mount table: a private /proc is what a pid
namespace's tree sees), sets hostname and domainname, and brings loopback up.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
from dataclasses import dataclass

from engine.errors import EngineError
from engine.images import DumpImage
from engine.kernel import sys as ksys
from engine.kernel import uapi

_CLONE_FLAG = {
    "pid": uapi.CLONE_NEWPID,
    "mnt": uapi.CLONE_NEWNS,
    "net": uapi.CLONE_NEWNET,
    "uts": uapi.CLONE_NEWUTS,
    "ipc": uapi.CLONE_NEWIPC,
}
# Created implicitly with the pid namespace / not created by this engine (kept shared).
_IMPLIED = ("pid_for_children",)
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name + ifr_flags (union padded to 24)
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8


@dataclass
class NsSetup:
    """What the root creates and fills in."""

    clone_flags: int
    hostname: str | None = None
    domainname: str | None = None

    @property
    def new_pid(self) -> bool:
        """A new pid namespace (the root is its pid 1)."""
        return bool(self.clone_flags & uapi.CLONE_NEWPID)


def plan(image: DumpImage) -> NsSetup | None:
    """The namespaces to create for this image's tree, or None when it shares all of the
    engine's. Only namespaces entered by the root itself are supported."""
    inv = image.inventory
    flags = 0
    ns = NsSetup(0)
    for rec in inv.namespaces:
        if rec.shared_with_engine or rec.type in _IMPLIED:
            continue
        if rec.type not in _CLONE_FLAG:
            raise EngineError("read", f"{image.path}: restoring a new {rec.type} namespace "
                                      "is not supported")
        if rec.first_pid != inv.root_pid:
            raise EngineError("read", f"{image.path}: {rec.type} namespace {rec.inode} is "
                                      f"entered below the root (task {rec.first_pid}): nested "
                                      "namespaces are not supported")
        flags |= _CLONE_FLAG[rec.type]
        if rec.type == "uts":
            ns.hostname, ns.domainname = rec.hostname, rec.domainname
    if not flags:
        return None
    ns.clone_flags = flags
    return ns


def set_tid(image: DumpImage, pid: int) -> list[int]:
    """The task's pids for clone3 set_tid, innermost namespace first."""
    entry = image.inventory.task(pid)
    return list(reversed(entry.ns_pid)) if entry.ns_pid else [pid]


def inner_pid(image: DumpImage, pid: int) -> int:
    """The task's pid in its own pid namespace."""
    return set_tid(image, pid)[0]


def setup_inside(ns: NsSetup) -> None:
    """In the root task right after its clone: fill the new namespaces."""
    try:
        if ns.clone_flags & uapi.CLONE_NEWNS:
            ksys.syscall(uapi.SYS_mount, 0, _cstr("/"), 0, uapi.MS_REC | uapi.MS_PRIVATE, 0)
            if ns.new_pid:
                ksys.syscall(uapi.SYS_mount, _cstr("proc"), _cstr("/proc"), _cstr("proc"),
                             _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, 0)
        if ns.clone_flags & uapi.CLONE_NEWUTS:
            if ns.hostname is not None:
                socket.sethostname(ns.hostname)
            if ns.domainname is not None:
                name = _cstr(ns.domainname)
                ksys.syscall(uapi.SYS_setdomainname, name, len(name) - 1)
        if ns.clone_flags & uapi.CLONE_NEWNET:
            _loopback_up()
    except OSError as e:
        raise EngineError("fork", f"cannot set up the new namespaces: {e}") from None


def _cstr(text: str) -> ctypes.Array:
    return ctypes.create_string_buffer(os.fsencode(text))


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = bytearray(_IFREQ.pack(b"lo", 0))
        fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req)
        _, flags = _IFREQ.unpack(req)
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))
