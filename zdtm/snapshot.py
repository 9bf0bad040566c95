"""Snapshot of a stopped process tree (and of the harness itself) for the per-iteration checks.

``capture(root_pid)`` records what a test's processes can observe of themselves, normalised so
that two snapshots of one correctly restored tree are equal even though kernel object ids
(inode numbers of pipes, sockets, namespaces, shmem objects) and, in the ns flavours, the pids
seen from outside have all changed:

- processes are keyed by their pid in their own pid namespace (the last NSpid entry); ppid,
  pgid and sid are given the same way, the root's ppid as "outside";
- an ipc namespace of the tree's own is read whole (zdtm.ipcstate: SysV objects, sysctls);
- kernel ids become structural labels named after the object's first holder, walking
  processes by pid and fds/VMAs by number/address: "pipe[pid 1 fd 3]", "ofd[pid 1 fd 1]"
  (one open file description shared by several fds), "obj[pid 1 7f0000000000]" (a deleted
  or anonymous shared object), "uts[pid 1]" (a namespace other than the harness's own);
- maps are merged where the kernel could have split or merged them (see ``_merge``) and
  userfaultfd VmFlags are dropped; memory is digested per page (zdtm.memory), with the
  kernel-written fields of every thread's rseq area masked out.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import re
import signal
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from stat import S_ISFIFO, S_ISSOCK

from zdtm import (
    filestate,
    ipcstate,
    memory,
    plumbing,
    proc,
    ptrace_visit,
    sharing,
    taskattrs,
    ttystate,
)

# VmFlags that legitimately differ across a restore: userfaultfd registration (lazy pages,
# dirty tracking), soft-dirty, and VM_ACCOUNT (commit accounting of a private writable
# mapping that was later mprotect()ed read-only; invisible to the process).
IGNORED_VMFLAGS = frozenset({"um", "uw", "ui", "sd", "ac"})
NS_KINDS = ("pid", "pid_for_children", "mnt", "net", "uts", "ipc", "user", "cgroup", "time",
            "time_for_children")
# Offsets of the fields of struct rseq the kernel rewrites on every return to user space:
# cpu_id_start + cpu_id (0..8) and node_id + mm_cid (20..28).
RSEQ_KERNEL_FIELDS = ((0, 8), (20, 8))
# /proc/PID/status fields a task can observe of itself (ids as seen from the harness).
PROCESS_STATUS = ("Umask", "Uid", "Gid", "Groups", "ShdPnd", "SigIgn", "SigCgt",
                  "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
                  "Seccomp_filters")
THREAD_STATUS = ("SigPnd", "SigBlk")
ZOMBIE_STATUS = ("Uid", "Gid", "Groups")
IN_SYSCALL = "syscall"  # thread attribute: the syscall it is stopped in; not compared itself
# Syscalls that run with a temporary signal mask (the real one is saved in the kernel and
# put back on the way out): SigBlk of a thread stopped in one of them is not its own mask.
# x86_64: rt_sigtimedwait, rt_sigsuspend, pselect6, ppoll, epoll_pwait, io_pgetevents,
# epoll_pwait2.
TEMP_MASK_SYSCALLS = frozenset({"128", "130", "270", "271", "281", "333", "441"})
_JOB_CONTROL = 1 << (signal.SIGSTOP - 1) | 1 << (signal.SIGCONT - 1)
_KERNEL_ID = re.compile(r"^([a-z_]+):\[(\d+)\]$")  # pipe:[123], socket:[5], pidfd:[7]
_CLONE_NEWUTS = 0x04000000
LAZY_TIMEOUT = 120.0  # for a lazy-pages daemon to serve every page of one process
OUTSIDE = "outside"


@dataclass(frozen=True)
class FdState:
    """One fd: what it points to (normalised), open flags, offset, and description sharing."""

    target: str
    flags: int
    pos: int
    shared: str | None = None  # "ofd[pid P fd F]": one open file description with other fds
    extra: tuple[tuple[str, str], ...] = ()  # stable type-specific fdinfo fields
    raw: str = field(default="", compare=False)  # the link as read, for messages

    def describe(self) -> str:
        """E.g. "/tmp/x (flags O_RDONLY, pos 0)"."""
        return f"{self.target} (flags {proc.format_open_flags(self.flags)}, pos {self.pos})"


@dataclass(frozen=True)
class VmaState:
    """A normalised VMA; ``digest`` holds 8 bytes per page (None: not readable)."""

    start: int
    end: int
    perms: str
    path: str  # "" for anonymous memory
    offset: int | None  # file/object offset; None for private anonymous memory
    object_id: str | None  # "obj[pid P ADDR]": deleted/anonymous objects (shmem, memfd, SysV)
    flags: frozenset[str]
    digest: bytes | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        """E.g. "7f00..7f10 rw-p anon" or "7f00..7f10 r--p /tmp/f"."""
        what = self.path or "anon"
        if self.object_id:
            what += f" [{self.object_id}]"
        return f"{self.start:x}..{self.end:x} {self.perms} {what}"

    def same_layout(self, other: VmaState) -> bool:
        """Equal apart from the content digest."""
        return self == other


@dataclass
class ProcState:
    """One process of the tree as it can observe itself."""

    pid: int  # in its own pid namespace
    real_pid: int  # as seen by the harness (differs from pid in the ns flavours)
    ppid: int | str  # OUTSIDE for the root and for parents outside the tree
    pgid: int
    sid: int
    state: str
    comm: str
    threads: tuple[int, ...]  # thread ids in the process's pid namespace
    attrs: dict[str, str] = field(default_factory=dict)  # creds, signals, limits, cwd, ...
    thread_attrs: dict[int, dict[str, str]] = field(default_factory=dict)  # SigBlk, SigPnd
    rseq: dict[int, ptrace_visit.RseqConfig | None] = field(default_factory=dict)
    fds: dict[int, FdState] = field(default_factory=dict)
    maps: list[VmaState] = field(default_factory=list)
    namespaces: dict[str, str] = field(default_factory=dict)
    sharing: dict[str, str] = field(default_factory=dict)  # kernel table -> class label
    taskattrs: dict[str, str] = field(default_factory=dict)  # prctl, sched, ioprio, ...
    files: dict[int, dict[str, str]] = field(default_factory=dict)  # fd -> file attributes
    tty_fds: dict[int, dict[str, str]] = field(default_factory=dict)  # fd -> termios, winsize
    tty: dict[str, str] = field(default_factory=dict)  # controlling tty, foreground pgrp

    def name(self) -> str:
        """How messages name the process: "pid 5 [12345] (comm)" (outer pid when different)."""
        outer = f" [{self.real_pid}]" if self.real_pid != self.pid else ""
        return f"pid {self.pid}{outer} ({self.comm})"


@dataclass
class TreeState:
    """A snapshot of a whole stopped tree."""

    root: int  # the root's pid in its own pid namespace
    procs: dict[int, ProcState]
    uts: dict[str, tuple[str, str]] = field(default_factory=dict)  # label -> (host, domain)
    userns_maps: dict[str, tuple[str, str]] = field(default_factory=dict)  # label -> maps
    cow: sharing.CowPairs = field(default_factory=dict)  # pages shared copy-on-write
    ipc: dict[str, ipcstate.IpcState] = field(default_factory=dict)  # label -> its objects
    notes: list[str] = field(default_factory=list)  # what could not be captured, and why


def with_disk_of(snap: TreeState, later: TreeState) -> TreeState:
    """``snap`` with the on-disk attributes of its linked regular files (DISK_ATTRS) as
    ``later`` saw them: a snapshot restored after the tree went on writing finds its files
    as the tree left them (an unlinked file's content is in the image, and stays as is)."""
    procs = {}
    for pid, p in snap.procs.items():
        q = later.procs.get(pid)
        files = dict(p.files)
        for fd, attrs in p.files.items():
            now = q.files.get(fd) if q is not None else None
            then_fd, now_fd = p.fds.get(fd), q.fds.get(fd) if q is not None else None
            if (now is None or then_fd is None or now_fd is None
                    or then_fd.target != now_fd.target or then_fd.target.endswith(proc.DELETED)):
                continue
            files[fd] = attrs | {k: now[k] for k in filestate.DISK_ATTRS
                                 if k in attrs and k in now}
        procs[pid] = replace(p, files=files)
    return replace(snap, procs=procs)


@dataclass
class OwnState:
    """The harness's own resources: fds, child processes, mounts of its mount namespace."""

    fds: dict[int, str]
    children: dict[int, str]  # pid -> "comm: cmdline"
    mounts: frozenset[tuple[str, str, str]]  # (mount point, fs type, source)


class _Labeller:
    """Names kernel objects after their first holder in walk order: "pipe[pid 1 fd 3]".

    A name depends only on the object's own holders, so a process lost by a restore does not
    rename the objects of the others (numbering in order of appearance would), and it tells
    a person where to look.
    """

    def __init__(self) -> None:
        self._ids: dict[tuple[str, object], str] = {}

    def label(self, kind: str, key: object, holder: str) -> str:
        full = (kind, key)
        if full not in self._ids:
            self._ids[full] = f"{kind}[{holder}]"
        return self._ids[full]


# ---- the tree --------------------------------------------------------------------------------


def _walk(root_pid: int) -> list[int]:
    """Root and all descendants (breadth first, children in pid order), as outer pids."""
    if not os.path.exists(f"/proc/{root_pid}"):
        raise ProcessLookupError(f"capture: pid {root_pid} does not exist")
    return [root_pid, *plumbing.descendants(root_pid)]


def _inner(status: dict[str, str], key: str, fallback: int) -> int:
    ids = proc.status_ids(status, key)
    return ids[-1] if ids else fallback


def _base_state(pid: int) -> tuple[ProcState, int, dict[int, int]]:
    """ProcState skeleton of PID, its outer ppid, and {outer tid: inner tid}."""
    stat = proc.parse_stat(proc.read_text(f"/proc/{pid}/stat"))
    status = proc.parse_status(proc.read_text(f"/proc/{pid}/status"))
    tids: dict[int, int] = {}
    per_thread: dict[int, dict[str, str]] = {}
    for tid in proc.read_tids(pid):
        try:
            tstatus = proc.parse_status(proc.read_text(f"/proc/{pid}/task/{tid}/status"))
        except FileNotFoundError:
            continue
        tids[tid] = _inner(tstatus, "NSpid", tid)
        if stat.state != "Z":
            attrs = {k: _pending(tstatus, k) for k in THREAD_STATUS if k in tstatus}
            attrs[IN_SYSCALL] = _syscall_nr(pid, tid)
            per_thread[tids[tid]] = attrs
    state = ProcState(
        pid=_inner(status, "NSpid", pid),
        real_pid=pid,
        ppid=OUTSIDE,
        pgid=_inner(status, "NSpgid", stat.pgrp),
        sid=_inner(status, "NSsid", stat.session),
        state=stat.state,
        comm=stat.comm,
        threads=tuple(sorted(tids.values())),
        attrs=_attrs(pid, stat, status),
        thread_attrs=per_thread,
        taskattrs=taskattrs.read(pid, status) if stat.state != "Z" else {},
    )
    return state, stat.ppid, tids


def _syscall_nr(pid: int, tid: int) -> str:
    """The syscall a stopped thread is in ("-1": none), from /proc/PID/task/TID/syscall."""
    try:
        return proc.read_text(f"/proc/{pid}/task/{tid}/syscall").split()[0]
    except (OSError, IndexError):
        return "?"


def _pending(status: dict[str, str], key: str) -> str:
    """A status value; for pending-signal masks without SIGSTOP/SIGCONT, which belong to job
    control of the harness and the engine (a restored tree left stopped has SIGSTOP pending;
    the SIGCONT that resumes it discards it)."""
    if key not in ("SigPnd", "ShdPnd"):
        return status[key]
    return f"{int(status[key], 16) & ~_JOB_CONTROL:016x}"


def _attrs(pid: int, stat: proc.Stat, status: dict[str, str]) -> dict[str, str]:
    """Process-wide attributes a task can observe: creds, signal dispositions, umask, limits,
    cwd/root, personality, scheduling, exit signal."""
    if stat.state == "Z":
        # a zombie can neither take a signal nor run: only who it was and how it reports
        # its exit are observable (its signal dispositions are whatever exit left there)
        return {k: status[k] for k in ZOMBIE_STATUS if k in status} | {
            "exit_signal": str(stat.exit_signal)}
    out = {k: _pending(status, k) for k in PROCESS_STATUS if k in status}
    out.update(nice=str(stat.nice), exit_signal=str(stat.exit_signal),
               policy=str(stat.policy), rt_priority=str(stat.rt_priority))
    try:
        out["personality"] = proc.read_text(f"/proc/{pid}/personality").strip()
        for name, value in proc.parse_limits(proc.read_text(f"/proc/{pid}/limits")).items():
            out[f"limit {name}"] = value
        out["cwd"] = os.readlink(f"/proc/{pid}/cwd")
        out["root"] = os.readlink(f"/proc/{pid}/root")
    except OSError:
        pass  # a zombie has neither cwd nor root
    return out


def _prefault(ps: ProcState, notes: list[str]) -> list[proc.MapsEntry]:
    """The process's smaps entries, once the lazy-pages daemon of a lazily restored process
    has served all its pages (memory.prefault_lazy), before anything reads them through
    /proc/PID/mem: the ptrace visit reads and writes below the stack pointer, and a
    restored tree may be captured before the daemon has delivered every page (EIO there:
    rseq not masked, in-task attributes absent)."""
    if ps.state == "Z":
        return []
    entries = proc.parse_smaps(proc.read_text(f"/proc/{ps.real_pid}/smaps"))
    why = memory.prefault_lazy(ps.real_pid, entries, LAZY_TIMEOUT)
    if why:
        notes.append(why)
    return entries


def _visit(ps: ProcState, tids: dict[int, int], notes: list[str]) -> None:
    """One ptrace visit per thread: ps.rseq (None where it could not be read: the area then
    stays unmasked) and, in the main thread, the in-task part of ps.taskattrs."""
    if ps.state == "Z":
        return
    seccomp = ps.attrs.get("Seccomp", "0") != "0"
    if seccomp:
        notes.append(f"{ps.name()}: under seccomp: {', '.join(taskattrs.IN_TASK)} not read")
    for outer, inner in tids.items():
        in_task = outer == ps.real_pid and not seccomp
        try:
            seen = ptrace_visit.visit(outer, in_task=in_task)
        except OSError as e:
            ps.rseq[inner] = None
            notes.append(f"{ps.name()} tid {inner}: rseq not read, not masked"
                         + (f", {', '.join(taskattrs.IN_TASK)} not read" if in_task else "")
                         + f": {e}")
            continue
        ps.rseq[inner] = seen.rseq
        ps.taskattrs.update(seen.in_task)


def _wait_stopped_again(tids: list[int], deadline: float) -> None:
    """After a ptrace detach a thread is briefly running on its way back into group-stop."""
    for tid in tids:
        while time.monotonic() < deadline:
            try:
                state = proc.parse_stat(proc.read_text(f"/proc/{tid}/stat")).state
            except FileNotFoundError:
                break
            if state != "R":
                break
            time.sleep(0.001)


# ---- fds -------------------------------------------------------------------------------------

# fdinfo fields that are part of an fd's observable state and stable across a restore
# (timerfd's it_value is the time left: it moves).
_STABLE_FDINFO = ("eventfd-count", "eventfd-semaphore", "sigmask", "clockid", "settime flags",
                  "it_interval", "tfd", "lock", "inotify wd", "fanotify flags", "fanotify ino",
                  "fanotify mnt_id", "fanotify sdev", "NSpid")
# Parts that a restore renews and the rest of the snapshot already judges: an epoll watch
# line's "pos:P ino:I sdev:D" of the watched file (its fd number names it), and a lock
# line's "1: " counter, owner pid (host view) and device:inode.
# A fanotify mount mark's mount id (a new mount namespace numbers its mounts anew: the
# mark's mask and flags are judged), and a pidfd's pids in the namespaces above the
# tree's own (its pid inside is judged).
_RENEWED = {"tfd": (re.compile(r"\s+pos:.*$"), ""),
            "fanotify mnt_id": (re.compile(r"^[0-9a-f]+\s+"), ""),
            "NSpid": (re.compile(r"^.*\s"), ""),
            "lock": (re.compile(r"^\d+:\s+|\s+-?\d+\s+[0-9a-f]+:[0-9a-f]+:\d+(?=\s)"), " ")}


# Not compared: every open() on x86_64 sets it, a file made without open() (a pty slave
# from TIOCGPTPEER, an accepted socket) lacks it, no reopen can clear it, and on a 64-bit
# kernel it changes nothing.
_O_LARGEFILE = 0o100000


def stable_fdinfo(extra: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The fdinfo fields an fd must keep across C/R without what a restore renews, sorted
    (the kernel lists epoll watches in the order of their file pointers)."""
    out = []
    for k, v in extra:
        if k in _STABLE_FDINFO:
            if k in _RENEWED:
                pattern, by = _RENEWED[k]
                v = " ".join(pattern.sub(by, v).split())
            out.append((k, v))
    return tuple(sorted(out))


def _fd_table(
    ps: ProcState, labels: _Labeller
) -> dict[int, tuple[str, proc.FdInfo]]:
    raw = proc.read_fds(ps.real_pid)
    for fd in sorted(raw):
        target, info = raw[fd]
        m = _KERNEL_ID.match(target)
        holder = f"pid {ps.pid} fd {fd}"
        norm = labels.label(m.group(1), int(m.group(2)), holder) if m else target
        extra = stable_fdinfo(info.extra)
        ps.fds[fd] = FdState(norm, info.flags & ~_O_LARGEFILE, info.pos, None, extra, target)
    return raw


def _label_shared_descriptions(
    procs: list[ProcState], raws: dict[int, dict[int, tuple[str, proc.FdInfo]]],
    labels: _Labeller, notes: list[str],
) -> None:
    """Mark fds that share one open file description (dup, fork, SCM_RIGHTS) with kcmp."""
    groups: dict[tuple[str, int | None], list[tuple[ProcState, int]]] = {}
    for ps in procs:
        for fd, (target, info) in sorted(raws[ps.real_pid].items()):
            groups.setdefault((target, info.ino), []).append((ps, fd))

    def order(a: tuple[ProcState, int], b: tuple[ProcState, int]) -> int:
        res = ptrace_visit.kcmp_file(a[0].real_pid, a[1], b[0].real_pid, b[1])
        return {0: 0, 1: -1, 2: 1}.get(res, 1)

    for members in groups.values():
        if len(members) < 2:
            continue
        try:
            ranked = sorted(members, key=functools.cmp_to_key(order))
        except OSError as e:
            notes.append(f"open file description sharing not checked: {e}")
            return
        classes: list[list[tuple[ProcState, int]]] = [[ranked[0]]]
        for prev, cur in itertools.pairwise(ranked):
            if order(prev, cur) == 0:
                classes[-1].append(cur)
            else:
                classes.append([cur])
        # Name each class after its first member in walk order, not in kernel pointer order.
        rank = {(p.real_pid, fd): i for i, (p, fd) in enumerate(members)}
        for cls in classes:
            if len(cls) < 2:
                continue
            first, first_fd = min(cls, key=lambda m: rank[(m[0].real_pid, m[1])])
            label = labels.label("ofd", (first.real_pid, first_fd),
                                 f"pid {first.pid} fd {first_fd}")
            for ps, fd in cls:
                old = ps.fds[fd]
                ps.fds[fd] = FdState(old.target, old.flags, old.pos, label, old.extra, old.raw)


def _file_states(procs: list[ProcState], raws: dict[int, dict[int, tuple[str, proc.FdInfo]]],
                 notes: list[str]) -> None:
    """ps.files, ps.tty_fds and ps.tty of every live process."""
    inner = {ps.real_pid: ps.pid for ps in procs}
    ttys: dict[int, str] = {}  # device -> label of its first fd in walk order
    for ps in procs:
        if ps.state == "Z":
            continue
        try:
            pidfd = os.pidfd_open(ps.real_pid)
        except OSError as e:
            notes.append(f"{ps.name()}: file owners and ttys not read: {e}")
            continue
        try:
            for fd, (target, _info) in sorted(raws[ps.real_pid].items()):
                _file_state(ps, fd, target, pidfd, inner, ttys)
        finally:
            os.close(pidfd)
    for ps in procs:
        if ps.state == "Z":
            continue
        stat = proc.parse_stat(proc.read_text(f"/proc/{ps.real_pid}/stat"))
        ps.tty = ttystate.controlling(stat.tty_nr, stat.tpgid, ttys, inner)


def _file_state(ps: ProcState, fd: int, target: str, pidfd: int, inner: dict[int, int],
                ttys: dict[int, str]) -> None:
    try:
        attrs = filestate.regular(ps.real_pid, fd, target, inner)
        with filestate.fd_copy(pidfd, fd) as copy:
            if copy is None:
                return  # closed meanwhile
            attrs.update(filestate.owner(copy, inner))
            mode = os.fstat(copy).st_mode
            if S_ISFIFO(mode):
                attrs.update(filestate.pipe(copy))
            elif S_ISSOCK(mode):
                attrs.update(filestate.unix_socket(copy))
            rdev = ttystate.is_tty(ps.real_pid, fd)
            if rdev is not None:
                ttys.setdefault(rdev, f"tty[pid {ps.pid} fd {fd}]")
                ps.tty_fds[fd] = {"terminal": ttys[rdev], **ttystate.terminal(copy)}
    except FileNotFoundError:
        return
    if attrs:
        ps.files[fd] = attrs


def _sharing(tree: TreeState, procs: list[ProcState]) -> None:
    """Kernel tables and copy-on-write pages shared between the live processes."""
    live = {ps.real_pid: ps for ps in procs if ps.state != "Z"}
    members = [(outer, ps.pid) for outer, ps in live.items()]
    try:
        for outer, found in sharing.table_classes(members).items():
            live[outer].sharing = found
        tree.cow = _without_rseq_pages(sharing.cow_pairs(members), tree)
    except OSError as e:
        tree.notes.append(f"sharing between processes not checked: {e}")


def _without_rseq_pages(cow: sharing.CowPairs, tree: TreeState) -> sharing.CowPairs:
    """Leave out the pages holding a registered rseq area: the kernel writes its cpu
    fields whenever the thread runs on another cpu, which breaks the sharing of that page
    whatever an engine does (the memory check masks those fields likewise)."""
    def rseq_pages(pid: int) -> set[int]:
        return {addr & ~(proc.PAGE_SIZE - 1) for addr, _ in _rseq_masks(tree.procs[pid])}
    out = {}
    for (pa, pb), pages in cow.items():
        skip_a, skip_b = rseq_pages(pa), rseq_pages(pb)
        kept = frozenset((a, b) for a, b in pages if a not in skip_a and b not in skip_b)
        if kept:
            out[(pa, pb)] = kept
    return out


# ---- maps and memory -------------------------------------------------------------------------


def _rseq_masks(ps: ProcState) -> list[tuple[int, int]]:
    masks: list[tuple[int, int]] = []
    for conf in ps.rseq.values():
        if conf is not None and conf.pointer:
            masks.extend((conf.pointer + off, ln) for off, ln in RSEQ_KERNEL_FIELDS)
    return masks


def _address_space_masks(procs: list[ProcState]) -> dict[int, list[tuple[int, int]]]:
    """real pid -> the rseq areas to mask in its memory: those of every process sharing
    its address space (CLONE_VM), whose kernel-written fields change as those run."""
    masks = {ps.real_pid: _rseq_masks(ps) for ps in procs}
    live = [ps.real_pid for ps in procs if ps.state != "Z"]
    out = dict(masks)
    for i, a in enumerate(live):
        for b in live[i + 1:]:
            try:
                same = sharing.kcmp(a, b, sharing.KCMP_KINDS["vm"]) == 0
            except OSError:
                continue
            if same:
                out[a] = out[a] + masks[b]
                out[b] = out[b] + masks[a]
    return out


def _to_vma(
    ps: ProcState, entry: proc.MapsEntry, digest: bytes | None, labels: _Labeller
) -> VmaState:
    filebacked = entry.inode != 0 and entry.path.startswith("/")
    object_id = None
    if entry.deleted:
        holder = f"pid {ps.pid} {entry.start:x}"
        object_id = labels.label("obj", (entry.dev, entry.inode), holder)
    return VmaState(
        start=entry.start,
        end=entry.end,
        perms=entry.perms,
        path=entry.path,
        offset=entry.offset if filebacked or entry.shared else None,
        object_id=object_id,
        flags=entry.vmflags - IGNORED_VMFLAGS,
        digest=digest,
    )


def _merge(vmas: list[VmaState]) -> list[VmaState]:
    """Merge adjacent VMAs a process cannot tell apart: same perms, flags, path and object,
    and for file/object mappings contiguous offsets. Private anonymous neighbours merge
    regardless of their vm_pgoff, which depends on mapping history (anon_vma, mremap)."""
    out: list[VmaState] = []
    for v in vmas:
        if out:
            p = out[-1]
            if (
                p.end == v.start and p.perms == v.perms and p.flags == v.flags
                and p.path == v.path and p.object_id == v.object_id
                and (p.offset is None) == (v.offset is None)
                and (p.offset is None or p.offset + (p.end - p.start) == v.offset)
            ):
                digest = None
                if p.digest is not None and v.digest is not None:
                    digest = p.digest + v.digest
                out[-1] = VmaState(p.start, v.end, p.perms, p.path, p.offset, p.object_id, p.flags,
                                   digest)
                continue
        out.append(v)
    return out


def _maps_and_memory(
    ps: ProcState, entries: list[proc.MapsEntry], labels: _Labeller,
    file_cache: dict[tuple[str, int], int | None], masks: list[tuple[int, int]],
) -> None:
    """ps.maps from the process's smaps ``entries`` (read by _prefault: the stopped tree's
    maps do not change meanwhile), each VMA with its page digests."""
    if ps.state == "Z":
        return
    reader = memory.MemoryReader(ps.real_pid, file_cache)
    try:
        vmas = [_to_vma(ps, e, reader.digest(e, masks), labels) for e in entries]
    finally:
        reader.close()
    ps.maps = _merge(vmas)


# ---- namespaces ------------------------------------------------------------------------------


def _own_namespaces() -> dict[str, int]:
    out = {}
    for kind in NS_KINDS:
        try:
            out[kind] = proc.parse_ns_link(os.readlink(f"/proc/self/ns/{kind}"))[1]
        except OSError:
            continue
    return out


def _namespaces(ps: ProcState, own: dict[str, int], labels: _Labeller) -> dict[str, int]:
    """Fill ps.namespaces with labels ("host" = the harness's own); returns raw inode ids."""
    raw = {}
    for kind in NS_KINDS:
        try:
            ino = proc.parse_ns_link(os.readlink(f"/proc/{ps.real_pid}/ns/{kind}"))[1]
        except OSError:
            continue  # zombie, or a kind this kernel lacks
        raw[kind] = ino
        # pid_for_children shares the pid ns id space: label both kinds as "pid".
        base = kind.replace("_for_children", "")
        if own.get(base) == ino:
            ps.namespaces[kind] = "host"
        else:
            ps.namespaces[kind] = labels.label(base, ino, f"pid {ps.pid}")
    return raw


def _setns(fd: int, nstype: int) -> None:
    if plumbing.libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def read_uts(pid: int, timeout: float = 5.0) -> tuple[str, str]:
    """(hostname, domainname) of PID's uts namespace.

    uts setns is per thread, so a short-lived thread joins the namespace and reads
    /proc/sys/kernel/{hostname,domainname}, which report the reading thread's namespace.
    """
    result: dict[str, object] = {}

    def visit() -> None:
        own = os.open("/proc/thread-self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(f"/proc/{pid}/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, _CLONE_NEWUTS)
            try:
                result["names"] = (
                    proc.read_text("/proc/sys/kernel/hostname").strip(),
                    proc.read_text("/proc/sys/kernel/domainname").strip(),
                )
            finally:
                _setns(own, _CLONE_NEWUTS)
        except OSError as e:
            result["error"] = e
        finally:
            os.close(own)
            os.close(target)

    t = threading.Thread(target=visit, name=f"uts-{pid}", daemon=True)
    t.start()
    t.join(timeout)
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    if "names" not in result:
        raise TimeoutError(f"reading the uts names of pid {pid} timed out")
    return result["names"]  # type: ignore[return-value]


def _userns_maps(pid: int) -> tuple[str, str]:
    return (
        proc.read_text(f"/proc/{pid}/uid_map").strip(),
        proc.read_text(f"/proc/{pid}/gid_map").strip(),
    )


# ---- entry points ----------------------------------------------------------------------------


def capture(root_pid: int, *, ns: bool = False,
            held: Collection[int] | None = None) -> TreeState:
    """Snapshot the stopped tree under root_pid (root plus all descendants).

    With ns=True also the hostname/domainname of every uts namespace and the uid/gid maps of
    every user namespace of the tree. The namespace layout is captured always (in the h
    flavour every namespace must stay "host"). ``held``: the processes (pids in their own
    namespace) in a group-stop of their own as seen before the harness stopped the tree
    (plumbing.stopped_ids), recorded as the taskattr "stopped by signal"; None: not recorded.
    """
    pids = _walk(root_pid)
    notes: list[str] = []
    procs: list[ProcState] = []
    outer_ppid: dict[int, int] = {}
    smaps: dict[int, list[proc.MapsEntry]] = {}
    all_tids: list[int] = []
    for pid in pids:
        try:
            ps, ppid, tids = _base_state(pid)
        except FileNotFoundError:
            notes.append(f"pid {pid} vanished during the capture")
            continue
        smaps[pid] = _prefault(ps, notes)
        _visit(ps, tids, notes)
        all_tids.extend(tids)
        procs.append(ps)
        outer_ppid[pid] = ppid
    _wait_stopped_again(all_tids, time.monotonic() + 2.0)
    inner = {ps.real_pid: ps.pid for ps in procs}
    for ps in procs:
        if ps.real_pid != root_pid:
            ps.ppid = inner.get(outer_ppid[ps.real_pid], OUTSIDE)
    procs.sort(key=lambda p: (p.real_pid != root_pid, p.pid))
    for ps in procs:
        if held is not None and ps.state != "Z":
            ps.taskattrs["stopped by signal"] = "yes" if ps.pid in held else "no"

    labels = _Labeller()
    raws = {ps.real_pid: _fd_table(ps, labels) for ps in procs}
    _label_shared_descriptions(procs, raws, labels, notes)
    _file_states(procs, raws, notes)

    file_cache: dict[tuple[str, int], int | None] = {}
    masks = _address_space_masks(procs)
    try:
        for ps in procs:
            _maps_and_memory(ps, smaps[ps.real_pid], labels, file_cache,
                             masks[ps.real_pid])
    finally:
        memory.close_files(file_cache)

    tree = TreeState(root=procs[0].pid, procs={ps.pid: ps for ps in procs}, notes=notes)
    _sharing(tree, procs)
    own = _own_namespaces()
    for ps in procs:
        raw = _namespaces(ps, own, labels)
        ipc = ps.namespaces.get("ipc")
        if ipc and ipc != "host" and ipc not in tree.ipc and ps.state != "Z":
            tree.ipc[ipc] = ipcstate.capture(ps.real_pid, inner)
        if not ns or ps.state == "Z":
            continue
        uts = ps.namespaces.get("uts")
        if uts and uts not in tree.uts and "uts" in raw:
            tree.uts[uts] = read_uts(ps.real_pid)
        user = ps.namespaces.get("user")
        if user and user not in tree.userns_maps:
            tree.userns_maps[user] = _userns_maps(ps.real_pid)
    return tree


def own_state() -> OwnState:
    """The harness process's open fds, child processes (of every thread) and mounts."""
    fds: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            continue  # the directory fd listdir used, closed by now
    children: dict[int, str] = {}
    for pid in plumbing.children(os.getpid()):
        try:
            stat = proc.parse_stat(proc.read_text(f"/proc/{pid}/stat"))
            cmdline = proc.read_text(f"/proc/{pid}/cmdline").replace("\0", " ").strip()
        except FileNotFoundError:
            continue
        zombie = " <zombie>" if stat.state == "Z" else ""
        children[pid] = f"{stat.comm}{zombie}: {cmdline}"
    mounts = frozenset(proc.parse_mountinfo(proc.read_text("/proc/self/mountinfo")))
    return OwnState(fds=fds, children=children, mounts=mounts)
