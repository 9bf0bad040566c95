"""userfaultfd helpers (engine/kernel/uffd.py): dirty tracking of another process with a
userfaultfd made inside it, and lazy-style filling with UFFDIO_COPY/ZEROPAGE."""

from __future__ import annotations

import ctypes
import errno
import os
import signal

import pytest

from engine.kernel import ptrace, uapi, uffd
from engine.kernel import sys as ksys
from engine.kernel.inject import Injector
from engine.proc import fdinfo

PAGE = uapi.PAGE_SIZE


def _uffd_fds(pid: int) -> list[int]:
    return [i.fd for i in fdinfo.read_fds(pid) if "userfaultfd" in i.target]


def test_write_tracking_of_another_process(spawn) -> None:
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)
    ptrace.seize(t.pid)
    ptrace.freeze(t.pid, 10)
    fds_before = [i.fd for i in fdinfo.read_fds(t.pid)]
    pm = os.open(f"/proc/{t.pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    with Injector(t.pid) as inj:
        area = inj.check(uapi.SYS_mmap, 0, 16 * PAGE, uapi.PROT_READ | uapi.PROT_WRITE,
                         uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS, -1, 0)
        inj.check(uapi.SYS_clock_gettime, 1, area + 2 * PAGE)  # populated before tracking
        fd = uffd.create_in_target(inj, t.pid, uffd.TRACK_FEATURES)
        try:
            # the target keeps no userfaultfd of its own: its fd table is unchanged
            assert [i.fd for i in fdinfo.read_fds(t.pid)] == fds_before
            uffd.register(fd, area, 16 * PAGE, uapi.UFFDIO_REGISTER_MODE_WP)
            # nothing is write-protected yet: the first scan reports the whole range
            # (holes too) and arms it
            first = uffd.written_runs(pm, area, area + 16 * PAGE)
            assert first == [(area, area + 16 * PAGE)]
            assert uffd.written_runs(pm, area, area + 16 * PAGE) == []
            # the kernel writes for the task (clock_gettime into its memory) ...
            inj.check(uapi.SYS_clock_gettime, 1, area + 5 * PAGE + 100)
            inj.check(uapi.SYS_clock_gettime, 1, area + 2 * PAGE)
            # ... and a never-populated page written for the first time is seen too
            inj.check(uapi.SYS_clock_gettime, 1, area + 15 * PAGE)
            runs = uffd.written_runs(pm, area, area + 16 * PAGE)
            assert runs == [(area + 2 * PAGE, area + 3 * PAGE),
                            (area + 5 * PAGE, area + 6 * PAGE),
                            (area + 15 * PAGE, area + 16 * PAGE)]
            assert uffd.written_runs(pm, area, area + 16 * PAGE) == []
            # a range with an unregistered VMA is refused as a whole
            other = inj.check(uapi.SYS_mmap, 0, PAGE, uapi.PROT_READ | uapi.PROT_WRITE,
                              uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS, -1, 0)
            with pytest.raises(PermissionError):
                uffd.written_runs(pm, other, other + PAGE)
            inj.check(uapi.SYS_munmap, other, PAGE)
        finally:
            os.close(fd)
            os.close(pm)
        inj.check(uapi.SYS_munmap, area, 16 * PAGE)
    ptrace.detach(t.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.result() == ["-1", str(errno.EINTR), "1"]


def test_tracking_ends_with_the_last_fd(spawn) -> None:
    """Closing our copy unregisters: the VMA loses its uffd-wp flag ("uw" in VmFlags)."""
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)  # a SIGUSR1 before pause() would leave it waiting
    ptrace.seize(t.pid)
    ptrace.freeze(t.pid, 10)
    with Injector(t.pid) as inj:
        area = inj.check(uapi.SYS_mmap, 0, 4 * PAGE, uapi.PROT_READ | uapi.PROT_WRITE,
                         uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS, -1, 0)
        fd = uffd.create_in_target(inj, t.pid, uffd.TRACK_FEATURES)
        uffd.register(fd, area, 4 * PAGE, uapi.UFFDIO_REGISTER_MODE_WP)
        assert "uw" in _vmflags(t.pid, area)
        os.close(fd)
        assert "uw" not in _vmflags(t.pid, area)
        assert _uffd_fds(t.pid) == []
    ptrace.detach(t.pid)


def _vmflags(pid: int, addr: int) -> set[str]:
    from engine.proc import maps

    smaps = maps.read_text(pid, "smaps")
    return next(set(vf.decode().split()) for (s, e, *_), vf in
                zip(maps.entries(smaps), maps.vmflags(smaps)) if int(s, 16) <= addr < int(e, 16))


def test_copy_and_zeropage_fill_missing_pages() -> None:
    """Lazy-restore primitives on our own memory (no fault is ever taken)."""
    fd = ksys.userfaultfd(os.O_CLOEXEC | os.O_NONBLOCK)
    area = ksys.mmap(0, 4 * PAGE, uapi.PROT_READ | uapi.PROT_WRITE,
                     uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS)
    src = ctypes.create_string_buffer(b"lazy page", 2 * PAGE)
    try:
        feats, _ = uffd.api(fd, 0)
        ioctls = uffd.register(fd, area, 4 * PAGE, uapi.UFFDIO_REGISTER_MODE_MISSING)
        assert ioctls  # COPY, ZEROPAGE, WAKE... are offered for this range
        assert uffd.copy(fd, area, ctypes.addressof(src), 2 * PAGE) == 2 * PAGE
        assert uffd.zeropage(fd, area + 2 * PAGE, PAGE) == PAGE
        with pytest.raises(FileExistsError):
            uffd.copy(fd, area, ctypes.addressof(src), PAGE)  # already filled
        assert ctypes.string_at(area, 9) == b"lazy page"
        assert ctypes.string_at(area + 2 * PAGE, 8) == bytes(8)
        assert uffd.read_events(fd) == []
        uffd.wake(fd, area, 4 * PAGE)
        uffd.unregister(fd, area, 4 * PAGE)
    finally:
        ksys.munmap(area, 4 * PAGE)
        os.close(fd)
    assert feats & uapi.UFFD_FEATURE_WP_ASYNC  # granted list includes what exists


def test_user_mode_uffd_still_sees_kernel_writes(spawn) -> None:
    """What a target in a user namespace can create (UFFD_USER_MODE_ONLY) is enough for
    write tracking: async WP faults are resolved before the user-mode-only check, so a
    write done by the kernel for the task (here clock_gettime) is tracked too."""
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)  # a SIGUSR1 before pause() would leave it waiting
    ptrace.seize(t.pid)
    ptrace.freeze(t.pid, 10)
    pm = os.open(f"/proc/{t.pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with Injector(t.pid) as inj:
            area = inj.check(uapi.SYS_mmap, 0, 4 * PAGE, uapi.PROT_READ | uapi.PROT_WRITE,
                             uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS, -1, 0)
            fd = uffd.create_in_target(inj, t.pid, uffd.TRACK_FEATURES, user_mode=True)
            try:
                uffd.register(fd, area, 4 * PAGE, uapi.UFFDIO_REGISTER_MODE_WP)
                uffd.written_runs(pm, area, area + 4 * PAGE)
                assert inj.check(uapi.SYS_clock_gettime, 1, area + PAGE) == 0
                assert uffd.written_runs(pm, area, area + 4 * PAGE) == [
                    (area + PAGE, area + 2 * PAGE)]
            finally:
                os.close(fd)
            inj.check(uapi.SYS_munmap, area, 4 * PAGE)
    finally:
        os.close(pm)
    ptrace.detach(t.pid)


def test_in_a_user_namespace_only_user_mode_is_granted(spawn) -> None:
    """DESIGN.md section 7, probed: a task inside a user namespace gets EPERM for a full
    userfaultfd and succeeds with UFFD_USER_MODE_ONLY (injected, with its credentials)."""
    with open("/proc/sys/vm/unprivileged_userfaultfd", encoding="ascii") as f:
        unprivileged_allowed = f.read().strip() == "1"
    t = spawn("userns")
    t.wait_in_syscall(uapi.SYS_pause)
    assert os.readlink(f"/proc/{t.pid}/ns/user") != os.readlink("/proc/self/ns/user")
    ptrace.seize(t.pid)
    ptrace.freeze(t.pid, 10)
    with Injector(t.pid) as inj:
        if not unprivileged_allowed:
            with pytest.raises(PermissionError):
                uffd.create_in_target(inj, t.pid, uffd.TRACK_FEATURES)
        fd = uffd.create_in_target(inj, t.pid, uffd.TRACK_FEATURES, user_mode=True)
        os.close(fd)
        assert _uffd_fds(t.pid) == []
    ptrace.detach(t.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.result() == ["-1", str(errno.EINTR), "1"]
