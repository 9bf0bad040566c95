"""userfaultfd helpers: the ioctls, a userfaultfd made inside a target, and dirty-page
tracking with async write-protect + PAGEMAP_SCAN (DESIGN.md section 7: no soft-dirty).

Tracking a target's writes:

    with Injector(pid) as inj:
        fd = create_in_target(inj, pid, TRACK_FEATURES)   # our copy; the target's is closed
    for start, end in ranges:
        register(fd, start, end - start, uapi.UFFDIO_REGISTER_MODE_WP)
    pm = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    written_runs(pm, start, end)      # first call arms (write-protects) everything
    ... the target runs and writes ...
    written_runs(pm, start, end)      # the pages written since, re-armed as reported

The tracking lasts while some copy of ``fd`` stays open: closing the last one
unregisters every range.
"""

from __future__ import annotations

import ctypes
import os

from engine.kernel import blob, uapi
from engine.kernel.inject import Injector
from engine.kernel.structs import (
    UffdioApi,
    UffdioCopy,
    UffdioRange,
    UffdioRegister,
    UffdioZeropage,
    UffdMsg,
)
from engine.kernel.sys import ioctl, pagemap_scan, pidfd_getfd, pidfd_open

#: features for write tracking: async WP (no fault messages) that also covers pages
#: never populated (so a later first write is seen as well)
TRACK_FEATURES = uapi.UFFD_FEATURE_WP_ASYNC | uapi.UFFD_FEATURE_WP_UNPOPULATED


def api(fd: int, features: int) -> tuple[int, int]:
    """UFFDIO_API handshake asking for ``features``; returns (features, ioctls) granted.

    Raises OSError(EINVAL) when the kernel lacks a requested feature (as the ioctl does).
    """
    arg = UffdioApi(uapi.UFFD_API, features, 0)
    ioctl(fd, uapi.UFFDIO_API, arg)
    return arg.features, arg.ioctls


def register(fd: int, start: int, length: int, mode: int) -> int:
    """UFFDIO_REGISTER [start, start+length) with MODE_MISSING/WP/MINOR; returns ioctls."""
    arg = UffdioRegister()
    arg.range.start, arg.range.len = start, length
    arg.mode = mode
    ioctl(fd, uapi.UFFDIO_REGISTER, arg)
    return int(arg.ioctls)


def unregister(fd: int, start: int, length: int) -> None:
    """UFFDIO_UNREGISTER."""
    ioctl(fd, uapi.UFFDIO_UNREGISTER, UffdioRange(start, length))


def wake(fd: int, start: int, length: int) -> None:
    """UFFDIO_WAKE: wake threads waiting on faults in the range."""
    ioctl(fd, uapi.UFFDIO_WAKE, UffdioRange(start, length))


def copy(fd: int, dst: int, src: int, length: int, mode: int = 0) -> int:
    """UFFDIO_COPY ``length`` bytes from our address ``src`` to the target's ``dst``;
    returns bytes copied (raises OSError, e.g. EEXIST when the page is already there)."""
    arg = UffdioCopy(dst, src, length, mode, 0)
    ioctl(fd, uapi.UFFDIO_COPY, arg)
    return int(arg.copy)


def zeropage(fd: int, start: int, length: int, mode: int = 0) -> int:
    """UFFDIO_ZEROPAGE; returns bytes mapped."""
    arg = UffdioZeropage()
    arg.range.start, arg.range.len = start, length
    arg.mode = mode
    ioctl(fd, uapi.UFFDIO_ZEROPAGE, arg)
    return int(arg.zeropage)


def read_events(fd: int, max_events: int = 64) -> list[UffdMsg]:
    """Pending messages of a non-blocking userfaultfd (empty list when none)."""
    size = ctypes.sizeof(UffdMsg)
    try:
        data = os.read(fd, size * max_events)
    except BlockingIOError:
        return []
    return [UffdMsg.from_buffer_copy(data, i) for i in range(0, len(data) - size + 1, size)]


def create_in_target(inj: Injector, pid: int, features: int, user_mode: bool = False) -> int:
    """Create a userfaultfd inside the target (so it is bound to the target's mm), do the
    API handshake there, copy it to us with pidfd_getfd and close the target's fd.

    ``user_mode`` (UFFD_USER_MODE_ONLY) is what a target inside a user namespace can get.
    Returns our fd (O_CLOEXEC). The target's fd table is left as it was.
    """
    flags = os.O_CLOEXEC | os.O_NONBLOCK | (uapi.UFFD_USER_MODE_ONLY if user_mode else 0)
    remote = inj.check(uapi.SYS_userfaultfd, flags)
    try:
        buf = inj.scratch(ctypes.sizeof(UffdioApi))
        inj.write(buf, bytes(UffdioApi(uapi.UFFD_API, features, 0)))
        inj.check(uapi.SYS_ioctl, remote, uapi.UFFDIO_API, buf)
        return _copy_to_us(pid, remote, inj.read(buf, ctypes.sizeof(UffdioApi)), features)
    finally:
        inj.check(uapi.SYS_close, remote)


def create_by_runner(runner: blob.BlobRunner, features: int) -> int:
    """create_in_target for a task stopped in a table runner (a restore's): the
    userfaultfd and its API handshake are one table the task runs, its fd closed there
    by one more call. Returns our fd (O_CLOEXEC)."""
    t = blob.Table()
    api_buf = t.data(bytes(UffdioApi(uapi.UFFD_API, features, 0)))
    remote = t.data((-1).to_bytes(8, "little", signed=True))  # the task's fd, once made
    t.add(uapi.SYS_userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK, save=True, store=remote,
          what="userfaultfd")
    t.add(uapi.SYS_ioctl, 0, uapi.UFFDIO_API, api_buf, use_saved=1, what="UFFDIO_API")
    try:
        runner.run(t)
        return _copy_to_us(runner.pid, runner.read_slot(remote),
                           runner.read(t.address(api_buf, runner.base),
                                       ctypes.sizeof(UffdioApi)), features)
    finally:
        fd = runner.read_slot(remote)
        if fd >= 0:
            runner.run_one(uapi.SYS_close, fd)


def _copy_to_us(pid: int, remote: int, api: bytes, features: int) -> int:
    """Our copy (pidfd_getfd) of task pid's userfaultfd `remote`, once its UFFDIO_API
    answer (`api`, struct uffdio_api) grants every one of `features`."""
    granted = UffdioApi.from_buffer_copy(api)
    if granted.features & features != features:
        raise OSError(f"userfaultfd in {pid}: features {granted.features:#x} "
                      f"lack {features & ~granted.features:#x}")
    pidfd = pidfd_open(pid)
    try:
        return pidfd_getfd(pidfd, remote)
    finally:
        os.close(pidfd)


def written_runs(pagemap_fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """Pages written since the last call, as [start, end) runs, write-protecting them
    again (PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC on WRITTEN pages). The first call
    after register() reports the whole registered range (nothing is protected yet, holes
    included) and arms tracking on all of it.

    Every VMA in [start, end) must be registered for async WP: with CHECK_WPASYNC the
    kernel refuses the whole scan (PermissionError) otherwise, rather than reporting an
    untracked VMA as written or not."""
    flags = uapi.PM_SCAN_WP_MATCHING | uapi.PM_SCAN_CHECK_WPASYNC
    runs = pagemap_scan(pagemap_fd, start, end, flags, category_mask=uapi.PAGE_IS_WRITTEN,
                        return_mask=uapi.PAGE_IS_WRITTEN)
    return [(s, e) for s, e, _ in runs]
