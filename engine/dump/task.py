"""Per-task state of a frozen process: what ptrace and /proc give, and what only the task
knows (asked by injected syscalls).

Two passes, matching the dump's fault steps: `read_threads` (step "regs": registers,
xstate, pending signals, rseq, robust list; nothing runs in the task) and `inject_state`
(step "sigactions": sigactions, sigaltstack, the real blocked mask, clear_child_tid, brk;
each thread runs a few injected syscalls and is put back exactly as it was).
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field

from engine.dump import track
from engine.dump.track import Tracker
from engine.errors import EngineError
from engine.images import names
from engine.images.imgdir import ImageDir
from engine.images.records import (
    AltStack,
    Creds,
    ItimerRecord,
    PosixTimerRecord,
    RlimitRecord,
    RseqRecord,
    SigactionRecord,
    SigInfoRecord,
    ThreadCore,
)
from engine.kernel import ptrace, uapi
from engine.kernel import sys as ksys
from engine.kernel.inject import Injector, in_interrupted_syscall, restart_regs
from engine.kernel.structs import KSigaction, StackT
from engine.kernel.sys import syscall
from engine.proc import tasks
from engine.proc.limits import read_limits
from engine.proc.stat import read_stat
from engine.proc.status import Status, read_status
from engine.proc.timers import read_timers

_KSA = ctypes.sizeof(KSigaction)
# Signals whose disposition cannot be changed: not asked, not restored.
_FIXED = (uapi.SIGKILL, uapi.SIGSTOP)
INJECT_TIMEOUT = 10.0
_UTS_LEN = 65  # each of the six fields of struct utsname
_SCHED_DEADLINE = 6


@dataclass
class InjectedProc:
    """What the injection pass learned about a process (besides per-thread fields)."""

    sigactions: list[SigactionRecord]
    brk: int
    uname: tuple[str, str]  # (nodename, domainname) of its uts namespace
    child_subreaper: bool = False
    thp_disable: int = 0  # PR_GET_THP_DISABLE
    dumpable: int = 1  # PR_GET_DUMPABLE
    membarrier: int = 0  # MEMBARRIER_CMD_REGISTER_* bits the mm holds
    itimers: list[ItimerRecord] = field(default_factory=list)
    posix_timers: list[PosixTimerRecord] = field(default_factory=list)
    tracker: Tracker | None = None  # a new memory-tracking userfaultfd, when asked for


def _siginfos(raw: list[bytes]) -> list[SigInfoRecord]:
    return [SigInfoRecord(int.from_bytes(r[:4], "little", signed=True), r.hex()) for r in raw]


def read_threads(img: ImageDir, pid: int, tids: list[int]) -> tuple[list[ThreadCore],
                                                                       list[SigInfoRecord]]:
    """Registers, xstate (written to xstate-TID.img), pending signals, rseq and robust
    list of every thread; plus the process-wide pending queue."""
    threads = []
    for tid in tids:
        regs = ptrace.get_regs(tid)
        in_sys = in_interrupted_syscall(regs)
        if in_sys:
            # A new task cannot use the kernel's restart state: store the registers it
            # must resume with (syscall re-executed, or -EINTR for restart_block ones).
            regs = restart_regs(regs)
        xname = names.xstate(tid)
        img.write_bytes(xname, ptrace.get_xstate(tid))
        rs = ptrace.get_rseq_config(tid)
        rseq = (RseqRecord(rs.rseq_abi_pointer, rs.rseq_abi_size, rs.signature, rs.flags)
                if rs.rseq_abi_pointer else None)
        head, length = _robust_list(tid)
        sched = read_stat(pid, tid)
        if sched.policy == _SCHED_DEADLINE:
            # Its runtime/deadline/period are not in /proc and need sched_getattr.
            raise EngineError("regs", f"task {pid} thread {tid}: SCHED_DEADLINE is not "
                                      "supported")
        threads.append(ThreadCore(
            tid=tid, regs=regs.to_dict(), xstate=xname,
            sigmask=ptrace.get_sigmask(tid),  # replaced by the real mask when injecting
            pending=_siginfos(ptrace.peek_siginfo(tid, shared=False)), rseq=rseq,
            robust_list=head, robust_list_len=length, in_syscall=in_sys,
            ns_tid=list(read_status(pid, tid).ns_pid), comm=tasks.comm(pid, tid),
            sched_policy=sched.policy, rt_priority=sched.rt_priority, nice=sched.nice,
        ))
    shared = _siginfos(ptrace.peek_siginfo(pid, shared=True))
    return threads, shared


def _robust_list(tid: int) -> tuple[int, int]:
    head = ctypes.c_uint64()
    length = ctypes.c_size_t()
    syscall(uapi.SYS_get_robust_list, tid, head, length)
    return head.value, length.value


def inject_state(pid: int, threads: list[ThreadCore], make_tracker: bool = False
                 ) -> InjectedProc:
    """Run the injected queries in every thread; fills each ThreadCore's sigaltstack,
    sigmask and clear_child_tid, and returns the process-wide results (with a new
    memory-tracking userfaultfd when `make_tracker`)."""
    result = None
    for th in threads:
        with Injector(th.tid, INJECT_TIMEOUT) as inj:
            buf = inj.scratch(uapi.NSIG * _KSA + 64)
            inj.check(uapi.SYS_sigaltstack, 0, buf)
            st = StackT.from_buffer_copy(inj.read(buf, ctypes.sizeof(StackT)))
            th.sigaltstack = AltStack(st.ss_sp, st.ss_flags & 0xFFFFFFFF, st.ss_size)
            inj.check(uapi.SYS_prctl, uapi.PR_GET_TID_ADDRESS, buf)
            th.clear_child_tid = int.from_bytes(inj.read(buf, 8), "little")
            inj.check(uapi.SYS_prctl, uapi.PR_GET_PDEATHSIG, buf)
            th.pdeath_signal = int.from_bytes(inj.read(buf, 4), "little")
            th.sigmask = inj.sigmask
            if th.tid == pid:
                # Process-wide state is asked once, in the main thread.
                result = InjectedProc(_sigactions(inj, buf), inj.check(uapi.SYS_brk, 0),
                                      _uname(inj, buf))
                inj.check(uapi.SYS_prctl, uapi.PR_GET_CHILD_SUBREAPER, buf)
                result.child_subreaper = inj.read(buf, 4) != b"\0\0\0\0"
                result.thp_disable = inj.check(uapi.SYS_prctl, uapi.PR_GET_THP_DISABLE, 0,
                                               0, 0, 0)
                result.dumpable = inj.check(uapi.SYS_prctl, uapi.PR_GET_DUMPABLE, 0, 0, 0, 0)
                if result.dumpable not in (0, 1):
                    # SUID_DUMP_ROOT comes only from an exec; prctl cannot set it.
                    raise EngineError("sigactions", f"task {pid}: dumpable mode "
                                                    f"{result.dumpable} cannot be restored")
                result.membarrier = _membarrier(inj)
                result.itimers = _itimers(inj, buf)
                result.posix_timers = _posix_timers(inj, buf, pid)
                if make_tracker:
                    result.tracker = track.create(inj, pid)
    if result is None:
        raise EngineError("sigactions", f"task {pid}: main thread not found")
    return result


#: Before 6.6 (no GET_REGISTRATIONS) a private registration shows as its command
#: succeeding instead of failing EPERM; a global one is not visible at all.
_MEMBARRIER_PROBES = (
    (uapi.MEMBARRIER_CMD_PRIVATE_EXPEDITED, uapi.MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED),
    (uapi.MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE,
     uapi.MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE),
    (uapi.MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ,
     uapi.MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ),
)


def _membarrier(inj: Injector) -> int:
    """The membarrier registrations of the task's mm, as REGISTER_* command bits."""
    got = inj.syscall(uapi.SYS_membarrier, uapi.MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0)
    if got >= 0:
        return got & uapi.MEMBARRIER_REGISTRATIONS
    mask = 0
    for cmd, reg in _MEMBARRIER_PROBES:
        # A barrier on a stopped tree's mm costs an IPI at most and changes nothing.
        if inj.syscall(uapi.SYS_membarrier, cmd, 0, 0) == 0:
            mask |= reg
    return mask


def _itimers(inj: Injector, buf: int) -> list[ItimerRecord]:
    """The armed interval timers (struct itimerval: interval then value, timevals)."""
    out = []
    for which in (0, 1, 2):  # ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF
        inj.check(uapi.SYS_getitimer, which, buf)
        isec, iusec, vsec, vusec = struct.unpack("<qqqq", inj.read(buf, 32))
        if isec or iusec or vsec or vusec:
            out.append(ItimerRecord(which, isec * 1_000_000 + iusec, vsec * 1_000_000 + vusec))
    return out


def _posix_timers(inj: Injector, buf: int, pid: int) -> list[PosixTimerRecord]:
    """POSIX timers: identity from /proc/PID/timers, times from timer_gettime."""
    out = []
    for pt in read_timers(pid):
        t = PosixTimerRecord(pt.id, pt.clock_id, pt.signo, pt.sigev_value, pt.notify,
                             pt.notify_tid, 0, 0)
        inj.check(uapi.SYS_timer_gettime, t.id, buf)
        isec, insec, vsec, vnsec = struct.unpack("<qqqq", inj.read(buf, 32))
        t.interval_ns = isec * 1_000_000_000 + insec
        t.value_ns = vsec * 1_000_000_000 + vnsec
        t.overrun = inj.check(uapi.SYS_timer_getoverrun, t.id)
        out.append(t)
    return out


#: Clocks a timer can be created on again as it was: CLOCK_REALTIME, MONOTONIC, BOOTTIME,
#: TAI and the process's own CPU time (CLOCK_PROCESS_CPUTIME_ID, which /proc shows as
#: the CPU clock id of "pid 0", -6). Not a thread's CPU time (-2: which thread it counts
#: is not shown), another task's CPU clock, nor the alarm clocks (CAP_WAKE_ALARM).
_TIMER_CLOCKS = (0, 1, 7, 11, -6)


def refuse_posix_timers(pid: int, timers: list[PosixTimerRecord], threads: list[ThreadCore],
                        shared: list[SigInfoRecord]) -> None:
    """Raise EngineError("sigactions") for a POSIX timer the restore could not give back:
    no way to choose timer ids on this kernel, another clock, a target thread that has
    exited, an overrun count (only the kernel sets it, at delivery), or the signal of a
    periodic timer pending (the kernel ties it to the timer; a queued copy is not)."""
    if not timers:
        return
    ok, why = ksys.timer_restore_ids()
    if not ok:
        raise EngineError("sigactions", f"task {pid}: cannot restore its POSIX timers with "
                                        f"their ids: {why}")
    tids = {th.tid for th in threads}
    pending = {_timer_of(s) for s in shared + [s for th in threads for s in th.pending]}
    for t in timers:
        what = f"task {pid}: POSIX timer {t.id}"
        if t.clock_id not in _TIMER_CLOCKS:
            raise EngineError("sigactions", f"{what}: clock {t.clock_id} cannot be restored")
        if t.notify & uapi.SIGEV_THREAD_ID and t.notify_tid not in tids:
            raise EngineError("sigactions", f"{what}: its target thread {t.notify_tid} has "
                                            "exited")
        if t.overrun:
            raise EngineError("sigactions", f"{what}: the overrun count {t.overrun} of its "
                                            "last expiry cannot be set again")
        if t.interval_ns and t.id in pending:
            raise EngineError("sigactions", f"{what}: its periodic signal {t.signo} is "
                                            "pending, which only the kernel can queue")


def _timer_of(sig: SigInfoRecord) -> int | None:
    """The timer id of a pending SI_TIMER signal (siginfo: signo, errno, code, pad, then
    si_tid, the timer id); None for another signal."""
    raw = bytes.fromhex(sig.raw)
    if int.from_bytes(raw[8:12], "little", signed=True) != uapi.SI_TIMER:
        return None
    return int.from_bytes(raw[16:20], "little", signed=True)


def _uname(inj: Injector, buf: int) -> tuple[str, str]:
    """nodename and domainname as the task sees them (its uts namespace)."""
    inj.check(uapi.SYS_uname, buf)
    raw = inj.read(buf, 6 * _UTS_LEN)

    def field(i: int) -> str:
        return raw[i * _UTS_LEN:(i + 1) * _UTS_LEN].split(b"\0", 1)[0].decode(
            errors="surrogateescape")
    return field(1), field(5)


def _sigactions(inj: Injector, buf: int) -> list[SigactionRecord]:
    sigs = [s for s in range(1, uapi.NSIG + 1) if s not in _FIXED]
    for s in sigs:
        inj.check(uapi.SYS_rt_sigaction, s, 0, buf + s * _KSA, uapi.SIGSET_SIZE)
    raw = inj.read(buf, (uapi.NSIG + 1) * _KSA)
    out = []
    for s in sigs:
        ka = KSigaction.from_buffer_copy(raw, s * _KSA)
        out.append(SigactionRecord(s, ka.handler, ka.flags, ka.restorer, ka.mask))
    return out


def creds_of(st: Status) -> Creds:
    """Credentials from a parsed /proc/PID/status."""
    return Creds(uid=list(st.uid), gid=list(st.gid), groups=list(st.groups),
                 cap_inh=st.cap_inh, cap_prm=st.cap_prm, cap_eff=st.cap_eff,
                 cap_bnd=st.cap_bnd, cap_amb=st.cap_amb,
                 no_new_privs=bool(st.no_new_privs), seccomp=st.seccomp)


def limits_of(pid: int) -> list[RlimitRecord]:
    """Resource limits from /proc/PID/limits (prlimit on others needs CAP_SYS_RESOURCE)."""
    return [RlimitRecord(lim.resource, lim.name, lim.soft, lim.hard)
            for lim in read_limits(pid)]


def umask_of(st: Status, pid: int) -> int:
    """The umask from status (shown since 4.7)."""
    if st.umask is None:
        raise EngineError("regs", f"task {pid}: /proc status has no Umask line")
    return st.umask
