"""A short ptrace visit to a stopped thread: read what only ptrace or the task itself can
tell (rseq configuration; dumpable, child subreaper and parent-death signal through
injected prctl calls; membarrier private registrations through injected barriers, the
global one through MEMBARRIER_CMD_GET_REGISTRATIONS where the kernel has it), then let it go.

The kernel writes a thread's rseq area (cpu_id_start, cpu_id, node_id, mm_cid) whenever the
thread returns to user space on some CPU, so those fields legitimately differ between the
snapshot before dump and after restore. To mask them the harness must know where each thread's
area is. Only ptrace tells that (PTRACE_GET_RSEQ_CONFIGURATION), and ptrace requests need a
ptrace-stopped tracee, hence: SEIZE, INTERRUPT, wait for the trap, read, DETACH.

A thread that was SIGSTOPped stays in group-stop through all this: on DETACH the kernel sees
the group is stopped (SIGNAL_STOP_STOPPED) and puts the thread back into group-stop.

In-task reads run one syscall at a time at a ``syscall`` instruction of the task's vdso,
with every signal blocked and orig_rax cleared (no restart of an interrupted syscall on the
way), then put every register and the signal mask back. Outputs land below the stack's red
zone; the bytes there are written back afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Self

from zdtm.plumbing import libc

_SYS_PTRACE = 101  # x86_64
_SYS_PRCTL = 157
_SYS_KCMP = 312
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F
PTRACE_O_TRACESYSGOOD = 1
_WALL = 0x40000000
KCMP_FILE = 0
PR_GET_PDEATHSIG = 2
PR_GET_DUMPABLE = 3
PR_GET_CHILD_SUBREAPER = 37
_SYS_MEMBARRIER = 324
# the expedited barrier of each private registration kind: 0 when the task's mm registered
# for it, EPERM when not (kernel/sched/membarrier.c membarrier_private_expedited), EINVAL
# when this kernel lacks it; the barrier itself only IPIs CPUs running the (stopped) task
MEMBARRIER_PROBES = (("membarrier private expedited", 1 << 3),
                     ("membarrier private expedited sync_core", 1 << 5),
                     ("membarrier private expedited rseq", 1 << 7))
# GET_REGISTRATIONS (6.6+) returns the mm's REGISTER_* bits; only it shows the global one
MEMBARRIER_GET_REGISTRATIONS = 1 << 9
MEMBARRIER_REGISTER_GLOBAL_EXPEDITED = 1 << 2

_syscall = libc.syscall


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


class UserRegs(ctypes.Structure):
    """struct user_regs_struct (x86_64)."""

    _fields_ = [(name, ctypes.c_ulonglong) for name in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
        "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
        "gs_base", "ds", "es", "fs", "gs")]


@dataclass
class Visit:
    """What one visit of a thread read; ``in_task`` is empty when nothing was injected."""

    rseq: RseqConfig
    in_task: dict[str, str]


def _ptrace(request: int, tid: int, addr: int = 0, data: int = 0) -> int:
    res = _syscall(
        ctypes.c_long(_SYS_PTRACE), ctypes.c_long(request), ctypes.c_long(tid),
        ctypes.c_void_p(addr), ctypes.c_void_p(data),
    )
    if res < 0:
        err = ctypes.get_errno()
        raise TraceError(err, f"ptrace({request:#x}, {tid}): {os.strerror(err)}")
    return int(res)


def _wait_trap(tid: int, deadline: float) -> None:
    """Wait (bounded) until the seized thread reports its ptrace stop."""
    _wait_status(tid, deadline)


def _wait_status(tid: int, deadline: float) -> int:
    """The wait status of the seized thread's next ptrace stop (bounded)."""
    while True:
        try:
            got, status = os.waitpid(tid, os.WNOHANG | _WALL)
        except ChildProcessError as e:
            raise TraceError(errno.ECHILD, f"thread {tid} vanished while seized") from e
        if got == tid:
            if os.WIFSTOPPED(status):
                return status
            raise TraceError(errno.ESRCH, f"thread {tid} exited while seized")
        if time.monotonic() > deadline:
            raise TraceError(errno.ETIMEDOUT, f"thread {tid} did not stop for ptrace")
        time.sleep(0.0005)


def visit(tid: int, *, in_task: bool, timeout: float = 5.0) -> Visit:
    """One ptrace visit of a stopped thread: its rseq configuration, and with ``in_task``
    the per-task state only the task can ask for (PR_GET_DUMPABLE, PR_GET_CHILD_SUBREAPER,
    PR_GET_PDEATHSIG, membarrier registrations), all in this one seize."""
    with seized(tid, timeout):
        conf = _RseqConfiguration()
        _ptrace(
            PTRACE_GET_RSEQ_CONFIGURATION, tid, ctypes.sizeof(conf), ctypes.addressof(conf),
        )
        rseq = RseqConfig(conf.rseq_abi_pointer, conf.rseq_abi_size, conf.signature)
        return Visit(rseq, _read_in_task(tid, timeout) if in_task else {})


@contextlib.contextmanager
def seized(tid: int, timeout: float = 5.0) -> Iterator[None]:
    """The (stopped) thread seized and in a ptrace-stop for the block, detached after."""
    _ptrace(PTRACE_SEIZE, tid, 0, PTRACE_O_TRACESYSGOOD)
    try:
        _ptrace(PTRACE_INTERRUPT, tid)
        _wait_trap(tid, time.monotonic() + timeout)
        yield
    finally:
        try:
            _ptrace(PTRACE_DETACH, tid)
        except TraceError as e:
            if e.errno != errno.ESRCH:  # gone: nothing left to detach from
                raise


def _read_in_task(tid: int, timeout: float) -> dict[str, str]:
    try:
        inj = Injector(tid, timeout)
    except TraceError as e:
        if e.errno != errno.ENOENT:
            raise
        return {}  # no vdso (unmapped by the task): no syscall site, nothing asked
    with inj:
        out = {"dumpable": str(inj.check(_SYS_PRCTL, PR_GET_DUMPABLE))}
        for key, option in (("child_subreaper", PR_GET_CHILD_SUBREAPER),
                            ("pdeathsig", PR_GET_PDEATHSIG)):
            inj.check(_SYS_PRCTL, option, inj.scratch)
            out[key] = str(int.from_bytes(inj.read_scratch(4), "little", signed=True))
        for key, cmd in MEMBARRIER_PROBES:
            res = inj.syscall(_SYS_MEMBARRIER, cmd, 0, 0)
            if res in (0, -errno.EPERM):
                out[key] = "yes" if res == 0 else "no"
        res = inj.syscall(_SYS_MEMBARRIER, MEMBARRIER_GET_REGISTRATIONS, 0, 0)
        if res >= 0:
            out["membarrier global expedited"] = (
                "yes" if res & MEMBARRIER_REGISTER_GLOBAL_EXPEDITED else "no")
    return out


class Injector:
    """Runs syscalls in a seized, ptrace-stopped thread; as a context manager it puts the
    registers, the signal mask and the scratch bytes back on exit."""

    SCRATCH = 16

    def __init__(self, tid: int, timeout: float = 5.0) -> None:
        """``tid`` is already seized and in a ptrace-stop."""
        self.tid = tid
        self.timeout = timeout
        self.saved = UserRegs()
        _ptrace(PTRACE_GETREGS, tid, 0, ctypes.addressof(self.saved))
        self.mask = ctypes.c_uint64()
        _ptrace(PTRACE_GETSIGMASK, tid, 8, ctypes.addressof(self.mask))
        self.site = self._syscall_site()
        # below the 128-byte red zone of whatever the thread was running
        self.scratch = (self.saved.rsp - 1024) & ~15
        self.old = self._mem(self.scratch, self.SCRATCH)

    def __enter__(self) -> Self:
        every = ctypes.c_uint64(2**64 - 1)
        _ptrace(PTRACE_SETSIGMASK, self.tid, 8, ctypes.addressof(every))
        return self

    def __exit__(self, *exc: object) -> None:
        self._mem(self.scratch, self.SCRATCH, self.old)
        _ptrace(PTRACE_SETREGS, self.tid, 0, ctypes.addressof(self.saved))
        _ptrace(PTRACE_SETSIGMASK, self.tid, 8, ctypes.addressof(self.mask))

    def _mem(self, addr: int, size: int, data: bytes | None = None) -> bytes:
        fd = os.open(f"/proc/{self.tid}/mem", os.O_RDWR | os.O_CLOEXEC)
        try:
            if data is not None:
                os.pwrite(fd, data, addr)
                return data
            return os.pread(fd, size, addr)
        finally:
            os.close(fd)

    def read_scratch(self, size: int) -> bytes:
        """What the last syscall wrote into the scratch area."""
        return self._mem(self.scratch, size)

    def write_scratch(self, data: bytes) -> None:
        """Put an argument (at most SCRATCH bytes) into the scratch area."""
        if len(data) > self.SCRATCH:
            raise ValueError(f"{len(data)} bytes do not fit the {self.SCRATCH}-byte scratch")
        self._mem(self.scratch, len(data), data)

    def _syscall_site(self) -> int:
        """Address of a ``syscall`` instruction (0f 05) in the thread's vdso."""
        with open(f"/proc/{self.tid}/maps") as f:
            for line in f:
                if line.rstrip().endswith("[vdso]"):
                    start, end = (int(x, 16) for x in line.split()[0].split("-"))
                    at = self._mem(start, end - start).find(b"\x0f\x05")
                    if at >= 0:
                        return start + at
        raise TraceError(errno.ENOENT, f"thread {self.tid}: no syscall instruction in a vdso")

    def syscall(self, nr: int, *args: int) -> int:
        """Run one syscall in the thread; its raw result (negative errno on failure)."""
        regs = UserRegs.from_buffer_copy(self.saved)
        regs.rax = nr
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(regs, name, value & (2**64 - 1))
        regs.orig_rax = 2**64 - 1  # no syscall restart on the way out of the stop
        regs.rip = self.site
        _ptrace(PTRACE_SETREGS, self.tid, 0, ctypes.addressof(regs))
        for _ in ("entry", "exit"):
            self._to_syscall_stop()
        _ptrace(PTRACE_GETREGS, self.tid, 0, ctypes.addressof(regs))
        return ctypes.c_longlong(regs.rax).value

    def check(self, nr: int, *args: int) -> int:
        """syscall(), raising OSError on failure."""
        res = self.syscall(nr, *args)
        if res < 0:
            raise OSError(-res, f"thread {self.tid}: injected syscall {nr}: "
                                f"{os.strerror(-res)}")
        return res

    def _to_syscall_stop(self) -> None:
        """Resume to the next syscall-entry or -exit stop. A thread seized in group-stop
        first reports the group-stop again; a pending SIGSTOP stops it once more: both are
        resumed past (the group stays stopped for everyone else)."""
        for _ in range(10):
            _ptrace(PTRACE_SYSCALL, self.tid)
            status = _wait_status(self.tid, time.monotonic() + self.timeout)
            if os.WSTOPSIG(status) == 0x80 | 5:  # SIGTRAP | 0x80: a syscall stop
                return
        raise TraceError(errno.EIO, f"thread {self.tid}: no syscall stop after 10 resumes")


def kcmp_file(pid1: int, fd1: int, pid2: int, fd2: int) -> int:
    """kcmp(KCMP_FILE): 0 when both fds are the same open file description, else 1/2 (order)."""
    res = _syscall(
        ctypes.c_long(_SYS_KCMP), ctypes.c_long(pid1), ctypes.c_long(pid2),
        ctypes.c_long(KCMP_FILE), ctypes.c_ulong(fd1), ctypes.c_ulong(fd2),
    )
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"kcmp({pid1}:{fd1}, {pid2}:{fd2}): {os.strerror(err)}")
    return int(res)
