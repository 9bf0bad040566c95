"""Tasks sharing their parent's address space without being its threads (CLONE_VM).

Such a task cannot be spawned as a copy of the engine: two Python interpreters cannot run
on one address space, and the memory they would share is the parent's, built only later by
tables. It is made the way threads are, by a clone3 injected into its parent once that
exists (right after the tree is spawned: the parent's address space, rebuilt later, is then
the child's too), but with a pid of its own (set_tid), SIGCHLD as exit signal, and
CLONE_SIGHAND, CLONE_FILES and CLONE_FS as dumped. It is auto-attached
(PTRACE_O_TRACEFORK) and stops before its first instruction.

What a spawned task sets up from Python, this one gets from a table run in it right away
(`setup_table`): resource limits, its own fd table (while spawning, its parent placed each
description of it at spare numbers above every fd of the tree, which the child's copy of
the parent's table holds too: each goes to its number, every other fd is closed; the parent
closes the spare ones once all its children are made), its POSIX locks, cwd and umask, its
own process group. Its memory is its parent's: no layout table, no pages; its finishing
table leaves out what belongs to the address space (engine.restore.state_table), and its parent,
which finishes after it, unmaps the runner region.

ENGINE_FAULT=unshare-sighand (engine/faults.py) creates it without CLONE_SIGHAND: the
harness's sharing check must see that.
"""

from __future__ import annotations

import ctypes
import fcntl
import signal
import struct

from engine import faults
from engine.errors import EngineError
from engine.images.fdkinds import LockRecord
from engine.images.records import RlimitRecord, TaskCore
from engine.kernel import blob, ptrace, uapi
from engine.kernel.structs import CloneArgs
from engine.restore.locks import flock_struct
from engine.restore.spawn import SEIZE_OPTIONS

_CLOSE_ALL_ABOVE = 0xFFFFFFFF  # close_range's last fd: every one


def clone_flags(shared: frozenset[str]) -> int:
    """clone3 flags creating a task that shares these tables (TaskEntry.shared, with "vm")
    with the task the clone runs in."""
    flags = uapi.CLONE_VM
    if "sighand" in shared and not faults.condition("unshare-sighand"):
        flags |= uapi.CLONE_SIGHAND
    if "files" in shared:
        flags |= uapi.CLONE_FILES
    if "fs" in shared:
        flags |= uapi.CLONE_FS
    return flags


def inject_clone(runner: blob.BlobRunner, scratch: int, flags: int, tids: list[int],
                 exit_signal: int = 0) -> tuple[int, int]:
    """Run clone3 with set_tid `tids` (innermost pid namespace first) in the task of
    `runner`, stopped with every signal blocked, using `scratch` (a spare page of its
    region) for the arguments. Returns clone3's result and the new task's id as the engine
    sees it (0 when none was made); the new task is auto-attached (see first_stop)."""
    args = CloneArgs()
    args.flags = flags
    args.exit_signal = exit_signal
    args.set_tid = scratch + ctypes.sizeof(CloneArgs)
    args.set_tid_size = len(tids)
    runner.write(scratch, bytes(args) + struct.pack(f"<{len(tids)}i", *tids))
    # ptrace reports a clone whose exit signal is SIGCHLD as a fork
    trace = uapi.PTRACE_O_TRACEFORK if exit_signal == signal.SIGCHLD \
        else uapi.PTRACE_O_TRACECLONE
    ptrace.set_options(runner.pid, SEIZE_OPTIONS | trace)
    try:
        res = runner.run_one(uapi.SYS_clone3, scratch, ctypes.sizeof(CloneArgs))
    finally:
        ptrace.set_options(runner.pid, SEIZE_OPTIONS)
    return res, runner.last_event_msg if res > 0 else 0


def first_stop(real: int, what: str, timeout: float) -> None:
    """Wait until a task made by inject_clone stops before its first instruction."""
    status = ptrace.wait_stop(real, timeout)
    if ptrace.stop_event(status) != uapi.PTRACE_EVENT_STOP:
        raise EngineError("fork", f"{what} stopped unexpectedly ({status:#x})")


def setup_table(core: TaskCore, parent: TaskCore, shared: frozenset[str], staged_at: int,
                locks: list[tuple[int, LockRecord]]) -> blob.Table:
    """The table a child just cloned into its parent's address space runs first.
    staged_at: unless it shares its parent's fd table, its copy of that table holds each
    of its descriptions at staged_at + its fd number; locks: its POSIX locks as (file id,
    lock)."""
    t = blob.Table()
    _limits(t, core.limits, parent.limits)
    if "files" not in shared:
        _fd_table(t, core, staged_at)
    fd_of = {f.file_id: f.fd for f in sorted(core.fds, key=lambda f: -f.fd)}
    for fid, lk in locks:
        if fid not in fd_of:
            raise EngineError("files", f"task {core.pid}: a POSIX lock on file {fid}, which "
                                       "it has no fd on")
        t.add(uapi.SYS_fcntl, fd_of[fid], fcntl.F_SETLK, t.data(flock_struct(lk)),
              what=f"POSIX lock on fd {fd_of[fid]} at {lk.start}")
    if "fs" not in shared:
        t.add(uapi.SYS_chdir, t.cstr(core.cwd), what=f"chdir {core.cwd}")
        t.add(uapi.SYS_umask, core.umask, what=f"umask {core.umask:o}")
    if core.pgid == core.pid != parent.pgid:
        t.add(uapi.SYS_setpgid, 0, 0, what="own process group")
    return t


def _limits(t: blob.Table, limits: list[RlimitRecord], parent: list[RlimitRecord]) -> None:
    """The limits that differ from the parent's (which the clone copied)."""
    have = {lim.resource: (lim.soft, lim.hard) for lim in parent}
    for lim in limits:
        if have.get(lim.resource) != (lim.soft, lim.hard):
            t.add(uapi.SYS_prlimit64, 0, lim.resource,
                  t.data(struct.pack("<QQ", lim.soft, lim.hard)), 0,
                  what=f"limit {lim.name} ({lim.soft}, {lim.hard})")


def _fd_table(t: blob.Table, core: TaskCore, staged_at: int) -> None:
    """Each description to its fd number from where the parent held it for this child,
    then every other fd closed (the parent's own, the restore's memfds, the spare ones)."""
    start = 0
    for f in sorted(core.fds, key=lambda f: f.fd):
        t.add(uapi.SYS_dup3, staged_at + f.fd, f.fd, uapi.O_CLOEXEC if f.cloexec else 0,
              what=f"fd {f.fd}")
        if f.fd > start:
            t.add(uapi.SYS_close_range, start, f.fd - 1, 0, what="close the parent's fds")
        start = f.fd + 1
    t.add(uapi.SYS_close_range, start, _CLOSE_ALL_ABOVE, 0, what="close the other fds")
