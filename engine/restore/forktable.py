"""Make the new tree's tasks with one syscall table instead of a copy of Python in each.

A task set up by the interpreter (engine/restore/spawn.py `_task`) cost ~1.4 ms: the fork
of a 20 MB interpreter, then a few hundred copy-on-write faults as it runs Python. Most
tasks only need syscalls with arguments known before the first fork (setsid, setpgid,
clone3 with their pids, dup2s, closes, mmap, chdir, umask, prlimit, the ready and go
bytes, SIGSTOP), so the root builds every task's entries into one table and runs it with
blob.S table_call: each clone3 entry sends its child to that child's own entries
(F_CHILD_JUMPS), and no task but the root runs Python again. The children do not even
inherit the interpreter's memory (MADV_DONTFORK): a fork of it cost ~0.5 ms a task.

Every task's entries end in a SIGSTOP (the engine takes the task there) or an exit, so
where an entry fails its index says which one it was. A child writes that entry's report
on the error pipe and exits (blob.S child_fail; the engine reads it with decode_reports);
the root's own failure returns into its interpreter, which reports it as `_task` does. A
clone3 whose pid a thread that just ended still holds is retried in the table.

Premapped memory (engine/restore/premap.py) is built by syscalls too, its pages checked by
the root before the first fork and copied by each task with process_vm_readv. Trees that
need more than syscalls run the Python path instead (`unsupported` says why): fd tables
shared between tasks, descriptions opened by a session leader, pidfds, epoll watches,
POSIX locks, a pause requested at the files step.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine import faults
from engine.dump.intervals import normalise, subtract
from engine.images.records import RlimitRecord
from engine.kernel import blob, uapi
from engine.kernel import sys as ksys
from engine.kernel.structs import CloneArgs
from engine.restore import premap

if TYPE_CHECKING:  # spawn runs this module
    from engine.restore.spawn import TaskSetup, TreeSetup

_MASK64 = (1 << 64) - 1
_UINT_MAX = (1 << 32) - 1
_RLIM = struct.Struct("<QQ")
_ROW = struct.Struct("<6Q")
_SIGSET = struct.Struct("<Q")
_SIGACTION_DFL = bytes(32)  # struct kernel_sigaction with SIG_DFL, no flags, empty mask
_IOV = struct.Struct("<QQ")
_IOV_MAX = 1024
_RW = uapi.PROT_READ | uapi.PROT_WRITE
#: how long a wanted pid may still be held by a thread that just ended (the file
#: owner's, engine.restore.fsowner): clone3 is retried meanwhile, here and in spawn
PID_FREE_TIMEOUT = 2.0
_PID_RETRY_NS = 1_000_000
_PID_RETRIES = int(PID_FREE_TIMEOUT * 1e9) // _PID_RETRY_NS
_PID_RETRY_SLEEP = struct.pack("<qq", 0, _PID_RETRY_NS)
_REGION_PROT = uapi.PROT_READ | uapi.PROT_WRITE | uapi.PROT_EXEC
_REGION_FLAGS = uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS | uapi.MAP_FIXED_NOREPLACE

_SEP = "\x1f"  # between the parts of a step's `what`


@dataclass(frozen=True)
class _Step:
    """What an entry is for, formatted only when it fails (describe()). One step serves
    all the entries of a task alike. kind "": what is "what: strerror"; "clone": what
    is the child's pid and pids, SEP between; "limits": one "NAME to (soft, hard)" per
    row, SEP between; "fault": what is the message; "go": the engine's go byte."""

    pid: int  # the task (as the engine sees it) whose entry this is
    phase: str
    what: str
    kind: str = ""

    def report(self) -> bytes:
        """The text of a child's report of this step (blob.child_report)."""
        return f"{self.pid}\0{self.phase}\0{self.kind}\0{self.what}".encode()


def describe(kind: str, what: str, err: int, rows_left: int) -> str:
    """The message of a step (see _Step) whose entry failed with `err`; rows_left: a
    rows entry's rows left, the failed one included."""
    if kind == "fault":
        return what
    if kind == "clone":
        pid, pids = what.split(_SEP)
        return (f"pid {pid} is taken" if err == errno.EEXIST
                else f"clone3 with pid {pid} {pids}: {os.strerror(err)}")
    if kind == "limits":
        rows = what.split(_SEP)
        return f"cannot set limit {rows[len(rows) - rows_left]}: {os.strerror(err)}"
    return f"{what}: {os.strerror(err)}"


def decode_reports(raw: bytes) -> tuple[int, str, str] | None:
    """(pid, phase, message) of the first child report in `raw` (what a task's failed
    entry wrote on the error pipe), None when raw holds none."""
    for result, left, text in blob.parse_child_reports(raw):
        pid, phase, kind, what = text.decode(errors="replace").split("\0", 3)
        err = -result if -4096 < result < 0 else errno.EIO  # EIO: a zero_fails entry
        return int(pid), phase, describe(kind, what, err, left)
    return None


@dataclass
class Program:
    """Every task's entries in one table; steps[i] says what entry i is for."""

    table: blob.Table = field(default_factory=blob.Table)
    steps: list[_Step] = field(default_factory=list)
    fault: str | None = None  # the error of a fault injected at the files step
    forks: int = 0  # clone3 entries
    # page-aligned engine memory the tasks copy premapped pages from
    sources: list[tuple[int, int]] = field(default_factory=list)
    _data: dict[bytes, blob.DataRef] = field(default_factory=dict)
    _limits: dict[tuple[tuple[int, int, int], ...], blob.DataRef] = field(
        default_factory=dict)

    def add(self, step: _Step, nr: int, *args: blob.Arg, **kw: object) -> None:
        """Append one entry of `step`'s task (keywords as blob.Table.add)."""
        self.table.add(nr, *args, **kw)  # type: ignore[arg-type]
        self.steps.append(step)

    def data(self, payload: bytes) -> blob.DataRef:
        """Read-only bytes in the data area, once for every task that passes them."""
        ref = self._data.get(payload)
        if ref is None:
            ref = self._data[payload] = self.table.data(payload)
        return ref

    def limits(self, pid: int, limits: list[RlimitRecord]) -> None:
        """One rows entry of prlimit64 calls setting task pid's `limits` (its rows
        shared by the tasks with the same limits)."""
        key = tuple((lim.resource, lim.soft & _MASK64, lim.hard & _MASK64)
                    for lim in limits)
        ref = self._limits.get(key)
        if ref is None:
            structs = self.table.data(b"".join(_RLIM.pack(s, h) for _, s, h in key))
            ref = self._limits[key] = self.table.data(b"".join(
                _ROW.pack(0, res, 0, 0, 0, 0) for res, _, _ in key))
            for i in range(len(key)):  # each row's new limit: its struct
                self.table.patch_address(blob.DataRef(ref.offset + i * blob.ROW_SIZE + 16),
                                         blob.DataRef(structs.offset + i * _RLIM.size))
        self.table.rows_at(uapi.SYS_prlimit64, ref, len(key))
        self.steps.append(_Step(pid, "files", _SEP.join(
            f"{lim.name} to ({lim.soft}, {lim.hard})" for lim in limits), "limits"))

    def reports(self) -> list[blob.DataRef]:
        """Each entry's report for blob.LocalTable (then one for the table's end), one
        copy per step."""
        made: dict[int, blob.DataRef] = {}
        out = []
        for step in [*self.steps, _Step(self.steps[-1].pid, "fork", "ran past its table")]:
            ref = made.get(id(step))
            if ref is None:
                ref = made[id(step)] = self.table.data(blob.child_report(step.report()))
            out.append(ref)
        return out


def unsupported(tree: TreeSetup) -> str | None:
    """Why this tree needs the Python path (None: the table makes it)."""
    if blob.local_code() is None:
        return "no executable mapping in the engine"
    if os.environ.get(faults.PAUSE_ENV) == "files":
        return "a pause at the files step"
    plan = tree.files
    if plan.epolls.by_task or plan.posix_locks:
        return "epoll watches or POSIX locks"
    if any(rec.pidfd is not None for rec in plan.files.values()):
        return "pidfds"
    for t in tree.root.walk():
        if t.ctty_files or t.share_flags & uapi.CLONE_FILES:
            return "a shared fd table or a terminal's descriptions"
    return None


def build(tree: TreeSetup, ctl: list[int], by_file: dict[int, int]) -> Program:
    """The table of the whole tree, the root's entries first. ctl: the go, error and
    ready pipes' fds, then the fds every task keeps for the engine (the objects').
    Raises EngineError for a premapped page that fails its check."""
    for tp in tree.premap.values():
        premap.verify_writes(tp)
    prog = Program()
    if faults.ENV in os.environ and "files" in faults.requested():
        prog.fault = f"fault injected ({faults.ENV}={os.environ[faults.ENV]})"
    _block(prog, tree, tree.root, ctl, by_file)
    return prog


def _block(prog: Program, tree: TreeSetup, t: TaskSetup, ctl: list[int],
           by_file: dict[int, int]) -> None:
    """Task t's entries, then each child's (a block ends in a stop or an exit, never
    running into the next), which its clone3 entry sends the child to."""
    _session(prog, t)
    for semid, num, value in t.sems:
        prog.add(_Step(t.pid, "fork", f"semaphore set {semid} #{num}"),
                 uapi.SYS_semctl, semid, num, uapi.SETVAL, value)
    if tree.premap_areas:
        _premap(prog, tree, t)
    children: list[tuple[blob.EntryRef, TaskSetup]] = []
    for c in t.made_first():
        children.append((_clone(prog, t, c, c.share_flags), c))
        if c.pgid == c.inner_pid and c.sid != c.inner_pid:
            # made at once, as a shell does for a job: a sibling forked next joins it
            prog.add(_Step(t.pid, "fork", f"task {c.pid}: cannot make its process group"),
                     uapi.SYS_setpgid, 0, 0, use_saved=0b11)
    for c in t.adopted:
        children.append((_clone(prog, t, c, uapi.CLONE_PARENT), c))
    # comm first: a zombie shows it too
    prog.add(_Step(t.pid, "fork", "prctl(PR_SET_NAME)"), uapi.SYS_prctl,
             uapi.PR_SET_NAME, prog.data(os.fsencode(t.comm)[:15] + b"\0"))
    if t.zombie_status is not None:
        _exit_as(prog, t, t.zombie_status)
    else:
        _live(prog, tree, t, ctl, by_file)
    for label, c in children:
        label.index = len(prog.steps)
        _block(prog, tree, c, ctl, by_file)


def _session(prog: Program, t: TaskSetup) -> None:
    """As spawn._set_session: lead a session (taking its terminal) or a group again, or
    join the dumped group (in the session inherited, which plan_sessions made right)."""
    me = t.inner_pid
    step = _Step(t.pid, "fork", f"task {t.pid}: cannot restore session {t.sid} / "
                                f"process group {t.pgid}")
    if t.sid == me:
        prog.add(step, uapi.SYS_setsid)
        if t.ctty is not None:
            files = _Step(t.pid, "files", f"{t.ctty} (the controlling terminal)")
            prog.add(files, uapi.SYS_open, prog.data(os.fsencode(t.ctty) + b"\0"),
                     os.O_RDWR | os.O_NOCTTY, save=True)
            prog.add(files, uapi.SYS_ioctl, 0, uapi.TIOCSCTTY, 0, use_saved=0b1)
            prog.add(files, uapi.SYS_close, 0, use_saved=0b1)
    elif t.pgid is not None:
        # joining the group it is already in is allowed, and changes nothing
        prog.add(step, uapi.SYS_setpgid, 0, 0 if t.pgid == me else t.pgid)


def _premap(prog: Program, tree: TreeSetup, t: TaskSetup) -> None:
    """As premap.build, its pages checked beforehand (premap.verify_writes) and copied
    with process_vm_readv from the engine's buffers the task inherited."""
    step = _Step(t.pid, "mm", "premapping private memory")
    tp = tree.premap.get(t.pid)
    for lo, hi in subtract(tree.premap_areas, tp.keep if tp is not None else []):
        prog.add(step, uapi.SYS_munmap, lo, hi - lo)
    if tp is None:
        return
    for v, at in tp.fresh:
        flags, path = premap.fresh_mapping(v, tree.obj_fds())
        if path is None:
            prog.add(step, uapi.SYS_mmap, at, v.end - v.start, _RW, flags, -1, 0)
            continue
        prog.add(step, uapi.SYS_open, prog.data(os.fsencode(path) + b"\0"),
                 os.O_RDONLY | os.O_CLOEXEC, save=True)
        prog.add(step, uapi.SYS_mmap, at, v.end - v.start, _RW, flags, 0, v.pgoff,
                 use_saved=0b10000)
        prog.add(step, uapi.SYS_close, 0, use_saved=0b1)
    for lo, hi in tp.drops:
        prog.add(step, uapi.SYS_madvise, lo, hi - lo, uapi.MADV_DONTNEED)
    prog.sources += [(c.src & ~4095, (c.src + c.length + 4095) & ~4095) for c in tp.writes]
    for i in range(0, len(tp.writes), _IOV_MAX):
        group = tp.writes[i:i + _IOV_MAX]
        local = prog.table.data(b"".join(_IOV.pack(c.dst, c.length) for c in group))
        remote = prog.table.data(b"".join(_IOV.pack(c.src, c.length) for c in group))
        prog.add(step, uapi.SYS_process_vm_readv, t.inner_pid, local, len(group), remote,
                 len(group), 0)


def _clone(prog: Program, t: TaskSetup, c: TaskSetup, flags: int) -> blob.EntryRef:
    """Task t's clone3 of child c with its pids; returns the label of c's entries (set
    once they begin). The child's pid is saved (for the setpgid after it)."""
    pids = c.set_tid or [c.pid]
    args = CloneArgs()
    args.flags = flags
    # With CLONE_PARENT clone3 takes no exit signal: the child gets the creator's.
    args.exit_signal = 0 if flags & uapi.CLONE_PARENT else signal.SIGCHLD
    args.set_tid_size = len(pids)
    tids = prog.table.data(struct.pack(f"<{len(pids)}i", *pids))
    ref = prog.table.data(bytes(args))
    prog.table.patch_address(blob.DataRef(ref.offset + CloneArgs.set_tid.offset), tids)

    label = blob.EntryRef()
    prog.forks += 1
    prog.add(_Step(t.pid, "fork", f"{c.pid}{_SEP}{pids}", "clone"), uapi.SYS_clone3, ref,
             ctypes.sizeof(CloneArgs), save=True, jump=label,
             retry=(_PID_RETRIES, prog.data(_PID_RETRY_SLEEP)))
    return label


def _exit_as(prog: Program, t: TaskSetup, status: int) -> None:
    """As spawn._exit_as: end so that the parent's wait() sees `status`."""
    step = _Step(t.pid, "fork", f"task {t.pid}: exiting as it was dumped")
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        prog.add(step, uapi.SYS_prlimit64, 0, resource.RLIMIT_CORE,
                 prog.data(_RLIM.pack(0, 0)), 0)
        prog.add(step, uapi.SYS_rt_sigaction, sig, prog.data(_SIGACTION_DFL), 0, 8)
        prog.add(step, uapi.SYS_rt_sigprocmask, uapi.SIG_UNBLOCK,
                 prog.data(_SIGSET.pack(1 << (sig - 1))), 0, 8)
        prog.add(step, uapi.SYS_kill, t.inner_pid, sig)
    prog.add(step, uapi.SYS_exit_group, os.WEXITSTATUS(status))


def _live(prog: Program, tree: TreeSetup, t: TaskSetup, ctl: list[int],
          by_file: dict[int, int]) -> None:
    """A live task's fds, memory region, cwd, umask and limits; then the ready byte, the
    go byte, the control pipes closed and its SIGSTOP."""
    if prog.fault is not None:
        prog.add(_Step(t.pid, "files", prog.fault, "fault"), uapi.SYS_close, -1)
    if t.cwd_file is not None:
        prog.add(_Step(t.pid, "files", "fchdir"), uapi.SYS_fchdir, by_file[t.cwd_file])
    _place(prog, t, ctl, by_file)
    start, end = tree.region
    prog.add(_Step(t.pid, "files", "mmap of the runner region"), uapi.SYS_mmap,
             start, end - start, _REGION_PROT, _REGION_FLAGS, -1, 0)
    if t.cwd_file is None:
        prog.add(_Step(t.pid, "files", t.cwd), uapi.SYS_chdir,
                 prog.data(os.fsencode(t.cwd) + b"\0"))
    prog.add(_Step(t.pid, "files", "umask"), uapi.SYS_umask, t.umask)
    if t.limits:
        prog.limits(t.pid, t.limits)
    go_r, err_w, ready_w = ctl[:3]
    fork = _Step(t.pid, "fork", "the ready byte")
    prog.add(fork, uapi.SYS_write, ready_w, prog.data(b"r"), 1)
    prog.add(_Step(t.pid, "fork", "the go byte", "go"), uapi.SYS_read, go_r,
             prog.table.slot(), 1, zero_fails=True)
    for fd in (go_r, err_w, ready_w):
        prog.add(fork, uapi.SYS_close, fd)
    prog.add(fork, uapi.SYS_kill, t.inner_pid, signal.SIGSTOP)
    prog.add(fork, uapi.SYS_exit_group, 1)  # let go without the engine: never here


def _place(prog: Program, t: TaskSetup, ctl: list[int], by_file: dict[int, int]) -> None:
    """As files.place for a task with a table of its own and no locks or watches: its
    descriptions at its fd numbers, the staged ones at theirs, every other fd closed
    but the control pipes and the objects."""
    step = _Step(t.pid, "files", "placing its fds")
    for fde in sorted(t.fds, key=lambda f: f.fd):
        src = by_file[fde.file_id]
        if fde.cloexec:
            prog.add(step, uapi.SYS_dup3, src, fde.fd, os.O_CLOEXEC)
        else:
            prog.add(step, uapi.SYS_dup2, src, fde.fd)
    for fd, fid in t.staged:
        prog.add(step, uapi.SYS_dup3, by_file[fid], fd, os.O_CLOEXEC)
    keep = sorted({f.fd for f in t.fds} | set(ctl) | {fd for fd, _ in t.staged})
    start = 0
    for fd in [*keep, _UINT_MAX + 1]:
        if fd > start:
            prog.add(step, uapi.SYS_close_range, start, fd - 1, 0)
        start = fd + 1


def run(prog: Program, err_w: int) -> tuple[int, str, str] | None:
    """In the root: run the table. Its children do not come back here: where one of
    their entries fails they write a report on the error pipe (decode_reports) and
    exit, so they do without the engine's memory (_without_python). Returns only where
    an entry of the root's own fails: (its pid, phase, message), or None where the go
    byte did not come (the engine is gone). The caller reports it and exits."""
    local = blob.LocalTable(prog.table, err_w, prog.reports())
    if prog.forks:
        _without_python(local, prog)
    index, result = local.call()
    if index == len(prog.steps):  # every block ends in a stop or an exit
        return prog.steps[-1].pid, "fork", "ran past the end of its table"
    step, entry = prog.steps[index], prog.table.entries[index]
    if step.kind == "go":
        return None
    err = -result if -4096 < result < 0 else errno.EIO  # EIO: a zero_fails entry
    left = local.rows_left(index) if entry.flags & blob.F_ROWS else 0
    return step.pid, step.phase, describe(step.kind, step.what, err, left)


def _without_python(local: blob.LocalTable, prog: Program) -> None:
    """Mark the root's private memory MADV_DONTFORK, anonymous and of files (the
    interpreter, its libraries), but for the table and its code, the stack, the thread's
    TLS block (the kernel writes its rseq area on the way back to user space: a child
    without it gets SIGSEGV) and what the tasks copy from (premapped pages): its
    children run only the table's code. A fork of all of the interpreter's memory
    (~20 MB) cost each task ~0.5 ms and left more for it to unmap later; its ~130 file
    mappings cost each task's fork and layout more again (tree of 50, alternating:
    spawn 23-26 -> 18-20 ms, layout 14-17 -> 11-13). Shared mappings stay: the shared
    memory objects every task inherits."""
    fs = ctypes.c_ulong()
    ksys.syscall(uapi.SYS_arch_prctl, uapi.ARCH_GET_FS, fs)
    with open("/proc/self/maps", "rb") as f:
        lines = f.read().splitlines()
    private = []
    for line in lines:
        fields = line.split()
        name = fields[5] if len(fields) > 5 else b""
        if fields[1][3:4] != b"p" or name[:1] not in (b"", b"/") and name != b"[heap]":
            continue
        lo, hi = (int(x, 16) for x in fields[0].split(b"-"))
        if not lo <= fs.value < hi:
            private.append((lo, hi))
    for start, end in subtract(normalise(private), normalise(
            [(local.base, local.end), local.code, *prog.sources])):
        ksys.syscall(uapi.SYS_madvise, start, end - start, uapi.MADV_DONTFORK)
