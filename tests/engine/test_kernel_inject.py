"""Syscall injection (engine/kernel/inject.py) on real processes, incl. interrupted syscalls."""

from __future__ import annotations

import errno
import os
import signal
import struct
import threading
import time

import pytest

from engine import errors
from engine.errors import EngineError
from engine.kernel import inject, ptrace, uapi
from engine.kernel.inject import InjectError, Injector, restart_regs
from engine.kernel.structs import UserRegs
from engine.proc.maps import exec_file_maps
from tests.engine.target_support import reap

TIMEOUT = 10.0


@pytest.fixture(autouse=True, params=["framed", "single-step"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with the self-restoring signal frame and in single-step mode (what
    a task without a restorer sequence gets)."""
    if request.param == "single-step":
        monkeypatch.setattr(inject, "find_restorer", lambda *_: 0)
    return str(request.param)


def _stop(pid: int) -> ptrace.Frozen:
    ptrace.seize(pid, inject.SEIZE_OPTIONS)
    return ptrace.freeze(pid, TIMEOUT)


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps", encoding="utf-8") as f:
        return f.read()


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_getpid_scratch_and_exact_restore(spawn, mode: str) -> None:
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)
    _stop(t.pid)
    regs = ptrace.get_regs(t.pid)
    xstate = ptrace.get_xstate(t.pid)
    mask = ptrace.get_sigmask(t.pid)
    maps_before = _maps(t.pid)
    with Injector(t.pid, TIMEOUT) as inj:
        assert inj.syscall(uapi.SYS_getpid) == t.pid
        assert inj.syscall(uapi.SYS_close, 12345) == -errno.EBADF
        with pytest.raises(OSError) as info:
            inj.check(uapi.SYS_close, 12345)
        assert info.value.errno == errno.EBADF and "close" in str(info.value)
        addr = inj.scratch(10000)
        inj.write(addr + 8190, b"0123456789")  # across a page boundary
        assert inj.read(addr + 8190, 10) == b"0123456789"
        assert inj.scratch(100) == addr  # reused while large enough
        if mode == "framed":  # libc's restorer and stack room: self-restoring
            assert inj.frame is not None
            assert addr % 64 == 0 and addr + 10000 <= inj.frame.address  # on the stack
        else:
            assert addr % uapi.PAGE_SIZE == 0 and f"{addr:x}-" in _maps(t.pid)
        assert inj.count >= 3
    # everything as before: registers, FPU state, mask, and no scratch mapping left
    assert ptrace.get_regs(t.pid).to_dict() == regs.to_dict()
    assert ptrace.get_xstate(t.pid) == xstate
    assert ptrace.get_sigmask(t.pid) == mask
    assert _maps(t.pid) == maps_before
    ptrace.detach(t.pid)
    time.sleep(0.1)
    assert _state(t.pid) == "S"  # still in pause(), not returned
    os.kill(t.pid, signal.SIGUSR1)
    assert t.result() == ["-1", str(errno.EINTR), "1"]


def test_nanosleep_continues_its_sleep(spawn) -> None:
    """Relative nanosleep (-ERESTART_RESTARTBLOCK) goes on with the time left: no EINTR,
    no restart from the full duration."""
    t = spawn("nanosleep", "1000")
    t.wait_in_syscall(uapi.SYS_clock_nanosleep)
    time.sleep(0.6)
    _stop(t.pid)
    regs = ptrace.get_regs(t.pid)
    assert inject.in_interrupted_syscall(regs)
    assert -regs.signed("rax") == uapi.ERESTART_RESTARTBLOCK
    with Injector(t.pid, TIMEOUT) as inj:
        for _ in range(10):
            inj.check(uapi.SYS_getpid)
    ptrace.detach(t.pid)
    rc, err, elapsed = t.result()
    assert (rc, err) == ("0", "0")
    # >= the asked second; well below 1.6 s, which a restart from scratch would take
    assert 1000.0 <= float(elapsed) < 1450.0, elapsed


def test_read_restarts_and_gets_data(spawn) -> None:
    t = spawn("read")
    t.wait_in_syscall(uapi.SYS_read)
    _stop(t.pid)
    assert -ptrace.get_regs(t.pid).signed("rax") == uapi.ERESTARTSYS
    with Injector(t.pid, TIMEOUT) as inj:
        inj.check(uapi.SYS_getppid)
    ptrace.detach(t.pid)
    time.sleep(0.1)
    assert t.proc.stdin is not None
    t.proc.stdin.write(b"xyz")
    t.proc.stdin.flush()
    assert t.result() == ["3", "0", "xyz"]


def test_sigsuspend_keeps_real_mask(spawn) -> None:
    """A task in sigsuspend: its real mask is reported, signals stay blocked while we
    inject, and after restore sigsuspend goes on and ends with the real mask back."""
    t = spawn("sigsuspend")
    t.wait_in_syscall(uapi.SYS_rt_sigsuspend)
    _stop(t.pid)
    real = (1 << (signal.SIGUSR1 - 1)) | (1 << (signal.SIGUSR2 - 1))
    assert ptrace.get_sigmask(t.pid) == real  # the saved mask, not sigsuspend's empty one
    with Injector(t.pid, TIMEOUT) as inj:
        assert inj.sigmask == real
        inj.check(uapi.SYS_getpid)
        unblockable = {signal.SIGKILL, signal.SIGSTOP}
        if inj.frame is None:
            unblockable.add(signal.SIGTRAP)  # single-step mode
        assert ptrace.get_sigmask(t.pid) == sum(
            1 << (n - 1) for n in range(1, 65) if n not in unblockable)
    ptrace.detach(t.pid)
    time.sleep(0.1)
    assert _state(t.pid) == "S"
    os.kill(t.pid, signal.SIGUSR1)
    # returns EINTR after the handler ran, with SIGUSR1|SIGUSR2 blocked again
    assert t.result() == ["-1", str(errno.EINTR), "1", "1"]


def test_spinning_task_keeps_xmm_and_runs_on(spawn) -> None:
    """A task stopped in user space (not in a syscall): FPU registers survive injection."""
    t = spawn("spin")
    time.sleep(0.05)
    _stop(t.pid)
    assert not inject.in_interrupted_syscall(ptrace.get_regs(t.pid))
    with Injector(t.pid, TIMEOUT) as inj:
        for _ in range(20):
            inj.check(uapi.SYS_getpid)
        inj.scratch(4096)
    ptrace.detach(t.pid)
    time.sleep(0.05)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.result() == ["ok"]
    assert t.exit_status() == 0


def test_caller_code_page_mode(spawn) -> None:
    """With syscall_addr (0f 05 cc in a page the caller placed) the task is continued to
    the int3 instead of single-stepped."""
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)
    _stop(t.pid)
    with Injector(t.pid, TIMEOUT) as boot:
        page = boot.check(uapi.SYS_mmap, 0, uapi.PAGE_SIZE,
                          uapi.PROT_READ | uapi.PROT_EXEC,
                          uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS, -1, 0)
        boot.write(page, b"\x0f\x05\xcc")  # FOLL_FORCE write into a read-only page
    with Injector(t.pid, TIMEOUT, syscall_addr=page) as inj:
        assert inj.check(uapi.SYS_getpid) == t.pid
        assert inj.read(inj.scratch(64), 8) == bytes(8)
    with Injector(t.pid, TIMEOUT) as boot:  # not from the page itself: it returns there
        boot.check(uapi.SYS_munmap, page, uapi.PAGE_SIZE)
    with pytest.raises(InjectError):
        Injector(t.pid, TIMEOUT, syscall_addr=page)  # no code there any more
    ptrace.detach(t.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.result() == ["-1", str(errno.EINTR), "1"]


def test_blocking_injected_syscall_times_out(spawn) -> None:
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)
    _stop(t.pid)
    regs = ptrace.get_regs(t.pid)
    inj = Injector(t.pid, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        inj.syscall(uapi.SYS_pause)
    assert time.monotonic() - start < 5.0
    # the injected pause was interrupted: the task can be put back and goes on as before
    inj.restore()
    assert ptrace.get_regs(t.pid).to_dict() == regs.to_dict()
    ptrace.detach(t.pid)
    time.sleep(0.1)
    assert _state(t.pid) == "S"
    os.kill(t.pid, signal.SIGUSR1)
    assert t.result() == ["-1", str(errno.EINTR), "1"]


def test_task_killed_while_injecting(spawn) -> None:
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)
    _stop(t.pid)
    inj = Injector(t.pid, timeout=5.0)
    inj.check(uapi.SYS_getpid)
    os.kill(t.pid, signal.SIGKILL)
    with pytest.raises((ptrace.TaskExited, ProcessLookupError)):
        inj.syscall(uapi.SYS_getpid)
        inj.syscall(uapi.SYS_getpid)  # the first may still run before the kill lands
    with pytest.raises(OSError):
        inj.restore()  # the registers cannot be put back into a dead task
    t.proc.returncode = -9  # reaped by the wait above


def test_stopped_task_stays_stopped(spawn) -> None:
    """A task in group-stop (SIGSTOP) is reported as such and stays stopped after
    injection and detach; SIGCONT then resumes it."""
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)
    os.kill(t.pid, signal.SIGSTOP)
    deadline = time.monotonic() + TIMEOUT
    while _state(t.pid) != "T":
        assert time.monotonic() < deadline
        time.sleep(0.002)
    frozen = _stop(t.pid)
    assert frozen.group_stop_sig == signal.SIGSTOP
    with Injector(t.pid, TIMEOUT) as inj:
        inj.check(uapi.SYS_getpid)
    ptrace.detach(t.pid)
    time.sleep(0.1)
    assert _state(t.pid) == "T"
    os.kill(t.pid, signal.SIGCONT)
    time.sleep(0.05)
    assert _state(t.pid) == "S"
    os.kill(t.pid, signal.SIGUSR1)
    assert t.result() == ["-1", str(errno.EINTR), "1"]


def test_restart_regs_for_images() -> None:
    """restart_regs: what a new task must resume with, for each restart errno."""
    base = UserRegs()
    base.rip = 0x1002
    base.orig_rax = uapi.SYS_read
    for err in (uapi.ERESTARTSYS, uapi.ERESTARTNOINTR, uapi.ERESTARTNOHAND):
        base.rax = (-err) & (2**64 - 1)
        out = restart_regs(base)
        assert (out.rip, out.rax) == (0x1000, uapi.SYS_read)
    base.rax = (-uapi.ERESTART_RESTARTBLOCK) & (2**64 - 1)
    out = restart_regs(base)
    assert (out.rip, out.signed("rax")) == (0x1002, -errno.EINTR)
    base.rax = 5  # a finished syscall is left alone
    assert restart_regs(base).to_dict() == base.to_dict()
    base.orig_rax = 2**64 - 1  # not in a syscall
    base.rax = (-uapi.ERESTARTSYS) & (2**64 - 1)
    assert restart_regs(base).to_dict() == base.to_dict()


def test_reap_helper_kills_traced_child(spawn) -> None:
    """Cleanup path: a seized, stopped child is killed and collected by pid."""
    t = spawn("pause")
    _stop(t.pid)
    assert reap(t.pid) is not None
    t.proc.returncode = -9


def test_sigstop_during_injection_is_kept(spawn) -> None:
    """SIGSTOP cannot be blocked: it interrupts an injection, is held back, and is sent
    again on restore, so the task ends up stopped as the sender wanted."""
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)
    _stop(t.pid)
    with Injector(t.pid, TIMEOUT) as inj:
        inj.check(uapi.SYS_getpid)
        os.kill(t.pid, signal.SIGSTOP)
        assert inj.check(uapi.SYS_getpid) == t.pid
        assert inj.check(uapi.SYS_getppid) == os.getpid()
        assert inj.deferred_signals == [signal.SIGSTOP]
    ptrace.detach(t.pid)
    deadline = time.monotonic() + TIMEOUT
    while _state(t.pid) != "T":
        assert time.monotonic() < deadline, "SIGSTOP was lost"
        time.sleep(0.005)
    os.kill(t.pid, signal.SIGCONT)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.result() == ["-1", str(errno.EINTR), "1"]


def _sigterm_from_another_thread() -> None:
    """SIGTERM taken by a new thread of ours (the calling thread may block it): Python
    still runs the handler in the main thread, at its next bytecode."""
    def take() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
    helper = threading.Thread(target=take)
    helper.start()
    helper.join()


def test_termination_mid_syscall_waits_for_the_stop(spawn, monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    """The engine's SIGTERM arriving while an injected syscall runs, even on another
    thread, is raised only once the task is stopped again: the task is put back whole
    (it was raised at once, and restore() met a running task: ESRCH)."""
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)
    _stop(t.pid)
    regs = ptrace.get_regs(t.pid)
    fired: list[bool] = []

    def fire_once() -> None:
        if not fired:
            fired.append(True)  # the task runs the injected syscall now
            _sigterm_from_another_thread()

    real_ptrace, real_cont, real_step = ptrace.ptrace, ptrace.cont, ptrace.singlestep

    entries: list[int] = []

    def raw_then_signal(request: int, tid: int, addr: object = 0, data: object = 0) -> int:
        ret = real_ptrace(request, tid, addr, data)
        if request == uapi.PTRACE_SYSCALL:  # framed: to the entry stop, then to its exit
            entries.append(tid)
            if len(entries) == 2:
                fire_once()
        return ret

    def cont_then_signal(tid: int, sig: int = 0) -> None:
        real_cont(tid, sig)
        fire_once()

    def step_then_signal(tid: int, sig: int = 0) -> None:
        real_step(tid, sig)
        fire_once()

    saved = {s: signal.getsignal(s) for s in errors.TERMINATION_SIGNALS}
    errors.arm_interruption()
    try:
        with pytest.raises(EngineError, match="terminated by SIGTERM"), \
                Injector(t.pid, TIMEOUT) as inj:
            monkeypatch.setattr(ptrace, "ptrace", raw_then_signal)
            monkeypatch.setattr(ptrace, "cont", cont_then_signal)
            monkeypatch.setattr(ptrace, "singlestep", step_then_signal)
            ts = inj.scratch(16)
            inj.write(ts, struct.pack("qq", 0, 300_000_000))
            # still sleeping when the signal comes: raised once the sleep is over
            assert inj.syscall(uapi.SYS_nanosleep, ts, 0) == 0
        monkeypatch.undo()
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    assert fired
    assert ptrace.get_regs(t.pid).to_dict() == regs.to_dict()
    ptrace.detach(t.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.result() == ["-1", str(errno.EINTR), "1"]


def test_stale_cached_instruction_is_replaced(spawn, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    """If the cached syscall address stopped being executable (address space changed),
    the fault is swallowed and another instruction is found (single-step mode: a task
    without a restorer)."""
    monkeypatch.setattr(inject, "find_restorer", lambda *_: 0)
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)
    _stop(t.pid)
    with Injector(t.pid, TIMEOUT) as boot:
        page = boot.check(uapi.SYS_mmap, 0, uapi.PAGE_SIZE, uapi.PROT_READ | uapi.PROT_WRITE,
                          uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS, -1, 0)
        boot.write(page, b"\x0f\x05")  # the right bytes, but not executable
    inject._insn_cache[inject.proc_key(t.pid)] = page
    with Injector(t.pid, TIMEOUT) as inj:
        assert inj.check(uapi.SYS_getpid) == t.pid
        assert inj.deferred_signals == []  # the SIGSEGV was not kept for the task
        inj.check(uapi.SYS_munmap, page, uapi.PAGE_SIZE)
    assert inject._insn_cache[inject.proc_key(t.pid)] != page
    ptrace.detach(t.pid)
    os.kill(t.pid, signal.SIGUSR1)
    assert t.result() == ["-1", str(errno.EINTR), "1"]


def test_rseq_critical_section_aborts_after_injection(spawn) -> None:
    """A thread stopped inside an rseq critical section resumes at its abort handler, as
    after any preemption, even though our injected frames ran outside the section."""
    t = spawn("rseq")
    start, end, abort = (int(x, 16) for x in t.header.split()[1:])
    ptrace.seize(t.pid)
    deadline = time.monotonic() + TIMEOUT
    while True:  # catch it inside the two-instruction section (it spins there)
        ptrace.freeze(t.pid, TIMEOUT)
        rip = ptrace.get_regs(t.pid).rip
        if start <= rip < end:
            break
        assert time.monotonic() < deadline
        ptrace.cont(t.pid)
        time.sleep(0.01)
    with Injector(t.pid, TIMEOUT) as inj:
        assert inj.rseq_abort == abort
        inj.check(uapi.SYS_getpid)
    assert ptrace.get_regs(t.pid).rip == abort
    ptrace.detach(t.pid)
    time.sleep(0.05)
    os.kill(t.pid, signal.SIGUSR1)
    assert int(t.result()[0]) >= 1
    assert t.exit_status() == 0


def test_rseq_outside_critical_section_is_untouched(spawn) -> None:
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)
    _stop(t.pid)
    regs = ptrace.get_regs(t.pid)
    with Injector(t.pid, TIMEOUT) as inj:
        assert inj.rseq_abort is None
        assert inj.saved_regs.rip == regs.rip
    ptrace.detach(t.pid)


def test_inject_into_a_non_leader_thread(spawn) -> None:
    """Each thread is injected on its own; the others stay stopped meanwhile."""
    t = spawn("threads", "2")
    tids = sorted(int(x) for x in os.listdir(f"/proc/{t.pid}/task"))
    for tid in tids:
        ptrace.seize(tid)
        ptrace.freeze(tid, TIMEOUT)
    worker = next(tid for tid in tids if tid != t.pid)
    with Injector(worker, TIMEOUT) as inj:
        assert inj.check(uapi.SYS_gettid) == worker
        assert inj.check(uapi.SYS_getpid) == t.pid
        addr = inj.scratch(64)
        inj.write(addr, b"thread")
    # the scratch mapping belonged to the whole process and is gone again
    assert f"{addr:x}-" not in _maps(t.pid)
    for tid in tids:
        ptrace.detach(tid)
    time.sleep(0.05)
    assert sorted(int(x) for x in os.listdir(f"/proc/{t.pid}/task")) == tids


def _tracer_dies(pid: int, where: str) -> None:
    """In a forked tracer: seize pid, inject, and die by SIGKILL at `where`."""
    try:
        _stop(pid)
        inj = Injector(pid, TIMEOUT)
        inj.syscall(uapi.SYS_getpid)
        if where == "scratch":
            inj.write(inj.scratch(64), b"x" * 64)
            inj.syscall(uapi.SYS_getpid)
        elif where in ("entry", "changed"):
            ptrace.set_regs(pid, inj._work)
            ptrace.ptrace(uapi.PTRACE_SYSCALL, pid, 0, 0)
            ptrace.wait_stop(pid, TIMEOUT)  # the entry stop of the restorer's rt_sigreturn
            if where == "changed":  # already turned into the syscall wanted
                regs = ptrace.get_regs(pid)
                regs.orig_rax, regs.rip = uapi.SYS_getppid, inj._restorer
                ptrace.set_regs(pid, regs)
    finally:
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("where", ["exit", "entry", "changed", "scratch"])
def test_task_survives_its_tracer_killed_mid_injection(spawn, mode: str, where: str) -> None:
    """The engine SIGKILLed at a syscall stop of an injection (the syscall done, not yet
    run, or already changed into the one wanted): the task restores itself from the
    signal frame and goes on in pause() with its mask, maps and handlers."""
    if mode != "framed":
        pytest.skip("single-step injection cannot survive its tracer (no restorer)")
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)
    maps, mask = _maps(t.pid), _status_mask(t.pid)
    tracer = os.fork()
    if tracer == 0:
        _tracer_dies(t.pid, where)
    _, status = os.waitpid(tracer, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    deadline = time.monotonic() + 5
    while _state(t.pid) != "S":  # back in pause() (it restarts it)
        assert time.monotonic() < deadline, f"task in state {_state(t.pid)}"
        time.sleep(0.01)
    assert _maps(t.pid) == maps and _status_mask(t.pid) == mask
    os.kill(t.pid, signal.SIGUSR1)
    assert t.result() == ["-1", str(errno.EINTR), "1"]


def _status_mask(pid: int) -> str:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return next(ln for ln in f if ln.startswith("SigBlk:"))


def test_code_found_again_in_the_same_file_without_a_scan(spawn, mode: str,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Another process mapping the same libc finds a sequence where the first one had it,
    at its own address, without reading its code (in either injection mode)."""
    first, second = spawn("pause"), spawn("pause")
    for t in (first, second):
        t.wait_in_syscall(uapi.SYS_pause)
        _stop(t.pid)
    with open(f"/proc/{first.pid}/mem", "rb") as mem:
        found = inject.find_code(first.pid, mem.fileno(), (inject.SYSCALL_RET,))
    assert found

    def no_scan(*_: object) -> int:
        raise AssertionError("scanned again")
    monkeypatch.setattr(inject, "_scan_code", no_scan)
    with open(f"/proc/{second.pid}/mem", "rb") as mem:
        again = inject.find_code(second.pid, mem.fileno(), (inject.SYSCALL_RET,))
        assert os.pread(mem.fileno(), 3, again) == inject.SYSCALL_RET
    libc = [v for v in exec_file_maps(first.pid) if v.start <= found < v.end]
    assert libc and any(v.path == libc[0].path and again - v.start == found - libc[0].start
                        for v in exec_file_maps(second.pid))
    for t in (first, second):
        ptrace.detach(t.pid)


def test_code_learnt_from_the_engine_itself_needs_no_scan(spawn, mode: str,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """What the engine learns from its own libc (engine.serve does it once) finds both
    sequences in a task's libc without reading the task's code."""
    monkeypatch.setattr(inject, "_file_code", {})
    monkeypatch.setattr(inject, "_code_cache", {})
    inject.learn_own_code()
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)
    _stop(t.pid)

    def no_scan(*_: object) -> int:
        raise AssertionError("scanned the task's code")
    monkeypatch.setattr(inject, "_scan_code", no_scan)
    try:
        with open(f"/proc/{t.pid}/mem", "rb") as mem:
            for seqs in ((inject.SYSCALL_RET,), inject.sigframe.RESTORERS):
                at = inject.find_code(t.pid, mem.fileno(), seqs)
                assert any(os.pread(mem.fileno(), len(s), at) == s for s in seqs)
    finally:
        ptrace.detach(t.pid)
