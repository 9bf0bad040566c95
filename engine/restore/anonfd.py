"""New eventfd, signalfd, timerfd, epoll, inotify and fanotify files with the dumped state
(Python, in the restored root before it forks, so descriptions shared between tasks stay
shared); pidfds, which need their process to exist, in their holder once every task does.

Epoll watches are keyed by the kernel on (file, fd number): they can only be added once
the watched file sits at its dumped fd number, so each watch is armed by one task of the
tree after that task placed its fds (`arm`), chosen while planning (`EpollPlan`).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import time
from dataclasses import dataclass, field

from engine.errors import EngineError
from engine.images.fdkinds import TFD_TIMER_ABSTIME, EpollWatch, TimerfdState
from engine.images.records import FdEntry, FileRecord
from engine.kernel import uapi
from engine.kernel.sys import syscall
from engine.restore import notify

_NS = 1_000_000_000
_TFD_IOC_SET_TICKS = 0x40085400  # _IOW('T', 0, __u64); kernels with CHECKPOINT_RESTORE
_EPOLL_CTL_ADD = 1


def create(rec: FileRecord) -> int:
    """A new fd on a new anon-inode file equal to `rec` (status flags set by the caller)."""
    cloexec = uapi.O_CLOEXEC
    if rec.eventfd is not None:
        fd = os.eventfd(0, cloexec | (os.EFD_SEMAPHORE if rec.eventfd.semaphore else 0))
        if rec.eventfd.count:
            os.eventfd_write(fd, rec.eventfd.count)
        return fd
    if rec.signalfd is not None:
        mask = ctypes.c_uint64(rec.signalfd.sigmask)
        return syscall(uapi.SYS_signalfd4, -1, mask, 8, cloexec)
    if rec.timerfd is not None:
        return _timerfd(rec.timerfd)
    if rec.epoll is not None:
        return syscall(uapi.SYS_epoll_create1, cloexec)
    if rec.inotify is not None:
        return notify.inotify(rec.inotify)
    if rec.fanotify is not None:
        return notify.fanotify(rec.fanotify)
    raise EngineError("files", f"file {rec.id}: anon_inode without a known kind")


def _timerfd(t: TimerfdState) -> int:
    fd = syscall(uapi.SYS_timerfd_create, t.clockid, uapi.O_CLOEXEC)
    value = t.value_ns
    if value and t.settime_flags & TFD_TIMER_ABSTIME and value <= time.clock_gettime_ns(
            t.clockid):
        value = 1  # already due: expire at once, as it would have
    spec = ctypes.create_string_buffer(struct.pack(
        "4q", t.interval_ns // _NS, t.interval_ns % _NS, value // _NS, value % _NS))
    syscall(uapi.SYS_timerfd_settime, fd, t.settime_flags, spec, 0)
    if t.ticks:
        try:
            fcntl.ioctl(fd, _TFD_IOC_SET_TICKS, struct.pack("Q", t.ticks))
        except OSError as e:
            os.close(fd)
            raise EngineError("files", f"timerfd with {t.ticks} unread expirations: "
                                       f"TFD_IOC_SET_TICKS: {e.strerror}") from None
    return fd


@dataclass
class EpollPlan:
    """Which task arms which epoll watch: pid -> [(epoll file id, watch)]."""

    by_task: dict[int, list[tuple[int, EpollWatch]]] = field(default_factory=dict)
    _taken: set[tuple[int, int]] = field(default_factory=set)  # (epoll id, watch index)
    _pending: dict[tuple[int, int], EpollWatch] = field(default_factory=dict)

    def add_task(self, pid: int, fds: list[FdEntry], files: dict[int, FileRecord]) -> None:
        """Give this task every watch not yet taken that it can arm: it holds the epoll
        and has the watched file at the watch's fd number."""
        at = {f.fd: f.file_id for f in fds}
        for eid in sorted({f.file_id for f in fds}):
            for i, w in enumerate(files[eid].epoll or []):
                key = (eid, i)
                if key in self._taken:
                    continue
                if at.get(w.tfd) == w.file_id:
                    self.by_task.setdefault(pid, []).append((eid, w))
                    self._taken.add(key)
                    self._pending.pop(key, None)
                else:
                    self._pending[key] = w

    def check(self) -> None:
        """Every watch has a task that can arm it."""
        for (eid, _), w in self._pending.items():
            raise EngineError("read", f"file {eid}: epoll watch of fd {w.tfd} (file "
                                      f"{w.file_id}): no task holds both at those numbers")


def open_pidfds(fds: list[FdEntry], files: dict[int, FileRecord],
                inner_pid: dict[int, int]) -> None:
    """In a task, once every task of the tree exists: open its pidfds (one description per
    dumped one, at each of its fd numbers). inner_pid: image pid -> pid in the tree's
    own pid namespace, which is the task's."""
    opened: dict[int, int] = {}  # file id -> the first fd number holding it
    for fde in sorted(fds, key=lambda f: f.fd):
        rec = files[fde.file_id]
        if rec.pidfd is None:
            continue
        if rec.id in opened:
            os.dup2(opened[rec.id], fde.fd, inheritable=not fde.cloexec)
            continue
        try:
            # PIDFD_NONBLOCK is O_NONBLOCK and PIDFD_THREAD is O_EXCL, as the file shows
            fd = syscall(uapi.SYS_pidfd_open, inner_pid[rec.pidfd.pid],
                         rec.flags & (uapi.O_NONBLOCK | uapi.O_EXCL))
        except OSError as e:
            raise EngineError("files", f"pidfd_open({inner_pid[rec.pidfd.pid]}): "
                                       f"{e.strerror}") from None
        if fd != fde.fd:
            os.dup2(fd, fde.fd, inheritable=not fde.cloexec)
            os.close(fd)
        elif not fde.cloexec:
            os.set_inheritable(fd, True)
        opened[rec.id] = fde.fd


def deferred(watches: list[tuple[int, EpollWatch]],
             files: dict[int, FileRecord]) -> tuple[list[tuple[int, EpollWatch]],
                                                     list[tuple[int, EpollWatch]]]:
    """(watches armed with the fds, watches of pidfds: armed once those are open)."""
    now = [x for x in watches if files[x[1].file_id].pidfd is None]
    return now, [x for x in watches if files[x[1].file_id].pidfd is not None]


def arm(watches: list[tuple[int, EpollWatch]], fd_of_file: dict[int, int]) -> None:
    """In a task whose fds are in place: add its share of the epoll watches.
    fd_of_file: epoll file id -> an fd of this task on that epoll."""
    ev = ctypes.create_string_buffer(12)  # struct epoll_event is packed on x86_64
    for eid, w in watches:
        struct.pack_into("=IQ", ev, 0, w.events, w.data)
        try:
            syscall(uapi.SYS_epoll_ctl, fd_of_file[eid], _EPOLL_CTL_ADD, w.tfd, ev)
        except OSError as e:
            raise EngineError("files", f"epoll watch of fd {w.tfd}: {e.strerror}") from None
