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
from array import array
from dataclasses import dataclass, field

from engine.dump import track
from engine.dump.track import Tracker
from engine.errors import EngineError, termination_held
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
    xstate_text,
)
from engine.kernel import blob, intask, ptrace, uapi
from engine.kernel import sys as ksys
from engine.kernel.inject import (
    SYSCALL_RET,
    Injector,
    find_code,
    in_interrupted_syscall,
    restart_regs,
)
from engine.kernel.structs import KSigaction, StackT
from engine.kernel.sys import syscall
from engine.proc import tasks
from engine.proc.limits import read_limits
from engine.proc.stat import Stat, read_stat
from engine.proc.status import Status, read_status
from engine.proc.timers import Timer, read_timers

_KSA = ctypes.sizeof(KSigaction)
# Signals whose disposition cannot be changed: not asked, not restored.
_FIXED = (uapi.SIGKILL, uapi.SIGSTOP)
_SIGNALS = tuple(s for s in range(1, uapi.NSIG + 1) if s not in _FIXED)
#: the kernel struct sigaction, as KSigaction: handler, flags, restorer, mask
_KSA_ROW = struct.Struct("<QQQQ")
#: rt_sigaction(signo, NULL, oldact, sizeof(sigset_t)) of each of _SIGNALS, as table rows
#: (oldact patched in per table)
_SIGACTION_ROWS = array("q", [a for s in _SIGNALS
                              for a in (s, 0, 0, uapi.SIGSET_SIZE, 0, 0)]).tobytes()
_ITIMERS = (0, 1, 2)  # ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF
_U64 = (1 << 64) - 1
INJECT_TIMEOUT = 10.0
#: Stack kept below an injection's frame: the main thread's table (~6.5 KiB, its data
#: and results; intask) with room for timers. Each byte is saved and put back: the
#: default 64 KiB cost ~60 us a task.
_STACK_SCRATCH = 16 << 10
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


@dataclass(frozen=True)
class ThreadsRead:
    """What read_threads found: every thread's core, the process-wide pending queue, and
    the main thread's /proc status and stat (what the dump reads of them again does not
    change while the process is held)."""

    threads: list[ThreadCore]
    shared_pending: list[SigInfoRecord]
    status: Status
    stat: Stat


def read_threads(pid: int, tids: list[int]) -> ThreadsRead:
    """Registers, xstate (in the thread's record), pending signals, rseq and robust
    list of every thread; plus the process-wide pending queue."""
    threads = []
    main: tuple[Status, Stat] | None = None
    for tid in tids:
        regs = ptrace.get_regs(tid)
        in_sys = in_interrupted_syscall(regs)
        if in_sys:
            # A new task cannot use the kernel's restart state: store the registers it
            # must resume with (syscall re-executed, or -EINTR for restart_block ones).
            regs = restart_regs(regs)
        xstate = ptrace.get_xstate(tid)
        rs = ptrace.get_rseq_config(tid)
        rseq = (RseqRecord(rs.rseq_abi_pointer, rs.rseq_abi_size, rs.signature, rs.flags)
                if rs.rseq_abi_pointer else None)
        head, length = _robust_list(tid)
        sched, status = read_stat(pid, tid), read_status(pid, tid)
        if tid == pid:
            main = status, sched
        if sched.policy == _SCHED_DEADLINE:
            # Its runtime/deadline/period are not in /proc and need sched_getattr.
            raise EngineError("regs", f"task {pid} thread {tid}: SCHED_DEADLINE is not "
                                      "supported")
        threads.append(ThreadCore(
            tid=tid, regs=regs.to_dict(), xstate=xstate_text(xstate),
            xstate_size=len(xstate),
            sigmask=ptrace.get_sigmask(tid),  # replaced by the real mask when injecting
            pending=_siginfos(ptrace.peek_siginfo(tid, shared=False)), rseq=rseq,
            robust_list=head, robust_list_len=length, in_syscall=in_sys,
            ns_tid=list(status.ns_pid), comm=tasks.comm(pid, tid),
            sched_policy=sched.policy, rt_priority=sched.rt_priority, nice=sched.nice,
        ))
    shared = _siginfos(ptrace.peek_siginfo(pid, shared=True))
    if main is None:
        raise EngineError("regs", f"task {pid}: main thread not found")
    return ThreadsRead(threads, shared, *main)


def _robust_list(tid: int) -> tuple[int, int]:
    head = ctypes.c_uint64()
    length = ctypes.c_size_t()
    syscall(uapi.SYS_get_robust_list, tid, head, length)
    return head.value, length.value


def inject_state(pid: int, threads: list[ThreadCore], make_tracker: bool = False,
                 held: tuple[Status, Stat] | None = None) -> InjectedProc:
    """Run the injected queries in every thread; fills each ThreadCore's sigaltstack,
    sigmask and clear_child_tid, and returns the process-wide results (with a new
    memory-tracking userfaultfd when `make_tracker`). held: the main thread's /proc
    status and stat as read_threads read them (ThreadsRead).

    Each thread's queries are one table (engine/kernel/intask.py): the main thread's,
    with the process-wide ones (64 entries and more), runs inside the task in one go; the
    few of other threads run as single injected syscalls."""
    result = None
    for th in threads:
        # Held for the whole injection (the task is ours to put back until the end), so
        # the injector's many steps each skip holding them again.
        with termination_held(), Injector(th.tid, INJECT_TIMEOUT,
                                          held=held if th.tid == pid else None,
                                          stack_scratch=_STACK_SCRATCH) as inj:
            t = blob.Table()
            thread_refs = _thread_queries(t)
            if th.tid != pid:
                _thread_results(th, intask.run(inj, t, INJECT_TIMEOUT, in_task=False),
                                thread_refs, inj)
                continue
            # Process-wide state is asked once, in the main thread.
            proc_refs = _proc_queries(t, read_timers(pid))
            gadget = (find_code(pid, inj.mem_fd, (SYSCALL_RET,), inj.proc, inj.exec_maps)
                      if inj.frame else 0)
            res = intask.run(inj, t, INJECT_TIMEOUT, gadget=gadget)
            _thread_results(th, res, thread_refs, inj)
            result = _proc_results(pid, res, proc_refs, inj)
            if make_tracker:
                result.tracker = track.create(inj, pid)
    if result is None:
        raise EngineError("sigactions", f"task {pid}: main thread not found")
    return result


@dataclass(frozen=True)
class _ThreadRefs:
    """Where a thread's query results land in its table's data area."""

    altstack: blob.DataRef
    tid_address: blob.DataRef
    pdeath_signal: blob.DataRef


def _thread_queries(t: blob.Table) -> _ThreadRefs:
    """sigaltstack, clear_child_tid and the parent-death signal of the calling thread."""
    refs = _ThreadRefs(t.data(bytes(ctypes.sizeof(StackT))), t.slot(), t.slot())
    t.add(uapi.SYS_sigaltstack, 0, refs.altstack, what="sigaltstack")
    t.add(uapi.SYS_prctl, uapi.PR_GET_TID_ADDRESS, refs.tid_address,
          what="prctl(PR_GET_TID_ADDRESS)")
    t.add(uapi.SYS_prctl, uapi.PR_GET_PDEATHSIG, refs.pdeath_signal,
          what="prctl(PR_GET_PDEATHSIG)")
    return refs


def _thread_results(th: ThreadCore, res: intask.Results, refs: _ThreadRefs,
                    inj: Injector) -> None:
    st = StackT.from_buffer_copy(res.read(refs.altstack, ctypes.sizeof(StackT)))
    th.sigaltstack = AltStack(st.ss_sp, st.ss_flags & 0xFFFFFFFF, st.ss_size)
    th.clear_child_tid = res.slot(refs.tid_address) & _U64
    th.pdeath_signal = res.slot(refs.pdeath_signal) & 0xFFFFFFFF
    th.sigmask = inj.sigmask


@dataclass(frozen=True)
class _ProcRefs:
    """Where the process-wide query results land in the main thread's table."""

    sigactions: blob.DataRef  # a struct sigaction for each of _SIGNALS, in its order
    brk: blob.DataRef
    uname: blob.DataRef
    subreaper: blob.DataRef
    thp_disable: blob.DataRef
    dumpable: blob.DataRef
    membarrier: blob.DataRef
    itimers: list[blob.DataRef]  # struct itimerval of ITIMER_REAL, VIRTUAL, PROF
    timers: list[tuple[PosixTimerRecord, blob.DataRef, blob.DataRef]]  # timespec, overrun


def _proc_queries(t: blob.Table, timers: list[Timer]) -> _ProcRefs:
    """Every signal's action, brk, uts names, prctl state, membarrier registrations,
    interval timers and the times of the POSIX timers (identity from /proc)."""
    refs = _ProcRefs(
        sigactions=t.data(bytes(len(_SIGNALS) * _KSA)), brk=t.slot(),
        uname=t.data(bytes(6 * _UTS_LEN)), subreaper=t.slot(), thp_disable=t.slot(),
        dumpable=t.slot(), membarrier=t.slot(),
        itimers=[t.data(bytes(32)) for _ in _ITIMERS],
        timers=[(PosixTimerRecord(pt.id, pt.clock_id, pt.signo, pt.sigev_value, pt.notify,
                                  pt.notify_tid, 0, 0), t.data(bytes(32)), t.slot())
                for pt in timers])
    # one rows entry for every signal, row i's oldact pointing at the i-th struct
    at = t.rows(uapi.SYS_rt_sigaction, _SIGACTION_ROWS,
                what=lambda i: f"rt_sigaction({_SIGNALS[i]})")
    t.patch_addresses(blob.DataRef(at.offset + 16), len(_SIGNALS), blob.ROW_SIZE,
                      refs.sigactions, _KSA)
    t.add(uapi.SYS_brk, 0, store=refs.brk, what="brk")
    t.add(uapi.SYS_uname, refs.uname, what="uname")
    t.add(uapi.SYS_prctl, uapi.PR_GET_CHILD_SUBREAPER, refs.subreaper,
          what="prctl(PR_GET_CHILD_SUBREAPER)")
    t.add(uapi.SYS_prctl, uapi.PR_GET_THP_DISABLE, 0, 0, 0, 0, store=refs.thp_disable,
          what="prctl(PR_GET_THP_DISABLE)")
    t.add(uapi.SYS_prctl, uapi.PR_GET_DUMPABLE, 0, 0, 0, 0, store=refs.dumpable,
          what="prctl(PR_GET_DUMPABLE)")
    # Fails before 6.6: the registrations are then probed one by one (_membarrier).
    t.add(uapi.SYS_membarrier, uapi.MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0, may_fail=True,
          store=refs.membarrier, what="membarrier(GET_REGISTRATIONS)")
    for which, ref in zip(_ITIMERS, refs.itimers):
        t.add(uapi.SYS_getitimer, which, ref, what=("getitimer({})", which))
    for timer, spec, overrun in refs.timers:
        t.add(uapi.SYS_timer_gettime, timer.id, spec, what=("timer_gettime({})", timer.id))
        t.add(uapi.SYS_timer_getoverrun, timer.id, store=overrun,
              what=("timer_getoverrun({})", timer.id))
    return refs


def _proc_results(pid: int, res: intask.Results, refs: _ProcRefs,
                  inj: Injector) -> InjectedProc:
    result = InjectedProc(_sigactions(res.read(refs.sigactions, len(_SIGNALS) * _KSA)),
                          res.slot(refs.brk) & _U64, _uname(res.read(refs.uname,
                                                                     6 * _UTS_LEN)))
    result.child_subreaper = res.slot(refs.subreaper) & 0xFFFFFFFF != 0
    result.thp_disable = res.slot(refs.thp_disable)
    result.dumpable = res.slot(refs.dumpable)
    if result.dumpable not in (0, 1):
        # SUID_DUMP_ROOT comes only from an exec; prctl cannot set it.
        raise EngineError("sigactions", f"task {pid}: dumpable mode "
                                        f"{result.dumpable} cannot be restored")
    result.membarrier = _membarrier(inj, res.slot(refs.membarrier))
    result.itimers = _itimers([res.read(ref, 32) for ref in refs.itimers])
    result.posix_timers = [_posix_timer(timer, res.read(spec, 32), res.slot(overrun))
                           for timer, spec, overrun in refs.timers]
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


def _membarrier(inj: Injector, got: int) -> int:
    """The membarrier registrations of the task's mm, as REGISTER_* command bits, from
    GET_REGISTRATIONS' result `got` (probed one by one where it failed)."""
    if got >= 0:
        return got & uapi.MEMBARRIER_REGISTRATIONS
    mask = 0
    for cmd, reg in _MEMBARRIER_PROBES:
        # A barrier on a stopped tree's mm costs an IPI at most and changes nothing.
        if inj.syscall(uapi.SYS_membarrier, cmd, 0, 0) == 0:
            mask |= reg
    return mask


def _itimers(raw: list[bytes]) -> list[ItimerRecord]:
    """The armed interval timers, from each struct itimerval (interval then value,
    timevals) of ITIMER_REAL, ITIMER_VIRTUAL and ITIMER_PROF."""
    out = []
    for which, val in zip(_ITIMERS, raw):
        isec, iusec, vsec, vusec = struct.unpack("<qqqq", val)
        if isec or iusec or vsec or vusec:
            out.append(ItimerRecord(which, isec * 1_000_000 + iusec, vsec * 1_000_000 + vusec))
    return out


def _posix_timer(t: PosixTimerRecord, spec: bytes, overrun: int) -> PosixTimerRecord:
    """A POSIX timer with its times (struct itimerspec) and overrun count filled in."""
    isec, insec, vsec, vnsec = struct.unpack("<qqqq", spec)
    t.interval_ns = isec * 1_000_000_000 + insec
    t.value_ns = vsec * 1_000_000_000 + vnsec
    t.overrun = overrun
    return t


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


def _uname(raw: bytes) -> tuple[str, str]:
    """nodename and domainname of a struct utsname (the task's uts namespace)."""
    def field(i: int) -> str:
        return raw[i * _UTS_LEN:(i + 1) * _UTS_LEN].split(b"\0", 1)[0].decode(
            errors="surrogateescape")
    return field(1), field(5)


def _sigactions(raw: bytes) -> list[SigactionRecord]:
    """The records of every signal but SIGKILL and SIGSTOP, from their kernel struct
    sigaction (handler, flags, restorer, mask) in the order of _SIGNALS."""
    return [SigactionRecord(s, *ka) for s, ka in zip(_SIGNALS, _KSA_ROW.iter_unpack(raw))]


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
