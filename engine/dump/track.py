"""Dirty-memory tracking between dumps: async userfaultfd write-protection.

This kernel has no soft-dirty bits (DESIGN.md section 7). Instead each process gets a
userfaultfd created inside it (injected), copied out with pidfd_getfd and closed there,
set up with UFFD_FEATURE_WP_ASYNC | WP_UNPOPULATED. Its private anonymous VMAs are
registered for write-protection and every present page is protected (PAGEMAP_SCAN with
PM_SCAN_WP_MATCHING). The kernel then notes writes itself, without fault messages; the
next dump asks PAGEMAP_SCAN for PAGE_IS_WRITTEN pages (re-protecting them as it goes), and
pages of tracked VMAs that were not written and are in the parent image are recorded as
"in parent" instead of copied.

A VMA that is moved (mremap) or created after arming is not tracked (the kernel drops the
registration of a moved VMA without UFFD_FEATURE_EVENT_REMAP), so only the VMAs the kernel
reports registered (PAGE_IS_WPALLOWED, VmFlags "uw") are trusted and everything else is
dumped in full.

Our copies of the userfaultfds must stay open between two engine runs, so after a dump
that arms tracking a small holder process (double-forked, in its own session) keeps them
and hands them to the next dump over an abstract unix socket named after the image
directory, then exits; it gives up after HOLD_TIMEOUT.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import socket
import time
from dataclasses import dataclass

from engine.dump.intervals import Interval, normalise
from engine.dump.vmas import has_private_pages
from engine.errors import EngineError
from engine.images.records import Vma
from engine.kernel import sys as ksys
from engine.kernel import uapi, uffd
from engine.kernel.inject import Injector
from engine.proc import pagemap as procpagemap
from engine.proc.stat import read_stat

HOLD_TIMEOUT = 600.0
# PAGEMAP_SCAN only write-protects anonymous VMAs whose userfaultfd has WP_UNPOPULATED
# (the kernel's "use markers" condition); the pte markers it leaves in holes are told
# apart from swapped data by engine.dump.pages.
_FEATURES = uffd.TRACK_FEATURES
CONNECT_TIMEOUT = 5.0
_SCM_MAX = 200  # fds per message (the kernel's SCM_MAX_FD is 253)


@dataclass
class Tracker:
    """Our copy of one process's tracking userfaultfd."""

    pid: int
    fd: int
    starttime: int  # stat field 22: tells a reused pid from the tracked process


def close_all(trackers: dict[int, Tracker]) -> None:
    """Drop tracking (the kernel unregisters every VMA when the last copy closes)."""
    for t in trackers.values():
        if t.fd >= 0:
            os.close(t.fd)
            t.fd = -1
    trackers.clear()


def create(inj: Injector, pid: int) -> Tracker:
    """Create a userfaultfd inside `pid` (through its main thread's injector), take a copy
    and close the target's fd so its fd table is unchanged."""
    try:
        fd = uffd.create_in_target(inj, pid, _FEATURES)
    except PermissionError:
        # Inside a user namespace only a user-mode userfaultfd is allowed; async
        # write-protect needs no fault handling, so it tracks just as well.
        fd = uffd.create_in_target(inj, pid, _FEATURES, user_mode=True)
    return Tracker(pid, fd, read_stat(pid).starttime)


def _trackable(v: Vma) -> bool:
    """Private anonymous VMAs only. Registered file-backed VMAs get uffd-wp pte markers in
    all their holes (reported by PAGEMAP_SCAN as swapped, non-file pages), costly to tell
    from data on a machine with swap; their copied-on-write pages (library data, small)
    are simply copied in every dump instead."""
    return has_private_pages(v) and bool(v.flags & uapi.MAP_ANONYMOUS)


def trackable_ranges(vmas: list[Vma]) -> list[Interval]:
    """Private anonymous VMAs: the ones tracking registers (needs only the layout)."""
    return normalise([(v.start, v.end) for v in vmas if _trackable(v)])


def written(pid: int, tracked: list[Interval]) -> list[Interval]:
    """Pages written since they were last protected, in the tracked VMAs among `tracked`
    ranges; protects them again (one PAGEMAP_SCAN; the kernel skips VMAs not registered
    for write-protection)."""
    if not tracked:
        return []
    fd = procpagemap.open_pagemap(pid)
    try:
        regions = ksys.pagemap_scan(fd, tracked[0][0], tracked[-1][1],
                                    flags=uapi.PM_SCAN_WP_MATCHING,
                                    category_mask=uapi.PAGE_IS_WRITTEN,
                                    return_mask=uapi.PAGE_IS_WRITTEN, vec_len=16384)
    finally:
        os.close(fd)
    return normalise([(s, e) for s, e, _c in regions])


def arm(t: Tracker, vmas: list[Vma]) -> None:
    """Register the private VMAs not tracked yet and write-protect every present page."""
    todo = normalise([(v.start, v.end) for v in vmas if _trackable(v)
                      and "uw" not in v.vmflags])
    for start, end in todo:
        if not _register(t.fd, start, end):
            # One VMA of the run refuses (e.g. VM_DROPPABLE): register the others alone.
            for v in vmas:
                if start <= v.start < end and _trackable(v):
                    _register(t.fd, v.start, v.end)
    if todo:
        written(t.pid, trackable_ranges(vmas))  # skips any VMA not registered


def _register(fd: int, start: int, end: int) -> bool:
    try:
        uffd.register(fd, start, end - start, uapi.UFFDIO_REGISTER_MODE_WP)
    except OSError:
        return False
    return True


def _socket_name(images_dir: str) -> bytes:
    """Abstract socket name for an image dir: no file to clean up, no path-length limit."""
    st = os.stat(images_dir)
    return f"\0pyengine-track-{st.st_dev}-{st.st_ino}".encode()


def hold(images_dir: str, trackers: dict[int, Tracker]) -> None:
    """Hand our copies to a holder process that keeps them for the next dump. Our own
    copies are closed on return."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind(_socket_name(images_dir))
        listener.listen(1)
        # pidfds of the tracked processes: the holder quits early once all have exited.
        # A process that exited since it was let go needs no tracking any more.
        live, pidfds = _pidfds(trackers)
        meta: dict[str, object] = {"pids": [t.pid for t in live],
                                   "starttimes": [t.starttime for t in live]}
        fds = [t.fd for t in live]
        try:
            pid = os.fork()
            if pid == 0:
                _holder_child(listener, fds, pidfds, meta)  # never returns
        finally:
            for fd in pidfds:
                os.close(fd)
        _wait_child(pid)
    except OSError as e:
        raise EngineError("write", f"cannot start the memory-tracking holder: {e}") from None
    finally:
        listener.close()
        close_all(trackers)


def _pidfds(trackers: dict[int, Tracker]) -> tuple[list[Tracker], list[int]]:
    """The trackers whose process still runs, and a pidfd of each."""
    live, pidfds = [], []
    for t in trackers.values():
        try:
            pidfd = ksys.pidfd_open(t.pid)
        except ProcessLookupError:
            continue
        live.append(t)
        pidfds.append(pidfd)
    return live, pidfds


def _wait_child(pid: int) -> None:
    _, status = os.waitpid(pid, 0)  # the intermediate child exits at once
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError(0, f"holder start failed (status {status:#x})")


def _holder_child(listener: socket.socket, fds: list[int], pidfds: list[int],
                  meta: dict[str, object]) -> None:
    """Intermediate child: start the holder in its own session, exit at once."""
    code = 1
    try:
        os.setsid()
        if os.fork() == 0:
            _holder(listener, fds, pidfds, meta)
        code = 0
    finally:
        os._exit(code)


def _holder(listener: socket.socket, fds: list[int], pidfds: list[int],
            meta_fields: dict[str, object]) -> None:
    """The holder: keep `fds` until one client takes them, every tracked process has
    exited, or HOLD_TIMEOUT passed."""
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        for std in (0, 1, 2):
            os.dup2(devnull, std)
        os.close(devnull)
        _close_all_but({listener.fileno(), *fds, *pidfds})
        os.chdir("/")
        ksys.prctl(uapi.PR_SET_NAME, ctypes.create_string_buffer(b"engine-memtrack"))
        deadline = time.monotonic() + HOLD_TIMEOUT
        alive = set(pidfds)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not alive:
                return
            waitables: list[socket.socket | int] = [listener, *alive]
            ready, _, _ = select.select(waitables, [], [], left)
            alive -= {fd for fd in ready if fd in alive}  # a readable pidfd: it exited
            if listener in ready:
                break
        conn, _ = listener.accept()
        meta = json.dumps({**meta_fields, "holder": os.getpid()}).encode()
        with conn:
            conn.settimeout(CONNECT_TIMEOUT)
            conn.sendall(len(meta).to_bytes(4, "little") + meta)
            for i in range(0, len(fds), _SCM_MAX):
                socket.send_fds(conn, [b"f"], fds[i:i + _SCM_MAX])
            conn.recv(1)  # wait until the client has them (or hung up)
    finally:
        os._exit(0)


def _close_all_but(keep: set[int]) -> None:
    """Close every fd from 3 up except `keep` (close_range under the hood)."""
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def fetch(prev_dir: str) -> dict[int, Tracker]:
    """Take the tracking fds held for `prev_dir`. Empty when nothing tracks it, or when
    the hand-over fails (e.g. the holder is just exiting because the tree died): the dump
    is then complete, every page copied, which is always correct. Trackers of pids that
    now belong to another process are dropped."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(CONNECT_TIMEOUT)
    fds: list[int] = []
    try:
        sock.connect(_socket_name(prev_dir))
        size = int.from_bytes(_recv_exact(sock, 4), "little")
        meta = json.loads(_recv_exact(sock, size))
        pids, starts = meta["pids"], meta["starttimes"]
        while len(fds) < len(pids):
            _msg, got, _flags, _addr = socket.recv_fds(sock, 1, _SCM_MAX)
            if not got:
                raise OSError(0, "holder hung up")
            fds.extend(got)
        sock.sendall(b"k")
        _wait_gone(meta["holder"])
    except (OSError, ValueError, KeyError, TypeError):
        for fd in fds:
            os.close(fd)
        return {}
    finally:
        sock.close()
    out: dict[int, Tracker] = {}
    for pid, start, fd in zip(pids, starts, fds):
        try:
            same = read_stat(pid).starttime == start
        except FileNotFoundError:
            same = False
        if same:
            out[pid] = Tracker(pid, fd, start)
        else:
            os.close(fd)
    return out


def _wait_gone(pid: int) -> None:
    """Wait (bounded) until the holder has exited, so no engine process outlives the
    dump that consumed it (it stays a zombie until its reaper, a subreaper, reaps it)."""
    try:
        pidfd = ksys.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([pidfd], [], [], CONNECT_TIMEOUT)
    finally:
        os.close(pidfd)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError(0, "holder hung up")
        buf += chunk
    return buf
