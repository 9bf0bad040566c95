"""Raw syscall wrappers (engine/kernel/sys.py): errors, PAGEMAP_SCAN, process_vm_*,
pidfds, clone3 with set_tid."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import time

import pytest

from engine.kernel import ptrace, uapi
from engine.kernel import sys as ksys
from engine.kernel.structs import PageRegion, PmScanArg
from engine.proc import pagemap as procpagemap
from engine.proc import tasks
from tests.engine.target_support import clone_args_for, reap

PAGE = uapi.PAGE_SIZE


def test_syscall_result_and_errno() -> None:
    assert ksys.syscall(uapi.SYS_getpid) == os.getpid()
    with pytest.raises(OSError) as info:
        ksys.syscall(uapi.SYS_close, 999999)
    assert info.value.errno == errno.EBADF
    assert "close" in str(info.value)
    with pytest.raises(TypeError):
        ksys.syscall(uapi.SYS_getpid, "not a word")


class _Area:
    """A private anonymous mapping of ours with some pages written."""

    def __init__(self, pages: int) -> None:
        self.size = pages * PAGE
        self.addr = ksys.mmap(0, self.size, uapi.PROT_READ | uapi.PROT_WRITE,
                              uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS)

    def touch(self, page: int, value: int = 1) -> None:
        ctypes.memset(self.addr + page * PAGE, value, PAGE)

    def close(self) -> None:
        ksys.munmap(self.addr, self.size)


def test_pagemap_scan_finds_written_pages() -> None:
    area = _Area(64)
    fd = procpagemap.open_pagemap(os.getpid())
    try:
        for p in (1, 2, 3, 10, 63):
            area.touch(p)
        runs = ksys.pagemap_scan(fd, area.addr, area.addr + area.size,
                                 category_anyof_mask=uapi.PAGE_IS_PRESENT,
                                 return_mask=uapi.PAGE_IS_PRESENT)
        a = area.addr
        expect = [(a + PAGE, a + 4 * PAGE), (a + 10 * PAGE, a + 11 * PAGE),
                  (a + 63 * PAGE, a + 64 * PAGE)]
        assert [(s, e) for s, e, _ in runs] == expect
        assert all(c == uapi.PAGE_IS_PRESENT for _, _, c in runs)
        # the /proc/PID/pagemap walk (the dump's fallback) finds the same private pages
        fallback = procpagemap.private_runs(fd, [(area.addr, area.addr + area.size)])
        assert [(s, e) for s, e, _ in fallback] == [(s, e) for s, e, _ in runs]
        # a tiny output vector forces the walk_end loop; max_pages bounds the answer
        assert ksys.pagemap_scan(fd, area.addr, area.addr + area.size, vec_len=1,
                                 category_anyof_mask=uapi.PAGE_IS_PRESENT,
                                 return_mask=uapi.PAGE_IS_PRESENT) == runs
        limited = ksys.pagemap_scan(fd, area.addr, area.addr + area.size, max_pages=2,
                                    category_anyof_mask=uapi.PAGE_IS_PRESENT,
                                    return_mask=uapi.PAGE_IS_PRESENT)
        assert limited == [(a + PAGE, a + 3 * PAGE, uapi.PAGE_IS_PRESENT)]
    finally:
        os.close(fd)
        area.close()


def test_pagemap_scan_on_another_process(spawn) -> None:
    t = spawn("state", "/dev/null")
    gd = int(t.header.split()[1], 16)
    fd = procpagemap.open_pagemap(t.pid)
    try:
        runs = ksys.pagemap_scan(fd, gd, gd + 4 * PAGE,
                                 category_anyof_mask=uapi.PAGE_IS_PRESENT,
                                 return_mask=uapi.PAGE_IS_PRESENT | uapi.PAGE_IS_FILE)
    finally:
        os.close(fd)
    # the state target wrote only the top page of its growsdown area
    assert runs == [(gd + 3 * PAGE, gd + 4 * PAGE, uapi.PAGE_IS_PRESENT)]


def test_process_vm_read_write(spawn) -> None:
    t = spawn("state", "/dev/null")
    gd = int(t.header.split()[1], 16)
    buf = mmap.mmap(-1, PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    try:
        n = ksys.process_vm_readv(t.pid, [(base, 16)], [(gd + 3 * PAGE, 16)])
        assert n == 16 and buf[:16] == b"\x01" + bytes(15)
        # more iovecs than UIO_MAXIOV: split into several calls
        ranges = [(gd + 3 * PAGE + i, 1) for i in range(2500)]
        big = mmap.mmap(-1, 4 * PAGE)
        bbase = ctypes.addressof(ctypes.c_char.from_buffer(big))
        try:
            assert ksys.process_vm_readv(t.pid, [(bbase, 2500)], ranges) == 2500
            assert big[0] == 1 and big[1:2500] == bytes(2499)
            # and many local ranges (every other byte) against one remote range
            big[:2 * 2500] = b"\xff" * (2 * 2500)
            local = [(bbase + 2 * i, 1) for i in range(2500)]
            assert ksys.process_vm_readv(t.pid, local, [(gd + 3 * PAGE, 2500)]) == 2500
            assert big[0:2] == b"\x01\xff" and big[2:2 * 2500:2] == bytes(2499)
            buf[:4] = b"ABCD"
            assert ksys.process_vm_writev(t.pid, [(base, 4)], [(gd + 3 * PAGE + 8, 4)]) == 4
            assert ksys.process_vm_readv(t.pid, [(bbase, 12)], [(gd + 3 * PAGE, 12)]) == 12
            assert big[8:12] == b"ABCD"
        finally:
            del bbase
            big.close()
        with pytest.raises(ValueError):
            ksys.process_vm_readv(t.pid, [(base, 8)], [(gd, 16)])
    finally:
        del base
        buf.close()


def test_pidfd_getfd_copies_a_pipe_end(spawn) -> None:
    t = spawn("state", "/dev/null")
    pidfd = ksys.pidfd_open(t.pid)
    try:
        wfd = ksys.pidfd_getfd(pidfd, 9)  # the target's pipe write end (fd 9)
        rfd = ksys.pidfd_getfd(pidfd, 8)
        try:
            os.write(wfd, b"via pidfd")
            assert os.read(rfd, 100) == b"via pidfd"
        finally:
            os.close(wfd)
            os.close(rfd)
        with pytest.raises(OSError) as info:
            ksys.pidfd_getfd(pidfd, 55)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(pidfd)


def test_clone3_with_set_tid() -> None:
    want = tasks.free_pid_after(500)
    pid = ksys.clone3(clone_args_for(want))
    if pid == 0:
        os._exit(7)  # child: leave at once
    try:
        assert pid == want
    finally:
        deadline = time.monotonic() + 10
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            assert time.monotonic() < deadline
            time.sleep(0.005)
    assert os.waitstatus_to_exitcode(status) == 7
    # the same pid again while it is taken fails with EEXIST
    holder = ksys.clone3(clone_args_for(want))
    if holder == 0:
        time.sleep(30)
        os._exit(0)
    try:
        with pytest.raises(FileExistsError):
            ksys.clone3(clone_args_for(want))
    finally:
        reap(holder)


def test_userfaultfd_and_memfd_local() -> None:
    fd = ksys.userfaultfd(os.O_CLOEXEC | os.O_NONBLOCK)
    os.close(fd)
    mfd = ksys.memfd_create("ktest", uapi.MFD_CLOEXEC)
    try:
        assert os.readlink(f"/proc/self/fd/{mfd}").startswith("/memfd:ktest")
    finally:
        os.close(mfd)


def test_set_child_subreaper_in_child() -> None:
    """prctl through the wrapper: the flag is visible with PR_GET_CHILD_SUBREAPER."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ksys.set_child_subreaper()
            val = ctypes.c_int()
            ksys.prctl(uapi.PR_GET_CHILD_SUBREAPER, val)
            os.write(w, bytes([val.value]))
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"\x01"
    finally:
        os.close(r)
        reap(pid)


def test_ptrace_cross_check_regs_via_peekuser(spawn) -> None:
    """GETREGS agrees with PTRACE_PEEKUSER of orig_rax (offset 15 * 8)."""
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)
    ptrace.seize(t.pid)
    ptrace.freeze(t.pid, 10)
    word = ctypes.c_ulong()
    ptrace.ptrace(uapi.PTRACE_PEEKUSER, t.pid, 15 * 8, word)
    assert word.value == ptrace.get_regs(t.pid).orig_rax == uapi.SYS_pause
    ptrace.detach(t.pid)


def test_kcmp_finds_a_shared_open_file_description(spawn, tmp_path) -> None:
    t = spawn("state", str(tmp_path / "f"))
    # fd 3 (from open) and fd 7 (its dup2) share one description; the pipe ends do not
    assert ksys.kcmp(t.pid, t.pid, uapi.KCMP_FILE, 3, 7) == 0
    assert ksys.kcmp(t.pid, t.pid, uapi.KCMP_FILE, 8, 9) != 0
    assert ksys.kcmp(t.pid, os.getpid(), uapi.KCMP_VM) != 0
    assert ksys.kcmp(t.pid, t.pid, uapi.KCMP_VM) == 0


def test_namespaces_mount_and_setns_in_child(tmp_path) -> None:
    """unshare, mount/umount2 and setns through the wrappers, in a throwaway child."""
    import socket

    def body() -> str:
        orig_uts = os.open("/proc/self/ns/uts", os.O_RDONLY)
        before = socket.gethostname()
        ksys.unshare(uapi.CLONE_NEWUTS | uapi.CLONE_NEWNS)
        socket.sethostname("kernel-test-uts")
        if socket.gethostname() != "kernel-test-uts":
            return "sethostname in the new uts ns did not stick"
        ksys.mount(None, "/", None, uapi.MS_REC | uapi.MS_PRIVATE)
        ksys.mount("tmpfs", str(tmp_path), "tmpfs", 0, "size=1m")
        with open("/proc/self/mounts", encoding="utf-8") as f:
            if f"tmpfs {tmp_path} tmpfs" not in f.read():
                return "tmpfs mount not listed"
        ksys.umount2(str(tmp_path), uapi.MNT_DETACH)
        ksys.setns(orig_uts, uapi.CLONE_NEWUTS)
        if socket.gethostname() != before:
            return "setns did not bring back the original uts namespace"
        return "ok"

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report one line, never return into pytest
        msg = "crash"
        try:
            msg = body()
        except OSError as exc:
            msg = f"OSError: {exc}"
        finally:
            os.write(w, msg.encode())
            os._exit(0)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            out = f.read().decode()
    finally:
        reap(pid)
    assert out == "ok"
    # the parent never saw the mount
    with open("/proc/self/mounts", encoding="utf-8") as f:
        assert str(tmp_path) not in f.read()


def test_pagemap_scan_never_reports_a_range_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that fills the vector but leaves walk_end behind what it returned (seen on
    6.18 after an internal restart) must not make the wrapper report that range again."""
    page = uapi.PAGE_SIZE
    present = [(k * 2 * page, (k * 2 + 1) * page) for k in range(6)]  # every other page
    calls: list[int] = []

    def fake_ioctl(fd: int, request: int, arg: PmScanArg) -> int:
        calls.append(arg.start)
        vec = (PageRegion * arg.vec_len).from_address(arg.vec)
        todo = [r for r in present if r[0] >= arg.start][: arg.vec_len]
        for i, (s, e) in enumerate(todo):
            vec[i].start, vec[i].end, vec[i].categories = s, e, uapi.PAGE_IS_PRESENT
        arg.walk_end = arg.start + page if len(todo) == arg.vec_len else arg.end  # stale
        return len(todo)

    monkeypatch.setattr(ksys, "ioctl", fake_ioctl)
    got = ksys.pagemap_scan(-1, 0, 12 * page, category_mask=uapi.PAGE_IS_PRESENT,
                            return_mask=uapi.PAGE_IS_PRESENT, vec_len=2)
    assert [(s, e) for s, e, _ in got] == present
    assert calls == sorted(set(calls))  # each call starts past the previous one


def test_cpu_itimer_slack_survives_a_tick_charged_in_between(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The slack is the largest of its samples: one that a 4 ms tick of CPU time hit
    between setitimer and getitimer (it shows no slack at all) does not make it 1 ms."""
    import signal

    shown = iter([1000.0, 1000.004, 1000.004])  # the first one hit by the tick
    monkeypatch.setattr(signal, "setitimer", lambda *_a: (0.0, 0.0))
    monkeypatch.setattr(signal, "getitimer", lambda _w: (next(shown), 0.0))
    ksys.cpu_itimer_slack_us.cache_clear()
    try:
        assert ksys.cpu_itimer_slack_us() == 4000
    finally:
        ksys.cpu_itimer_slack_us.cache_clear()
