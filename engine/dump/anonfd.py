"""State of the anon-inode fds the engine can give back: eventfd, signalfd, timerfd, epoll,
inotify, fanotify (engine.dump.notify), pidfd.

Every other anon-inode kind (userfaultfd, io_uring, ...) and
every socket is refused here, at dump time, while the tree can still be left running:
a restore that finds such an fd would only fail after the dump had killed the tree.
"""

from __future__ import annotations

import os
import time

from engine.dump import notify
from engine.errors import EngineError
from engine.images.fdkinds import (
    TFD_TIMER_ABSTIME,
    EpollWatch,
    EventfdState,
    PidfdState,
    SignalfdState,
    TimerfdState,
)
from engine.images.records import FileRecord
from engine.kernel import sys as ksys
from engine.proc import anonfd
from engine.proc.fdinfo import FdInfo

SUPPORTED = ("eventfd", "signalfd", "timerfd", "eventpoll", "inotify", "fanotify", "pidfd")


def refuse_unsupported(pid: int, info: FdInfo, kind: str) -> None:
    """Raise the dump's error for an fd of a kind the restore cannot build."""
    if kind == "socket":
        what = f"a socket ({info.target})"
    elif kind == "anon_inode":
        what = f"an {anonfd.anon_kind(info.target) or '?'} fd ({info.target})"
    else:
        what = f"a {kind} file ({info.target})"
    raise EngineError("files", f"task {pid} fd {info.fd}: cannot dump {what}: "
                               "not supported by this engine")


def fill(rec: FileRecord, pid: int, info: FdInfo) -> None:
    """Put the kind-specific state of an anon-inode fd into its record (epoll watches
    are filled in later by resolve_watches, once every fd of the task has an id)."""
    kind = anonfd.anon_kind(info.target)
    if kind not in SUPPORTED:
        refuse_unsupported(pid, info, "anon_inode")
    try:
        if kind == "eventfd":
            count, sem = anonfd.eventfd(info.extra)
            if sem is None:
                sem = _eventfd_semaphore(pid, info.fd, count)
            rec.eventfd = EventfdState(count, sem)
        elif kind == "signalfd":
            rec.signalfd = SignalfdState(anonfd.signalfd(info.extra))
        elif kind == "timerfd":
            rec.timerfd = _timer(anonfd.timerfd(info.extra))
        elif kind == "inotify":
            rec.inotify = notify.inotify(pid, info)
        elif kind == "fanotify":
            rec.fanotify = notify.fanotify(pid, info)
        elif kind == "pidfd":
            rec.pidfd = _pidfd(pid, info)
        else:
            rec.epoll = []
    except (KeyError, ValueError) as e:
        raise EngineError("files", f"task {pid} fd {info.fd}: unreadable {kind} fdinfo: "
                                   f"{e}") from None


def _eventfd_semaphore(pid: int, fd: int, count: int) -> bool:
    """Whether an eventfd is in semaphore mode, on kernels whose fdinfo does not say (before
    6.7): on a copy of the task's fd (the same counter), a read of a counter of 2 or more
    gives 1 only in semaphore mode; the counter is put back as it was. The tree is frozen,
    so no reader of the task's sees the probe."""
    try:
        pidfd = ksys.pidfd_open(pid)
        try:
            own = ksys.pidfd_getfd(pidfd, fd)
        finally:
            os.close(pidfd)
        try:
            return _probe_semaphore(own, count)
        finally:
            os.close(own)
    except OSError as e:
        raise EngineError("files", f"task {pid} fd {fd}: eventfd semaphore mode: "
                                   f"{e.strerror}") from None


def _probe_semaphore(fd: int, count: int) -> bool:
    if count >= 2:  # reads never block here
        got = os.eventfd_read(fd)
        os.eventfd_write(fd, got)
        return got == 1
    os.eventfd_write(fd, 2)  # counter count + 2: no overflow, no blocking
    got = os.eventfd_read(fd)
    if got == 1:
        os.eventfd_read(fd)  # the second unit back: counter is count again
        return True
    if count:
        os.eventfd_write(fd, count)
    return False


def _pidfd(pid: int, info: FdInfo) -> PidfdState:
    target = anonfd.pidfd(info.extra)
    if target <= 0:
        raise EngineError("files", f"task {pid} fd {info.fd}: cannot dump a pidfd of a "
                                   "process already reaped: pidfd_open needs a live pid")
    return PidfdState(target)


def check_pidfds(files: list[FileRecord], pids: set[int],
                 holder: dict[int, tuple[int, int]]) -> None:
    """Once the whole tree is known: every pidfd refers to one of its processes (only
    those are restored, so only those can be opened again). holder: file id -> (pid, fd)
    of a task holding it."""
    for r in files:
        if r.pidfd is not None and r.pidfd.pid not in pids:
            pid, fd = holder[r.id]
            raise EngineError("files", f"task {pid} fd {fd}: cannot dump a pidfd of pid "
                                       f"{r.pidfd.pid}, which is not a process of the "
                                       "dumped tree")


def refuse_shared_pidfd(rec: FileRecord, pid: int, fd: int,
                        holders: list[tuple[int, int, int]]) -> None:
    """A pidfd's description held by two tasks: restore opens one per task (the holder
    opens it once every task exists, after the fds are shared out), so refuse it.
    holders: (file id, pid, fd) of the first holder of each description of the inode."""
    holder = next(p for f, p, _ in holders if f == rec.id)
    if rec.pidfd is not None and holder != pid:
        raise EngineError("files", f"task {pid} fd {fd}: cannot dump a pidfd shared with "
                                   f"task {holder}: each task would get its own")


def _timer(t: anonfd.Timer) -> TimerfdState:
    value = t.value_ns
    if value and t.settime_flags & TFD_TIMER_ABSTIME:
        # fdinfo shows the time left; an absolute timer keeps its absolute expiry.
        value += time.clock_gettime_ns(t.clockid)
    return TimerfdState(t.clockid, t.settime_flags, value, t.interval_ns, t.ticks)


def resolve_watches(rec: FileRecord, pid: int, info: FdInfo,
                    file_of_fd: dict[int, tuple[int, int, int]]) -> None:
    """Fill an epoll record's watches. file_of_fd: the task's fd -> (file id, st_dev,
    st_ino). A watch whose fd number no longer names its file in this task (closed, or
    reused for another file) cannot be registered again: refused."""
    rec.epoll = []
    for w in anonfd.epoll(info.extra):
        target = file_of_fd.get(w.tfd)
        if target is None or not w.same_file(target[1], target[2]):
            raise EngineError("files", f"task {pid} fd {info.fd}: epoll watches fd {w.tfd}, "
                                       "which no longer names the watched file")
        rec.epoll.append(EpollWatch(w.tfd, target[0], w.events, w.data))
