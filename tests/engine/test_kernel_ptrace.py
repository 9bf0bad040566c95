"""ptrace wrappers (engine/kernel/ptrace.py) on real processes."""

from __future__ import annotations

import os
import signal
import struct
import time

import pytest

from engine.kernel import ptrace, uapi

TIMEOUT = 10.0


def _bit(sig: int) -> int:
    return 1 << (sig - 1)


def test_seize_freeze_regs_roundtrip(spawn) -> None:
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)
    ptrace.seize(t.pid)
    frozen = ptrace.freeze(t.pid, TIMEOUT)
    assert frozen.group_stop_sig == 0 and frozen.delivered == []
    regs = ptrace.get_regs(t.pid)
    assert regs.orig_rax == uapi.SYS_pause
    assert -regs.signed("rax") == uapi.ERESTARTNOHAND
    again = regs.copy()
    again.r12 ^= 0x5A5A
    ptrace.set_regs(t.pid, again)
    assert ptrace.get_regs(t.pid).r12 == regs.r12 ^ 0x5A5A
    ptrace.set_regs(t.pid, regs)
    assert type(regs).from_dict(regs.to_dict()).to_dict() == regs.to_dict()
    ptrace.detach(t.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.result()[2] == "1"


def test_xstate_layout(spawn) -> None:
    """NT_X86_XSTATE: legacy area + header; XSTATE_BV says which components are in use."""
    t = spawn("spin")
    time.sleep(0.05)
    ptrace.seize(t.pid)
    ptrace.freeze(t.pid, TIMEOUT)
    data = ptrace.get_xstate(t.pid)
    assert len(data) >= 576  # 512 legacy + 64 header
    # xmm0 lives at offset 160 of the legacy area: the spin target loaded a known value
    (xmm0,) = struct.unpack_from("<Q", data, 160)
    assert xmm0 == 0x1122334455667788
    changed = bytearray(data)
    struct.pack_into("<Q", changed, 160, 0xDEAD)
    ptrace.set_xstate(t.pid, bytes(changed))
    assert struct.unpack_from("<Q", ptrace.get_xstate(t.pid), 160)[0] == 0xDEAD
    ptrace.set_xstate(t.pid, data)
    ptrace.detach(t.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.result() == ["ok"]


def test_sigmask_and_peek_siginfo(spawn) -> None:
    """Pending signals, private and shared, are seen without being dequeued."""
    t = spawn("pending")
    ptrace.seize(t.pid)
    ptrace.freeze(t.pid, TIMEOUT)
    mask = ptrace.get_sigmask(t.pid)
    assert mask & _bit(signal.SIGUSR1) and mask & _bit(signal.SIGUSR2)
    shared = ptrace.peek_siginfo(t.pid, shared=True)
    private = ptrace.peek_siginfo(t.pid, shared=False)
    assert [struct.unpack_from("<i", s)[0] for s in shared] == [signal.SIGUSR1]
    assert [struct.unpack_from("<i", s)[0] for s in private] == [signal.SIGUSR2]
    assert all(len(s) == uapi.SIGINFO_SIZE for s in shared + private)
    # si_code: kill() is SI_USER, tgkill() is SI_TKILL; si_pid is the sender (itself)
    assert struct.unpack_from("<iiii", shared[0])[2] == uapi.SI_USER
    assert struct.unpack_from("<iiii", private[0])[2] == uapi.SI_TKILL
    assert struct.unpack_from("<i", shared[0], 16)[0] == t.pid
    # peeking again shows the same: nothing was dequeued
    assert ptrace.peek_siginfo(t.pid, shared=True) == shared
    with open(f"/proc/{t.pid}/status", encoding="ascii") as f:
        status = f.read()
    assert f"ShdPnd:\t{_bit(signal.SIGUSR1):016x}" in status
    ptrace.detach(t.pid)


def test_many_pending_signals_are_paged(spawn) -> None:
    """More queued realtime signals than one PEEKSIGINFO batch."""
    t = spawn("pending")
    rt = signal.SIGRTMIN + 2
    ptrace.seize(t.pid)
    ptrace.freeze(t.pid, TIMEOUT)
    mask = ptrace.get_sigmask(t.pid)
    ptrace.set_sigmask(t.pid, mask | _bit(rt))
    ptrace.detach(t.pid)
    for _ in range(70):
        os.kill(t.pid, rt)  # realtime signals queue one entry per kill
    ptrace.seize(t.pid)
    ptrace.freeze(t.pid, TIMEOUT)
    shared = ptrace.peek_siginfo(t.pid, shared=True)
    rts = [s for s in shared if struct.unpack_from("<i", s)[0] == rt]
    assert len(rts) == 70
    ptrace.detach(t.pid)


def test_rseq_config_of_glibc_thread(spawn) -> None:
    t = spawn("pause")
    ptrace.seize(t.pid)
    ptrace.freeze(t.pid, TIMEOUT)
    conf = ptrace.get_rseq_config(t.pid)
    # glibc (2.35+) registers rseq in every thread: pointer into the TLS, its signature
    assert conf.rseq_abi_pointer != 0
    assert conf.signature == uapi.RSEQ_SIG_X86
    assert conf.rseq_abi_size >= uapi.RSEQ_MIN_SIZE
    ptrace.detach(t.pid)


def test_freeze_passes_on_a_signal_in_flight(spawn) -> None:
    """A signal that arrives between seize and the stop is delivered, not lost."""
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)
    ptrace.seize(t.pid)
    os.kill(t.pid, signal.SIGUSR1)
    time.sleep(0.05)  # the signal-delivery-stop is reported before our interrupt
    frozen = ptrace.freeze(t.pid, TIMEOUT)
    assert frozen.delivered == [signal.SIGUSR1]
    ptrace.detach(t.pid)
    assert t.result() == ["-1", "4", "1"]  # pause returned EINTR after the handler


def test_wait_stop_deadline_and_exit(spawn) -> None:
    t = spawn("pause")
    ptrace.seize(t.pid)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        ptrace.wait_stop(t.pid, 0.2)  # seized but never interrupted: no stop comes
    assert time.monotonic() - start < 3.0
    os.kill(t.pid, signal.SIGKILL)
    with pytest.raises(ptrace.TaskExited) as info:
        ptrace.wait_stop(t.pid, TIMEOUT)
    assert "killed by signal 9" in str(info.value)
    t.proc.returncode = -9


def test_threads_are_seized_one_by_one(spawn) -> None:
    t = spawn("threads", "3")
    tids = sorted(int(x) for x in os.listdir(f"/proc/{t.pid}/task"))
    assert len(tids) == 4
    for tid in tids:
        ptrace.seize(tid)
    for tid in tids:
        ptrace.freeze(tid, TIMEOUT)
        assert ptrace.get_regs(tid).fs_base != 0  # every thread has its own TLS
    fs = {ptrace.get_regs(tid).fs_base for tid in tids}
    assert len(fs) == 4
    for tid in tids:
        ptrace.detach(tid)


def test_seize_errors() -> None:
    with pytest.raises(ProcessLookupError):
        ptrace.seize(2**22 + 12345)  # above pid_max: no such task
    with pytest.raises(PermissionError):
        ptrace.seize(os.getpid())  # a process cannot trace itself
