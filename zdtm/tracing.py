"""A short ptrace visit to a stopped thread: read its rseq configuration, then let it go.

The kernel writes a thread's rseq area (cpu_id_start, cpu_id, node_id, mm_cid) whenever the
thread returns to user space on some CPU, so those fields legitimately differ between the
snapshot before dump and after restore. To mask them the harness must know where each thread's
area is. Only ptrace tells that (PTRACE_GET_RSEQ_CONFIGURATION), and ptrace requests need a
ptrace-stopped tracee, hence: SEIZE, INTERRUPT, wait for the trap, read, DETACH.

A thread that was SIGSTOPped stays in group-stop through all this: on DETACH the kernel sees
the group is stopped (SIGNAL_STOP_STOPPED) and puts the thread back into group-stop.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from dataclasses import dataclass

_SYS_PTRACE = 101  # x86_64
_SYS_KCMP = 312
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F
_WALL = 0x40000000
KCMP_FILE = 0

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _RseqConfiguration(ctypes.Structure):
    _fields_ = [
        ("rseq_abi_pointer", ctypes.c_uint64),
        ("rseq_abi_size", ctypes.c_uint32),
        ("signature", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class RseqConfig:
    """A thread's registered rseq area (pointer 0: none registered)."""

    pointer: int
    size: int
    signature: int

    def describe(self) -> str:
        """Human-readable form for check messages."""
        if not self.pointer:
            return "not registered"
        return f"ptr {self.pointer:#x}, len {self.size}, sig {self.signature:#x}"


class TraceError(OSError):
    """A ptrace request on a stopped thread failed."""


def _ptrace(request: int, tid: int, addr: int = 0, data: int = 0) -> int:
    res = _syscall(
        ctypes.c_long(_SYS_PTRACE), ctypes.c_long(request), ctypes.c_long(tid),
        ctypes.c_void_p(addr), ctypes.c_void_p(data),
    )
    if res < 0:
        err = ctypes.get_errno()
        raise TraceError(err, f"ptrace({request:#x}, {tid}): {os.strerror(err)}")
    return res


def _wait_trap(tid: int, deadline: float) -> None:
    """Wait (bounded) until the seized thread reports its ptrace stop."""
    while True:
        try:
            got, status = os.waitpid(tid, os.WNOHANG | _WALL)
        except ChildProcessError as e:
            raise TraceError(errno.ECHILD, f"thread {tid} vanished while seized") from e
        if got == tid:
            if os.WIFSTOPPED(status):
                return
            raise TraceError(errno.ESRCH, f"thread {tid} exited while seized")
        if time.monotonic() > deadline:
            raise TraceError(errno.ETIMEDOUT, f"thread {tid} did not stop for ptrace")
        time.sleep(0.0005)


def read_rseq(tid: int, timeout: float = 5.0) -> RseqConfig:
    """Read the rseq configuration of a (stopped) thread with a short ptrace seize."""
    _ptrace(PTRACE_SEIZE, tid)
    try:
        _ptrace(PTRACE_INTERRUPT, tid)
        _wait_trap(tid, time.monotonic() + timeout)
        conf = _RseqConfiguration()
        _ptrace(
            PTRACE_GET_RSEQ_CONFIGURATION, tid, ctypes.sizeof(conf), ctypes.addressof(conf),
        )
        return RseqConfig(conf.rseq_abi_pointer, conf.rseq_abi_size, conf.signature)
    finally:
        try:
            _ptrace(PTRACE_DETACH, tid)
        except TraceError as e:
            if e.errno != errno.ESRCH:  # gone: nothing left to detach from
                raise


def kcmp_file(pid1: int, fd1: int, pid2: int, fd2: int) -> int:
    """kcmp(KCMP_FILE): 0 when both fds are the same open file description, else 1/2 (order)."""
    res = _syscall(
        ctypes.c_long(_SYS_KCMP), ctypes.c_long(pid1), ctypes.c_long(pid2),
        ctypes.c_long(KCMP_FILE), ctypes.c_ulong(fd1), ctypes.c_ulong(fd2),
    )
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"kcmp({pid1}:{fd1}, {pid2}:{fd2}): {os.strerror(err)}")
    return res
