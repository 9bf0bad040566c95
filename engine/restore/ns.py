"""Namespaces of a restored tree: which ones the root creates, and what goes into them.

A tree dumped in its own pid/mnt/net/uts/ipc namespaces (their root is pid 1 of the pid
namespace) is restored into new ones: the root is cloned with the matching CLONE_NEW*
flags and every task gets its pid inside the new pid namespace (clone3 set_tid); outside
it, the kernel chooses.
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
    "user": uapi.CLONE_NEWUSER,
    "time": uapi.CLONE_NEWTIME,  # clone3 only; offsets are not restored (the harness's are 0)
}
# Created implicitly with the pid / time namespace.
_IMPLIED = ("pid_for_children", "time_for_children")
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
    uid_map: list[list[int]] | None = None
    gid_map: list[list[int]] | None = None
    root: str | None = None  # directory the new mount namespace pivots into
    prepared: bool = False  # the engine fills a namespace before the root goes on (ipc)

    @property
    def new_pid(self) -> bool:
        """A new pid namespace (the root is its pid 1)."""
        return bool(self.clone_flags & uapi.CLONE_NEWPID)

    @property
    def waits(self) -> bool:
        """The root waits for the engine before it sets anything up: the engine writes
        the id maps of a new user namespace, or fills a namespace, first."""
        return self.new_user or self.prepared

    @property
    def new_user(self) -> bool:
        """A new user namespace: the engine writes its id maps."""
        return bool(self.clone_flags & uapi.CLONE_NEWUSER)

    def inner_uid(self, uid: int) -> int:
        """A uid as the engine sees it -> as the tasks see it."""
        return _map_in(self.uid_map, uid)

    def inner_gid(self, gid: int) -> int:
        """A gid as the engine sees it -> as the tasks see it."""
        return _map_in(self.gid_map, gid)


def _map_in(rows: list[list[int]] | None, outside: int) -> int:
    for inside, out, count in rows or []:
        if out <= outside < out + count:
            return inside + outside - out
    if rows:
        raise EngineError("state", f"id {outside} is not mapped in the user namespace")
    return outside


def plan(image: DumpImage, root: str | None = None) -> NsSetup | None:
    """The namespaces to create for this image's tree, or None when it shares all of the
    engine's. Only namespaces entered by the root itself are supported. ``root``: the
    tree's own root directory (restore --root), pivoted into in a new mount namespace."""
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
        if rec.type == "user":
            ns.uid_map, ns.gid_map = rec.uid_map, rec.gid_map
    if not flags:
        if root is not None:
            raise EngineError("read", f"{image.path}: --root needs a tree in its own mount "
                                      "namespace")
        return None
    if root is not None and not flags & uapi.CLONE_NEWNS:
        raise EngineError("read", f"{image.path}: --root needs a tree in its own mount "
                                  "namespace")
    ns.clone_flags = flags
    ns.root = root
    return ns


def set_tid(image: DumpImage, pid: int) -> list[int]:
    """The task's pids in every pid namespace, innermost first."""
    entry = image.inventory.task(pid)
    return list(reversed(entry.ns_pid)) if entry.ns_pid else [pid]


def clone_tids(image: DumpImage, ns: NsSetup | None, pid: int) -> tuple[list[int], bool]:
    """The set_tid a task is created with, and whether it fixes the engine-side pid.
    In a new pid namespace only the pids inside are the tree's: the ones outside are
    whatever the kernel gives (the dumped ones may be taken by then, and asking for them
    would fail the restore for nothing); below a new user namespace they could not be
    chosen anyway (no CAP_SYS_ADMIN over the engine's pid namespace)."""
    tids = set_tid(image, pid)
    if ns is not None and (ns.new_pid or ns.new_user) and len(tids) > 1:
        return tids[:1], False
    return tids, True


def write_id_maps(pid: int, ns: NsSetup) -> None:
    """From the engine: the new user namespace's uid_map and gid_map."""
    for name, rows in (("uid_map", ns.uid_map), ("gid_map", ns.gid_map)):
        if rows:
            text = "".join(f"{a} {b} {c}\n" for a, b, c in rows)
            with open(f"/proc/{pid}/{name}", "w", encoding="ascii") as f:
                f.write(text)


def inner_pid(image: DumpImage, pid: int) -> int:
    """The task's pid in its own pid namespace."""
    return set_tid(image, pid)[0]


def setup_inside(ns: NsSetup) -> None:
    """In the root task right after its clone: fill the new namespaces."""
    try:
        if ns.clone_flags & uapi.CLONE_NEWNS:
            ksys.syscall(uapi.SYS_mount, 0, _cstr("/"), 0, uapi.MS_REC | uapi.MS_PRIVATE, 0)
            root = ns.root or "/"
            if ns.root is not None:
                ksys.syscall(uapi.SYS_mount, _cstr(root), _cstr(root), 0, uapi.MS_BIND, 0)
            if ns.new_pid:
                # before the old root is gone: in a user namespace proc may be mounted only
                # while a fully visible one is in the mount namespace
                ksys.syscall(uapi.SYS_mount, _cstr("proc"), _cstr(os.path.join(root, "proc")),
                             _cstr("proc"), _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, 0)
            if ns.root is not None:
                _pivot(root)
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


def _pivot(root: str) -> None:
    """Make ``root`` (a mount point) this mount namespace's "/"; detach the old one."""
    os.chdir(root)
    ksys.syscall(uapi.SYS_pivot_root, _cstr("."), _cstr("."))
    ksys.syscall(uapi.SYS_umount2, _cstr("."), uapi.MNT_DETACH)
    os.chdir("/")


def become_root_inside() -> None:
    """In the root task of a new user namespace, once its files are open: become uid and
    gid 0 inside (what the tasks' children are forked as; the dumped credentials come back
    at the end of the restore)."""
    try:
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    except OSError as e:
        raise EngineError("fork", f"cannot become root in the new user namespace: {e}") \
            from None


def _cstr(text: str) -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(os.fsencode(text))


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = bytearray(_IFREQ.pack(b"lo", 0))
        fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req)
        _, flags = _IFREQ.unpack(req)
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))
