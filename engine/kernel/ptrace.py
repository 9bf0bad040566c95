"""ptrace(2) requests the engine needs, over the raw syscall (never glibc's wrapper).

All requests for a tracee must come from the thread that seized it. Waits always have a
deadline: wait_stop() raises TimeoutError instead of blocking forever.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import dataclass

from engine.kernel import uapi
from engine.kernel.structs import Iovec, PeekSiginfoArgs, RseqConfig, SigInfo, UserRegs
from engine.kernel.sys import syscall, syscall4

# Large enough for every xstate layout x86 has (AMX tiles included); the kernel tells
# the real size through iov_len.
XSTATE_BUF_SIZE = 16384
_SIGSET_FULL = (1 << 64) - 1


class TaskExited(ProcessLookupError):
    """The task exited (or was killed) while we waited for it to stop."""

    def __init__(self, tid: int, status: int) -> None:
        if os.WIFSIGNALED(status):
            how = f"killed by signal {os.WTERMSIG(status)}"
        else:
            how = f"exited with status {os.WEXITSTATUS(status)}"
        super().__init__(f"task {tid} {how}")
        self.tid = tid
        self.status = status


def ptrace(request: int, tid: int, addr: object = 0, data: object = 0) -> int:
    """Raw ptrace(2) (ints or ctypes objects, passed by address); raises OSError."""
    return syscall(uapi.SYS_ptrace, request, tid, addr, data)


_SYS_PTRACE = uapi.SYS_ptrace


def _pt(request: int, tid: int, addr: int, data: int) -> int:
    """ptrace(2) with plain int arguments: the fast path for the frequent requests."""
    return syscall4(_SYS_PTRACE, request, tid, addr, data)


def seize(tid: int, options: int = 0) -> None:
    """PTRACE_SEIZE: attach without stopping the task (stop it with interrupt())."""
    ptrace(uapi.PTRACE_SEIZE, tid, 0, options)


def set_options(tid: int, options: int) -> None:
    """PTRACE_SETOPTIONS."""
    ptrace(uapi.PTRACE_SETOPTIONS, tid, 0, options)


def interrupt(tid: int) -> None:
    """PTRACE_INTERRUPT: make a seized task enter a PTRACE_EVENT_STOP."""
    ptrace(uapi.PTRACE_INTERRUPT, tid)


def cont(tid: int, sig: int = 0) -> None:
    """PTRACE_CONT, delivering ``sig`` when resuming from a signal-delivery-stop."""
    _pt(uapi.PTRACE_CONT, tid, 0, sig)


def singlestep(tid: int, sig: int = 0) -> None:
    """PTRACE_SINGLESTEP."""
    _pt(uapi.PTRACE_SINGLESTEP, tid, 0, sig)


def listen(tid: int) -> None:
    """PTRACE_LISTEN: stay in group-stop but let SIGCONT/new events wake the tracer."""
    ptrace(uapi.PTRACE_LISTEN, tid)


def detach(tid: int, sig: int = 0) -> None:
    """PTRACE_DETACH. ``sig`` is delivered only when detaching from a signal-delivery-stop."""
    ptrace(uapi.PTRACE_DETACH, tid, 0, sig)


def get_event_msg(tid: int) -> int:
    """PTRACE_GETEVENTMSG (e.g. the new pid after PTRACE_EVENT_FORK)."""
    msg = ctypes.c_ulong()
    ptrace(uapi.PTRACE_GETEVENTMSG, tid, 0, msg)
    return msg.value


# ---------------------------------------------------------------------------------------
# Waiting
# ---------------------------------------------------------------------------------------

# Injected syscalls stop again within microseconds: spin on WNOHANG briefly first. After
# that, sleep in sigtimedwait() on SIGCHLD (a tracee's stop notifies its tracer with it),
# blocked only while waiting, so a stop wakes us at once. Each sleep is bounded by a slice
# in case the SIGCHLD went to another of our threads that does not block it.
_SPIN_POLLS = 200
_WAIT_SLICE = 0.01


def wait_stop(tid: int, timeout: float) -> int:
    """Wait (waitpid __WALL) until ``tid`` reports a ptrace stop; return the raw status.

    Raises TaskExited if it exited instead, TimeoutError after ``timeout`` seconds.
    """
    flags = uapi.WALL | uapi.WNOHANG
    for _ in range(_SPIN_POLLS):
        pid, status = os.waitpid(tid, flags)
        if pid:
            return _check_status(tid, status)
    deadline = time.monotonic() + timeout
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        while True:
            pid, status = os.waitpid(tid, flags)
            if pid:
                return _check_status(tid, status)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"task {tid} did not stop within {timeout:.1f}s")
            signal.sigtimedwait({signal.SIGCHLD}, min(left, _WAIT_SLICE))
    finally:
        if signal.SIGCHLD not in old:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


def _check_status(tid: int, status: int) -> int:
    if os.WIFSTOPPED(status):
        return status
    raise TaskExited(tid, status)


def stop_signal(status: int) -> int:
    """The signal of a stop status (SIGTRAP for interrupt/event stops)."""
    return os.WSTOPSIG(status)


def stop_event(status: int) -> int:
    """The PTRACE_EVENT_* of a stop status, 0 for a signal-delivery-stop."""
    return (status >> 16) & 0xFFFF


@dataclass
class Frozen:
    """How a task came to rest in a ptrace stop (from freeze())."""

    tid: int
    #: the stop signal when the task was (or went) into group-stop: SIGSTOP/SIGTSTP/..., else 0
    group_stop_sig: int
    #: signals we passed on (delivered to the task) while waiting for the stop
    delivered: list[int]


def freeze(tid: int, timeout: float) -> Frozen:
    """INTERRUPT a seized task and wait until it sits in a PTRACE_EVENT_STOP.

    A signal-delivery-stop reported first is a signal the task was about to take: it is
    passed on (the task handles it as it would have untraced) and we wait again, so no
    signal is lost. A group-stop (the task was or becomes stopped) is reported in
    ``group_stop_sig`` so the caller can leave the task stopped when it detaches.
    """
    interrupt(tid)
    deadline = time.monotonic() + timeout
    delivered: list[int] = []
    while True:
        status = wait_stop(tid, max(deadline - time.monotonic(), 0.0))
        sig = stop_signal(status)
        if stop_event(status) == uapi.PTRACE_EVENT_STOP:
            group = sig if sig in (uapi.SIGSTOP, uapi.SIGTSTP, uapi.SIGTTIN, uapi.SIGTTOU) else 0
            return Frozen(tid, group, delivered)
        if stop_event(status):
            # Other events need options we did not set; resume and keep waiting.
            cont(tid, 0)
            continue
        # Pass the signal on; our INTERRUPT is still pending and traps right after it
        # (for a stop signal, the group-stop it starts is reported as the EVENT_STOP).
        delivered.append(sig)
        cont(tid, sig)


# ---------------------------------------------------------------------------------------
# Registers and state
# ---------------------------------------------------------------------------------------

def get_regs(tid: int) -> UserRegs:
    """PTRACE_GETREGS."""
    regs = UserRegs()
    _pt(uapi.PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    return regs


def set_regs(tid: int, regs: UserRegs) -> None:
    """PTRACE_SETREGS."""
    _pt(uapi.PTRACE_SETREGS, tid, 0, ctypes.addressof(regs))


def get_regset(tid: int, note: int, size: int) -> bytes:
    """PTRACE_GETREGSET for ELF note type ``note``; returns the bytes the kernel filled."""
    buf = ctypes.create_string_buffer(size)
    iov = Iovec(ctypes.addressof(buf), size)
    ptrace(uapi.PTRACE_GETREGSET, tid, note, iov)
    return buf.raw[: iov.iov_len]


def set_regset(tid: int, note: int, data: bytes) -> None:
    """PTRACE_SETREGSET for ELF note type ``note``."""
    buf = ctypes.create_string_buffer(data, len(data))
    iov = Iovec(ctypes.addressof(buf), len(data))
    ptrace(uapi.PTRACE_SETREGSET, tid, note, iov)


def get_xstate(tid: int) -> bytes:
    """The task's full extended FPU state (NT_X86_XSTATE, XSAVE layout)."""
    return get_regset(tid, uapi.NT_X86_XSTATE, XSTATE_BUF_SIZE)


def set_xstate(tid: int, data: bytes) -> None:
    """Write back an XSAVE image previously read with get_xstate()."""
    set_regset(tid, uapi.NT_X86_XSTATE, data)


def get_sigmask(tid: int) -> int:
    """Blocked signals as a 64-bit mask (bit n-1 = signal n), PTRACE_GETSIGMASK."""
    mask = ctypes.c_uint64()
    ptrace(uapi.PTRACE_GETSIGMASK, tid, uapi.SIGSET_SIZE, mask)
    return mask.value


def set_sigmask(tid: int, mask: int) -> None:
    """Set the blocked mask (the kernel silently keeps SIGKILL/SIGSTOP unblocked)."""
    value = ctypes.c_uint64(mask & _SIGSET_FULL)
    ptrace(uapi.PTRACE_SETSIGMASK, tid, uapi.SIGSET_SIZE, value)


def peek_siginfo(tid: int, shared: bool) -> list[bytes]:
    """Every pending signal of the thread (or, shared=True, of the process) as 128-byte
    siginfo records, oldest first, without dequeuing them (PTRACE_PEEKSIGINFO)."""
    batch = 32
    out: list[bytes] = []
    buf = (SigInfo * batch)()
    args = PeekSiginfoArgs()
    args.flags = uapi.PTRACE_PEEKSIGINFO_SHARED if shared else 0
    args.nr = batch
    while True:
        args.off = len(out)
        n = ptrace(uapi.PTRACE_PEEKSIGINFO, tid, args, buf)
        raw = bytes(buf)
        out.extend(raw[i * uapi.SIGINFO_SIZE:(i + 1) * uapi.SIGINFO_SIZE] for i in range(n))
        if n < batch:
            return out


def get_rseq_config(tid: int) -> RseqConfig:
    """PTRACE_GET_RSEQ_CONFIGURATION: the rseq area the thread registered (pointer 0 if none)."""
    conf = RseqConfig()
    ptrace(uapi.PTRACE_GET_RSEQ_CONFIGURATION, tid, ctypes.sizeof(RseqConfig), conf)
    return conf
