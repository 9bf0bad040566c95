"""The second table run: everything after the pages are in.

mm fields and auxv (PR_SET_MM_MAP, with the dumped executable as /proc/PID/exe),
sigactions, sigaltstack, personality, rseq, robust list and clear_child_tid, root and
credentials; last, the signals the restore made pending taken and the dumpable flag set
(close_table). Pending signals and timers are set after the last table run (Deferred):
the int3 that ends a table is itself a SIGTRAP, which the tables run unblocked.
"""

from __future__ import annotations

import ctypes
import os
import struct
from array import array
from dataclasses import dataclass, field

from engine.images.records import (
    Creds,
    FileRecord,
    MmCore,
    ShmemEntry,
    SigInfoRecord,
    TaskCore,
    ThreadCore,
)
from engine.kernel import blob, uapi
from engine.kernel import sys as ksys
from engine.kernel.structs import KSigaction, PrctlMmMap, StackT
from engine.proc.status import Status
from engine.restore.layout import Window
from engine.restore.ns import NsSetup
from engine.restore.taskattrs import (
    FOWN_BYTES_PER_FD,
    fown_part,
    membarrier_part,
    sched_part,
    thp_part,
)

#: struct KSigaction as bytes, packed in bulk (a task's 62 actions)
_KSIGACTION = struct.Struct("<4Q")
assert _KSIGACTION.size == ctypes.sizeof(KSigaction)

# Not (yet) in engine.kernel.uapi: linux/prctl.h and linux/capability.h values.
_PR_SET_KEEPCAPS = 8
_PR_CAP_AMBIENT_RAISE = 2
_CAP_VERSION_3 = 0x20080522
_F_ADD_SEALS = 1033
_EXE_FD_OFFSET = PrctlMmMap.exe_fd.offset
_ITIMER_REAL = 0


@dataclass
class Deferred:
    """What runs after the last table: pending signals and timers, as (nr, args) where
    pointer arguments are table data references."""

    calls: list[tuple[int, tuple[int | blob.DataRef, ...], str]] = field(default_factory=list)
    # (sigset of every signal, zero timespec): rt_sigtimedwait arguments that take away
    # what the restore itself made pending (a child stopping sends its parent SIGCHLD)
    # before the dumped pending signals are queued.
    drain: tuple[blob.DataRef, blob.DataRef] | None = None
    # the result slots of the table's own rt_sigtimedwait entries (close_table): when
    # the last one took a signal too, more may be pending, taken one call at a time
    drained: list[blob.DataRef] = field(default_factory=list)


#: rt_sigtimedwait entries at the end of a state table: each takes one signal the restore
#: made pending (a task has at most its children's SIGCHLD), the last one should find none.
DRAIN_ENTRIES = 2


def _mm_map(t: blob.Table, mm: MmCore, exe: str | None) -> None:
    m = PrctlMmMap()
    for name in ("start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
                 "start_stack", "arg_start", "arg_end", "env_start", "env_end"):
        setattr(m, name, getattr(mm, name))
    auxv = struct.pack(f"<{len(mm.auxv)}Q", *mm.auxv)
    auxv_ref = t.data(auxv)
    m.auxv_size = len(auxv)
    m.exe_fd = 0xFFFFFFFF
    # 8 spare bytes: the runner stores the exe fd as a u64 into the u32 exe_fd field.
    raw = bytearray(bytes(m)) + bytes(8)
    map_ref = t.data(bytes(raw))
    # The auxv pointer is an address in the task: patch it once the data layout is fixed.
    t.patch_address(blob.DataRef(map_ref.offset + PrctlMmMap.auxv.offset), auxv_ref)
    if exe:
        t.add(uapi.SYS_openat, uapi.AT_FDCWD, t.cstr(exe), uapi.O_RDONLY | uapi.O_CLOEXEC, 0,
              save=True, store=blob.DataRef(map_ref.offset + _EXE_FD_OFFSET),
              what=f"open executable {exe}")
    t.add(uapi.SYS_prctl, uapi.PR_SET_MM, uapi.PR_SET_MM_MAP, map_ref, uapi.PRCTL_MM_MAP_SIZE,
          0, what="prctl(PR_SET_MM_MAP)")
    if exe:
        t.add(uapi.SYS_close, 0, use_saved=1, what="close executable")


def _is_own_exe(path: str, pid: int) -> bool:
    """Whether `path`, in task `pid`'s root, is the executable the task already has (the
    engine's own, as a fork of it): the kernel refuses to replace an exe that is still
    mapped (EBUSY), and a dumped Python program maps the very interpreter the engine runs
    on. (In a root of its own the same path may be another file: that one is set.)"""
    try:
        mine, theirs = os.stat(f"/proc/{pid}/exe"), os.stat(f"/proc/{pid}/root{path}")
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


def foreground(t: blob.Table, path: str, pgrp: int) -> None:
    """A session leader gives its terminal back to the dumped foreground process group
    (every group exists once the tree is built; the task's signals are still blocked, so
    a leader in the background gets no SIGTTOU)."""
    t.add(uapi.SYS_openat, uapi.AT_FDCWD, t.cstr(path), uapi.O_RDWR | uapi.O_NOCTTY
          | uapi.O_CLOEXEC, 0, save=True, what=f"open terminal {path}")
    t.add(uapi.SYS_ioctl, 0, uapi.TIOCSPGRP, t.data(struct.pack("<i", pgrp)), use_saved=1,
          what=f"foreground process group {pgrp}")
    t.add(uapi.SYS_close, 0, use_saved=1, what=f"close terminal {path}")


def _sigaltstack(t: blob.Table, th: ThreadCore) -> None:
    ss = th.sigaltstack
    if ss is None:
        return
    if ss.flags & uapi.SS_DISABLE:
        st = StackT(0, uapi.SS_DISABLE, 0, 0)
    else:
        # SS_ONSTACK only reports that the task was running on it; it cannot be set.
        st = StackT(ss.sp, ss.flags & uapi.SS_AUTODISARM, 0, ss.size)
    t.add(uapi.SYS_sigaltstack, t.data(bytes(st)), 0, what="sigaltstack")


@dataclass
class CredView:
    """The credentials the task has now (as the engine reads them in /proc) and how ids
    translate into the task's user namespace (the set*id calls take ids as it sees them)."""

    have: Status
    ns: NsSetup | None = None

    def uid(self, uid: int) -> int:
        """Engine-side uid -> task-side uid."""
        return self.ns.inner_uid(uid) if self.ns and self.ns.new_user else uid

    def gid(self, gid: int) -> int:
        """Engine-side gid -> task-side gid."""
        return self.ns.inner_gid(gid) if self.ns and self.ns.new_user else gid


def _capset(t: blob.Table, eff: int, prm: int, inh: int) -> None:
    hdr = struct.pack("<Ii", _CAP_VERSION_3, 0)
    data = struct.pack("<6I", eff & 0xFFFFFFFF, prm & 0xFFFFFFFF, inh & 0xFFFFFFFF,
                       eff >> 32, prm >> 32, inh >> 32)
    t.add(uapi.SYS_capset, t.data(hdr), t.data(data), what="capset")


def _creds(t: blob.Table, want: Creds, view: CredView) -> None:
    me = view.have
    groups = tuple(sorted(want.groups))
    ids_change = (tuple(want.uid), tuple(want.gid), groups) != \
        (me.uid, me.gid, tuple(sorted(me.groups)))
    uid = [view.uid(x) for x in want.uid]
    gid = [view.gid(x) for x in want.gid]
    groups = tuple(view.gid(x) for x in groups)
    caps_change = (want.cap_inh, want.cap_prm, want.cap_eff, want.cap_bnd, want.cap_amb) != \
        (me.cap_inh, me.cap_prm, me.cap_eff, me.cap_bnd, me.cap_amb)
    if caps_change:
        for cap in range(64):
            if me.cap_bnd >> cap & 1 and not want.cap_bnd >> cap & 1:
                t.add(uapi.SYS_prctl, uapi.PR_CAPBSET_DROP, cap, what=f"drop cap {cap} (bnd)")
    if ids_change:
        t.add(uapi.SYS_prctl, _PR_SET_KEEPCAPS, 1, what="keep caps over setuid")
        gl = struct.pack(f"<{len(groups)}I", *groups)
        t.add(uapi.SYS_setgroups, len(groups), t.data(gl or bytes(4)), what="setgroups")
        t.add(uapi.SYS_setresgid, gid[0], gid[1], gid[2], what="setresgid")
        # setfs[ug]id return the previous id, never an error code; they succeed only with
        # CAP_SET[UG]ID in effect (or an id among the real/effective/saved ones), and
        # setresuid sets fsuid to the euid and clears the effective caps (KEEPCAPS keeps
        # the permitted ones): fsgid first, fsuid after the caps are made effective again.
        t.add(uapi.SYS_setfsgid, gid[3], what="setfsgid")
        t.add(uapi.SYS_setresuid, uid[0], uid[1], uid[2], what="setresuid")
        if uid[3] != uid[1]:
            _capset(t, me.cap_prm, me.cap_prm, me.cap_inh)
            t.add(uapi.SYS_setfsuid, uid[3], what="setfsuid")
    if ids_change or caps_change:
        _capset(t, want.cap_eff, want.cap_prm, want.cap_inh)
        for cap in range(64):
            if want.cap_amb >> cap & 1:
                t.add(uapi.SYS_prctl, uapi.PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, cap, 0, 0,
                      what=f"raise ambient cap {cap}")
    if ids_change:
        t.add(uapi.SYS_prctl, _PR_SET_KEEPCAPS, 0, what="reset keep caps")
    if want.no_new_privs and not me.no_new_privs:
        t.add(uapi.SYS_prctl, uapi.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, what="no_new_privs")


def _queue(deferred: Deferred, t: blob.Table, pid: int, tid: int | None,
           sig: SigInfoRecord) -> None:
    info = t.data(bytes.fromhex(sig.raw))
    if tid is None:
        deferred.calls.append((uapi.SYS_rt_sigqueueinfo, (pid, sig.signo, info),
                               f"queue shared signal {sig.signo}"))
    else:
        deferred.calls.append((uapi.SYS_rt_tgsigqueueinfo, (pid, tid, sig.signo, info),
                               f"queue signal {sig.signo} to {tid}"))


def finish_table(core: TaskCore, mm: MmCore, window: Window, shmem: list[ShmemEntry],
                 objfds: dict[str, int], view: CredView, root: bool,
                 held: list[tuple[int, FileRecord]], pid: int,
                 shared: frozenset[str] = frozenset()) -> tuple[blob.Table, Deferred]:
    """The table run after the pages are written, and the calls deferred past it.

    shmem: every shared memory object; each task unmaps its inherited whole mapping of
    each, then the root seals the memfds. objfds: the memfd and mapped unlinked files'
    fds every task inherited (closed). held: the task's fds with their descriptions
    (owners, signals). pid: the task, as the engine sees it. shared: the tables
    (TaskEntry.shared) the task shares with its parent, which set them up: what belongs to
    them is not done again (the address space: mappings and mm fields; the fd table: the
    object copies; fs: the root)."""
    t = blob.Table()
    deferred = Deferred()
    deferred.drain = (t.data(struct.pack("<Q", (1 << 64) - 1)), t.data(bytes(16)))
    own_mm = "vm" not in shared
    for s in shmem if own_mm else []:
        t.add(uapi.SYS_munmap, window.shmem_tmp[s.id], s.size, what=f"unmap shmem {s.id} copy")
    for s in shmem:
        if root and s.kind == "memfd" and s.seals:
            t.add(uapi.SYS_fcntl, objfds[s.id], _F_ADD_SEALS, s.seals, what=f"seal {s.id}")
    # (a task sharing its parent's address space got its fd table without them)
    for sid, fd in sorted(objfds.items()) if own_mm and "files" not in shared else []:
        t.add(uapi.SYS_close, fd, what=f"close {sid} (restore's copy)")
    exe = mm.exe or core.exe
    if own_mm:
        _mm_map(t, mm, None if exe and _is_own_exe(exe, pid) else exe)
    _sigactions(t, core)
    t.add(uapi.SYS_personality, core.personality, what="personality")
    if own_mm:
        thp_part(t, core)
        membarrier_part(t, core)
    fown_part(t, held)
    if core.root != "/" and "fs" not in shared:
        t.add(uapi.SYS_chroot, t.cstr(core.root), what=f"chroot {core.root}")
    main = next(x for x in core.threads if x.tid == core.pid)
    if core.child_subreaper:
        t.add(uapi.SYS_prctl, uapi.PR_SET_CHILD_SUBREAPER, 1, what="child subreaper")
    _thread_part(t, main, core.creds, view, root)
    for it in core.itimers:
        # An expired periodic ITIMER_REAL (value 0, SIGALRM pending) must be re-armed.
        value = it.value_us or it.interval_us
        if it.which != _ITIMER_REAL:  # the tick setitimer adds is in the dumped value
            value = max(1, value - ksys.cpu_itimer_slack_us())
        tv = struct.pack("<4q", it.interval_us // 10**6, it.interval_us % 10**6,
                         value // 10**6, value % 10**6)
        deferred.calls.append((uapi.SYS_setitimer, (it.which, t.data(tv), 0),
                               f"setitimer {it.which}"))
    _posix_timers(t, deferred, core)
    # The task queues them to itself: ids as its own pid namespace has them.
    pid = main.ns_tid[-1] if main.ns_tid else core.pid
    # A pending SIGSTOP is not queued (it cannot be blocked: the engine's own steps would
    # take it); the task is left in group-stop instead, which is what it would do.
    for th in core.threads:
        for sig in th.pending:
            if sig.signo != uapi.SIGSTOP:
                _queue(deferred, t, pid, th.ns_tid[-1] if th.ns_tid else th.tid, sig)
    for sig in core.shared_pending:
        if sig.signo != uapi.SIGSTOP:
            _queue(deferred, t, pid, None, sig)
    return t, deferred


def close_table(t: blob.Table, deferred: Deferred, core: TaskCore) -> None:
    """The last entries of a state table (once every other was added): the signals the
    restore made pending taken away (DRAIN_ENTRIES; the engine takes what is left, see
    Deferred.drained), then the dumpable flag set as dumped: credential changes (ours in
    a new user namespace, the dumped ones restored by every thread's table, which run
    before this one) make the kernel clear it. (In the table, not as calls of their own
    after it: each such call is a round trip through every task, ~1.5 ms for 50.)"""
    assert deferred.drain is not None
    sigset, zero = deferred.drain
    for _ in range(DRAIN_ENTRIES):
        deferred.drained.append(t.slot())
        t.add(uapi.SYS_rt_sigtimedwait, sigset, 0, zero, 8, may_fail=True,
              store=deferred.drained[-1], what="take a signal the restore made pending")
    t.add(uapi.SYS_prctl, uapi.PR_SET_DUMPABLE, core.dumpable, 0, 0, 0, what="dumpable")


def _sigactions(t: blob.Table, core: TaskCore) -> None:
    """Every signal's action: one rows entry (62 entries and structs a task cost a tree's
    restore milliseconds to make and encode). SIGTRAP's too, though the table ends in a
    trap: the tables run with SIGTRAP unblocked (restorer._TABLE_MASK), so the trap does
    not reset it. (All of them: what a task inherited is not the engine's own, e.g.
    glibc's SIGSETXID handler once the root changed its ids in a user namespace.)"""
    actions = [sa for sa in core.sigactions if sa.signo not in (uapi.SIGKILL, uapi.SIGSTOP)]
    if not actions:
        return
    structs = t.data(b"".join(_KSIGACTION.pack(sa.handler, sa.flags, sa.restorer, sa.mask)
                              for sa in actions))
    # rt_sigaction(signo, act, NULL, 8), act patched in below
    rows = array("q", bytes(blob.ROW_SIZE * len(actions)))
    rows[0::6] = array("q", [sa.signo for sa in actions])
    rows[3::6] = array("q", [8]) * len(actions)
    at = t.rows(uapi.SYS_rt_sigaction, rows.tobytes(),
                what=lambda i: f"sigaction {actions[i].signo}")
    t.patch_addresses(blob.DataRef(at.offset + 8), len(actions), blob.ROW_SIZE, structs,
                      _KSIGACTION.size)


def _posix_timers(t: blob.Table, deferred: Deferred, core: TaskCore) -> None:
    """Create the POSIX timers with their dumped ids (the kernel takes each from the id
    argument while PR_TIMER_CREATE_RESTORE_IDS is on), then arm them: among the last
    calls, so the least possible time passes before the task runs."""
    if not core.posix_timers:
        return
    ns_tid = {th.tid: th.ns_tid[-1] if th.ns_tid else th.tid for th in core.threads}
    # prctl wants its unused arguments 0 (run_one leaves other registers as they are)
    ids = (uapi.PR_TIMER_CREATE_RESTORE_IDS, uapi.PR_TIMER_CREATE_RESTORE_IDS_ON, 0, 0, 0)
    deferred.calls.append((uapi.SYS_prctl, ids, "timer ids on"))
    for pt in core.posix_timers:
        tid = ns_tid[pt.notify_tid] if pt.notify & uapi.SIGEV_THREAD_ID else 0
        # struct sigevent: sigev_value, sigev_signo, sigev_notify, then the thread id
        ev = struct.pack("<Qiii", pt.sigev_value, pt.signo, pt.notify, tid).ljust(64, b"\0")
        deferred.calls.append((uapi.SYS_timer_create,
                               (pt.clock_id, t.data(ev), t.data(struct.pack("<q", pt.id))),
                               f"create POSIX timer {pt.id}"))
    ids = (uapi.PR_TIMER_CREATE_RESTORE_IDS, uapi.PR_TIMER_CREATE_RESTORE_IDS_OFF, 0, 0, 0)
    deferred.calls.append((uapi.SYS_prctl, ids, "timer ids off"))
    for pt in core.posix_timers:
        # value 0 with an interval: a periodic timer not re-armed yet (as for itimers)
        value = pt.value_ns or pt.interval_ns
        if value:
            spec = struct.pack("<4q", *divmod(pt.interval_ns, 10**9), *divmod(value, 10**9))
            deferred.calls.append((uapi.SYS_timer_settime, (pt.id, 0, t.data(spec), 0),
                                   f"arm POSIX timer {pt.id}"))


def ends_stopped(core: TaskCore) -> bool:
    """Whether the task must be left in group-stop: dumped stopped, or with a SIGSTOP
    pending (not queued again, see finish_table)."""
    pending = core.shared_pending + [s for th in core.threads for s in th.pending]
    return core.state == "stopped" or any(s.signo == uapi.SIGSTOP for s in pending)


def _thread_part(t: blob.Table, th: ThreadCore, creds: Creds, view: CredView,
                 root: bool) -> None:
    """What each thread sets for itself; credentials last (raw set*id calls change only
    the calling thread, and the privileged steps must come before)."""
    _sigaltstack(t, th)
    if th.comm:
        t.add(uapi.SYS_prctl, uapi.PR_SET_NAME, t.cstr(os.fsencode(th.comm)[:15]),
              what="thread name")
    # The root's parent is now the engine, which exits right away: a parent-death signal
    # there would fire at once, so only tasks whose parent is restored with them get it.
    if th.pdeath_signal and not root:
        t.add(uapi.SYS_prctl, uapi.PR_SET_PDEATHSIG, th.pdeath_signal, what="pdeath signal")
    if th.robust_list is not None:
        t.add(uapi.SYS_set_robust_list, th.robust_list, th.robust_list_len or 24,
              what="set_robust_list")
    sched_part(t, th)
    if th.clear_child_tid is not None:
        t.add(uapi.SYS_set_tid_address, th.clear_child_tid, what="set_tid_address")
    if th.rseq is not None and th.rseq.ptr:
        t.add(uapi.SYS_rseq, th.rseq.ptr, th.rseq.size, 0, th.rseq.signature,
              what=f"register rseq at {th.rseq.ptr:#x}")
    _creds(t, creds, view)


def thread_table(core: TaskCore, th: ThreadCore, view: CredView, root: bool) -> blob.Table:
    """The table a non-main thread runs for itself once it exists."""
    t = blob.Table()
    _thread_part(t, th, core.creds, view, root)
    return t


def table_bytes_bound(core: TaskCore, mm: MmCore) -> int:
    """An upper bound of the finishing table's size (to size the region before forking)."""
    nsig = sum(len(th.pending) for th in core.threads) + len(core.shared_pending)
    entries = 64 + 64 + 32 + 16  # sigactions, capability bits, ids, the rest
    data = 64 * 32 + nsig * 128 + len(core.posix_timers) * 128 + len(mm.auxv) * 8 + 256 + 4 * len(core.creds.groups)
    paths = len(os.fsencode(mm.exe or core.exe or "")) + len(os.fsencode(core.root)) + 2
    fown = len(core.fds) * FOWN_BYTES_PER_FD
    return entries * blob.ENTRY_SIZE + data + paths + fown + 4096
