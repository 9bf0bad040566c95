"""inotify and fanotify groups of a frozen task: their watches and marks, with the path
of each watched object found from the file handle fdinfo shows (open_by_handle_at), or,
where the filesystem cannot decode handles (overlayfs without nfs_export, as /tmp is in a
virtme-ng guest), by a bounded search for its inode around the task's cwd and open files.

Refused here, while the tree can still run on: a group with queued events (reading them
would take them from the program, and no call puts an event back into a queue), and a
watched object that no path of the task's root leads to any more.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
from collections.abc import Iterator

from engine.errors import EngineError
from engine.images.fdkinds import FanotifyMark, FanotifyState, InotifyWatch
from engine.kernel import sys as ksys
from engine.kernel import uapi
from engine.kernel.sys import syscall
from engine.proc import anonfd, fdinfo, mountinfo
from engine.proc.fdinfo import FdInfo


def _refuse(pid: int, fd: int, what: str) -> EngineError:
    return EngineError("files", f"task {pid} fd {fd}: cannot dump {what}")


def check_no_queued_events(pid: int, fd: int, kind: str) -> None:
    """Refuse a notification group whose queue holds events (FIONREAD on a copy of the
    task's fd: the same group)."""
    try:
        pidfd = ksys.pidfd_open(pid)
        try:
            own = ksys.pidfd_getfd(pidfd, fd)
        finally:
            os.close(pidfd)
        try:
            queued = int.from_bytes(fcntl.ioctl(own, uapi.FIONREAD, b"\0" * 4), "little")
        finally:
            os.close(own)
    except OSError as e:
        raise _refuse(pid, fd, f"an {kind} fd: its queue: {e.strerror}") from None
    if queued:
        raise _refuse(pid, fd, f"an {kind} fd with {queued} bytes of queued events: no "
                               "call puts events back into a new queue")


def _open_by_handle(mount_fd: int, h: anonfd.Handle) -> int:
    fh = ctypes.create_string_buffer(struct.pack("=Ii", len(h.data), h.type) + h.data)
    return syscall(uapi.SYS_open_by_handle_at, mount_fd, fh, uapi.O_PATH | uapi.O_CLOEXEC)


def _stat_in_root(pid: int, path: str) -> os.stat_result | None:
    try:
        return os.stat(f"/proc/{pid}/root{path}", follow_symlinks=False)
    except OSError:
        return None


def _is(st: os.stat_result | None, kdev: int, ino: int) -> bool:
    return st is not None and st.st_ino == ino and mountinfo.kdev_of(st.st_dev) == kdev


def path_of_handle(pid: int, h: anonfd.Handle, mounts: list[mountinfo.Mount]) -> str | None:
    """The path, in the task's root, of the inode behind a file handle: decoded on each
    of the task's mounts of that device until the path it gets leads back to the inode
    (a dentry the kernel has no name for, or a name no longer reachable, is None)."""
    for m in mounts:
        if m.kdev != h.dev:
            continue
        try:
            # not O_PATH: open_by_handle_at takes no O_PATH fd (EBADF)
            mount_fd = os.open(f"/proc/{pid}/root{m.point}",
                               os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fd = _open_by_handle(mount_fd, h)
        except OSError:
            continue
        finally:
            os.close(mount_fd)
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        if path.startswith("/") and _is(_stat_in_root(pid, path), h.dev, h.ino):
            return path
    return None


#: the search for an inode by number looks this deep under each start, at this many entries
_SEARCH_DEPTH = 3
_SEARCH_BUDGET = 20000
_WATCH_BATCH = 256


def _search_starts(pid: int) -> list[str]:
    """The task's cwd and the directories of its open files: where watched files are."""
    starts = []
    for link in [f"/proc/{pid}/cwd"] + [f"/proc/{pid}/fd/{n}"
                                        for n in os.listdir(f"/proc/{pid}/fd")]:
        try:
            target = os.readlink(link)
        except OSError:
            continue
        if target.startswith("/") and not target.endswith(" (deleted)"):
            starts.append(target if link.endswith("cwd") else os.path.dirname(target))
    return list(dict.fromkeys(starts))


def _candidates(pid: int) -> Iterator[str]:
    """Paths in the task's root, breadth first (no symlink followed) from each start."""
    root = f"/proc/{pid}/root"
    budget = _SEARCH_BUDGET
    level = _search_starts(pid)
    yield from level
    for _ in range(_SEARCH_DEPTH):
        below = []
        for d in level:
            try:
                entries = list(os.scandir(root + d))[:budget]
            except OSError:
                continue
            budget -= len(entries)
            for e in entries:
                path = os.path.join(d, e.name)
                yield path
                if e.is_dir(follow_symlinks=False):
                    below.append(path)
            if not budget:
                return
        level = below


def search_inode(pid: int, kdev: int, ino: int) -> str | None:
    """The path, in the task's root, of inode `ino` of device `kdev` as inotify names it,
    looked for under the task's cwd and its open files' directories. Candidates are
    compared by a watch of the engine's own (the kernel's inode and device, as in the
    task's fdinfo): stat() may show another pair, overlayfs gives a file its upper layer's."""
    root = f"/proc/{pid}/root"
    fd = _inotify_init()
    try:
        batch: dict[int, str] = {}
        for path in _candidates(pid):
            wd = _watch(fd, root + path)
            if wd >= 0:
                batch[wd] = path
            if len(batch) >= _WATCH_BATCH:
                found = _match(fd, batch, kdev, ino)
                if found is not None:
                    return found
                batch = {}
        return _match(fd, batch, kdev, ino) if batch else None
    finally:
        os.close(fd)


def _inotify_init() -> int:
    return syscall(uapi.SYS_inotify_init1, uapi.O_CLOEXEC)


def _watch(fd: int, path: str) -> int:
    """A watch on `path` itself (not a symlink's target), or -1 where none can be set."""
    try:
        name = ctypes.create_string_buffer(os.fsencode(path))
        return syscall(uapi.SYS_inotify_add_watch, fd, name, uapi.IN_ATTRIB | uapi.IN_DONT_FOLLOW)
    except OSError:
        return -1


def _match(fd: int, batch: dict[int, str], kdev: int, ino: int) -> str | None:
    """The path of the watch in `batch` on inode (kdev, ino); every watch is removed."""
    marks = anonfd.inotify(fdinfo.read_fd(os.getpid(), fd).extra)
    for m in marks:
        syscall(uapi.SYS_inotify_rm_watch, fd, m.wd)
    return next((batch[m.wd] for m in marks
                 if (m.handle.dev, m.handle.ino) == (kdev, ino) and m.wd in batch), None)


def _path(pid: int, fd: int, h: anonfd.Handle, mounts: list[mountinfo.Mount],
          what: str) -> str:
    path = path_of_handle(pid, h, mounts) or search_inode(pid, h.dev, h.ino)
    if path is None:
        raise _refuse(pid, fd, f"{what} of inode {h.ino} on device {h.dev >> 20}:"
                               f"{h.dev & 0xFFFFF}: no path of the task's root leads to it")
    return path


def _mounts(pid: int, fd: int) -> list[mountinfo.Mount]:
    try:
        return mountinfo.read(pid)
    except (OSError, ValueError, IndexError) as e:
        raise _refuse(pid, fd, f"a notification group: mounts of the task: {e}") from None


def inotify(pid: int, info: FdInfo) -> list[InotifyWatch]:
    """The watches of an inotify fd, each with the path of what it watches."""
    check_no_queued_events(pid, info.fd, "inotify")
    marks = anonfd.inotify(info.extra)
    mounts = _mounts(pid, info.fd) if marks else []
    out = []
    for m in sorted(marks, key=lambda m: m.wd):
        path = _path(pid, info.fd, m.handle, mounts, f"the inotify watch {m.wd}")
        out.append(InotifyWatch(m.wd, m.mask, path, m.handle.dev, m.handle.ino))
    return out


def fanotify(pid: int, info: FdInfo) -> FanotifyState:
    """The group flags and marks of a fanotify fd, each mark with a path to set it on."""
    check_no_queued_events(pid, info.fd, "fanotify")
    flags, event_flags, marks = anonfd.fanotify(info.extra)
    mounts = _mounts(pid, info.fd) if marks else []
    out = []
    for m in marks:
        masks = (m.mflags, m.mask, m.ignored_mask)
        if m.handle is not None:
            path = _path(pid, info.fd, m.handle, mounts, "a fanotify inode mark")
            out.append(FanotifyMark("inode", path, *masks))
            continue
        kind = "mount" if m.mnt_id is not None else "filesystem"
        # a mount mark is set on its mount point, a filesystem mark on any mount of it
        points = [x.point for x in mounts if x.id == m.mnt_id or kind == "filesystem"
                  and x.kdev == m.dev]
        if not points:
            raise _refuse(pid, info.fd, f"a fanotify {kind} mark: the mount is not in the "
                                        "task's mount namespace")
        out.append(FanotifyMark(kind, points[0], *masks))
    return FanotifyState(flags, event_flags, out)
