"""New inotify and fanotify groups with the dumped watches and marks (in the restored
root before it forks, as every other description).

inotify hands out watch descriptors from a cyclic counter, one above the last one given:
the watches are added in the order of their wds, and a gap (a watch the program removed)
is crossed by adding and removing the next watch until the counter reaches its wd. Each
removal queues an IN_IGNORED event, drained before the group is handed over (the dump
refuses a group with queued events, so the queue was empty).
"""

from __future__ import annotations

import ctypes
import os

from engine.errors import EngineError
from engine.images.fdkinds import FanotifyMark, FanotifyState, InotifyWatch
from engine.kernel import uapi
from engine.kernel.sys import syscall
from engine.proc import anonfd

_IN_DONT_FOLLOW = 0x02000000  # the path names the watched inode itself, symlink or not
_FAN_MARK_ADD = 0x1
_FAN_MARK_IGNORED_MASK = 0x20
_FAN_MARK_IGNORED_SURV_MODIFY = 0x40
_FAN_MARK_IGNORE = 0x400
_IGNORE_ONLY = _FAN_MARK_IGNORE | _FAN_MARK_IGNORED_MASK | _FAN_MARK_IGNORED_SURV_MODIFY
_FAN_MARK_KIND = {"inode": 0, "mount": 0x10, "filesystem": 0x100}


def _same_inode(path: str, dev: int, ino: int) -> bool:
    """Whether `path` is the inode the dumped watch was on, as inotify names inodes."""
    return anonfd.inotify_identity(path) == (dev, ino)


def _add_watch(fd: int, w: InotifyWatch) -> int:
    path = ctypes.create_string_buffer(os.fsencode(w.path))
    return syscall(uapi.SYS_inotify_add_watch, fd, path, w.mask | _IN_DONT_FOLLOW)


def _drain(fd: int) -> None:
    os.set_blocking(fd, False)
    try:
        while os.read(fd, 65536):
            pass
    except BlockingIOError:
        pass


def inotify(watches: list[InotifyWatch]) -> int:
    """A new inotify fd with these watches, each under its dumped wd."""
    fd = syscall(uapi.SYS_inotify_init1, uapi.O_CLOEXEC)
    try:
        for w in sorted(watches, key=lambda w: w.wd):
            if not _same_inode(w.path, w.dev, w.ino):
                raise EngineError("files", f"inotify watch {w.wd}: {w.path} is not the "
                                           f"watched inode {w.ino} any more")
            wd = _add_watch(fd, w)
            while wd < w.wd:
                syscall(uapi.SYS_inotify_rm_watch, fd, wd)
                wd = _add_watch(fd, w)
            if wd != w.wd:
                raise EngineError("files", f"inotify watch on {w.path}: got wd {wd}, "
                                           f"not {w.wd}")
        _drain(fd)
    except OSError as e:
        os.close(fd)
        raise EngineError("files", f"inotify watch: {e.strerror}") from None
    except EngineError:
        os.close(fd)
        raise
    return fd


def _mark(fd: int, m: FanotifyMark, flags: int, mask: int) -> None:
    path = ctypes.create_string_buffer(os.fsencode(m.path))
    syscall(uapi.SYS_fanotify_mark, fd, _FAN_MARK_ADD | _FAN_MARK_KIND[m.kind] | flags,
            mask, uapi.AT_FDCWD, path)


def fanotify(state: FanotifyState) -> int:
    """A new fanotify group with the dumped flags and marks."""
    try:
        # FAN_CLOEXEC and FAN_NONBLOCK stay in the group's flags as given, as fdinfo shows
        fd = syscall(uapi.SYS_fanotify_init, state.flags, state.event_flags)
    except OSError as e:
        raise EngineError("files", f"fanotify_init({state.flags:#x}): {e.strerror}") \
            from None
    try:
        for m in state.marks:
            # the ignore flags only go with the ignored mask, set by a call of its own; a
            # mark left with neither (its ignored mask cleared by a FAN_MODIFY) acts on
            # nothing and cannot be made again: it is left out
            if m.mask:
                _mark(fd, m, m.mflags & ~_IGNORE_ONLY, m.mask)
            if m.ignored_mask:
                ignore = m.mflags & _FAN_MARK_IGNORE or _FAN_MARK_IGNORED_MASK
                _mark(fd, m, m.mflags & ~_FAN_MARK_IGNORE | ignore, m.ignored_mask)
    except OSError as e:
        os.close(fd)
        raise EngineError("files", f"fanotify mark on {m.path}: {e.strerror}") from None
    return fd
