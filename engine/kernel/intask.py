"""Run a table of syscalls (blob.Table) in a live task the engine injects into, which goes
on running afterwards: the dump's queries (sigactions, timers, prctl state...).

One injected syscall is a ptrace round trip (30-100 us, more when the task must wait to be
scheduled); a process's 62 rt_sigaction calls alone took 3.7 ms per task that way. Here
the whole table runs in the task in one go, as CRIU's parasite does: code mapped in the
task (Injector.code_scratch) runs it while the task runs freely (PTRACE_CONT: no stop at
each of its syscalls), and the engine takes the task back where it reports:

- blob.S table_signal (the usual way) then sends the task a signal it ignores and does not
  block (`quiet_signal`: SIGURG, SIGWINCH or SIGCHLD left at their default, or one set to
  SIG_IGN), unblocked for the run: the engine takes the task back at the signal's delivery
  stop and drops it there. Its data lives on the stack below the injector's frame when
  there is room: one mapping, one injected syscall to make it.
- blob.S table_notify, for a task that catches or blocks every such signal: it reports
  over a socket pair whose other end the engine took (pidfd_getfd) and waits in read()
  on it, where the engine stops it (PTRACE_INTERRUPT); the pair costs two more round trips.

Should the engine die meanwhile (SIGKILL), the task is untraced: its signal is dropped
(ignored), or its read ends (the engine held the pair's other end), and it puts itself
back from blob.S crc_return, which also closes the pair and unmaps the code (see
`go_home`). The table itself only reads state.

Without a signal frame (inject.py: no way back for a task whose engine died), under a
seccomp filter (the mmap or socketpair could kill the task), where the page or the pair
cannot be made, and for short tables, the same encoded table is run entry by entry with
the injector instead, with the runner's semantics (saved value, stored results, failures
that stop the table or not): the results are read alike.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from dataclasses import dataclass

from engine.errors import termination_held
from engine.kernel import blob, ptrace, uapi
from engine.kernel import sys as ksys
from engine.kernel.inject import Injector
from engine.kernel.structs import UserRegs
from engine.proc.status import Status

#: Tables of fewer calls than this run entry by entry (an in-task run costs ~5 round trips,
#: ~9 with the socket pair; an entry run alone 2).
MIN_IN_TASK = 8
_STATUS = struct.Struct("<Qq")  # table_call's status: entries left, last result
_PAIR = struct.Struct("<ii")  # the socketpair's fds, -1 -1 until it ran
_ENTRY = struct.Struct("<8Q")
_ROW = struct.Struct("<6Q")
_MAX_ERRNO = 4095
_MASK64 = (1 << 64) - 1
_POLL_SLICE_MS = 10  # between looks for a stop of the task while it runs the table
_CALL_REGS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
#: Signals whose default action is to ignore them (not SIGCONT: sending it resumes a
#: stopped group and drops pending stop signals, whatever its action).
_QUIET = (uapi.SIGURG, uapi.SIGWINCH, uapi.SIGCHLD)
_HOME_REGS = ("rbx", "rbp", "r12", "r13", "r14", "r15")


@dataclass(frozen=True)
class Results:
    """The data area of a table after it ran: its result slots and buffers."""

    data: bytes

    def slot(self, ref: blob.DataRef) -> int:
        """The signed u64 a `store=` entry (or the syscall through a buffer) left there."""
        return int.from_bytes(self.data[ref.offset:ref.offset + 8], "little", signed=True)

    def read(self, ref: blob.DataRef, size: int) -> bytes:
        """`size` bytes of the data area at `ref` (a buffer a syscall filled)."""
        return self.data[ref.offset:ref.offset + size]


def run(inj: Injector, table: blob.Table, timeout: float, in_task: bool = True,
        gadget: int = 0) -> Results:
    """Run every entry of `table` in the injector's task (a thread-group leader when
    in_task); raises blob.TableError naming the first failed entry (one without
    may_fail), as BlobRunner.run does.

    in_task: run it in one go in the task where it can (see the module doc), else one
    injected syscall per entry. gadget: libc's `syscall; ret` in the task
    (inject.find_code), with which a task whose engine died unmaps the code page
    (without: it stays mapped)."""
    if in_task and inj.frame is not None and table.calls() >= MIN_IN_TASK and not inj.seccomp:
        done = _in_task(inj, table, timeout, gadget)
        if done is not None:
            return done
    return _one_by_one(inj, table)


def go_home(inj: Injector, code: int, fd: int, gadget: int,
            entry: int = blob.CRC_RETURN_OFFSET, rbp: int = -1) -> None:
    """With a signal frame, injected syscalls (and code called in the task) return to
    blob.S crc_return, which a task whose engine died runs to close `fd` and `rbp` (-1:
    none), unmap the code page (with libc's `syscall; ret` at `gadget`; without one the
    mapping stays) and put itself back. `entry` CRC_OPEN_RETURN_OFFSET: around an open,
    the fd is the one it returned; CRC_PAIR_RETURN_OFFSET: around a socketpair, the fds
    are the two it wrote at code + blob.PAIR_AT."""
    frame, mapping = inj.frame, inj.mapping
    if frame is None or mapping is None:
        return
    if gadget:  # unmap, then `ret` to the frame's restorer
        jump, sp = gadget, frame.address
    else:  # straight to the restorer
        jump, sp = frame.restorer, frame.sp
    # rax: what crc_open_return takes as the fd before any open ran (none)
    inj.go_home(code + entry, uapi.SYS_close, code + blob.CRC_RETURN_STOP, rax=-1,
                r12=fd, rbp=rbp, r13=mapping[0], r14=mapping[1], r15=sp, rbx=jump)


@dataclass(frozen=True)
class _Layout:
    """The buffer after the code page: the socketpair's fds (where crc_pair_return reads
    them), the status, entries and data, then table_notify's stack (its return address at
    `stack`)."""

    pair: int
    status: int
    entries: int
    stack: int
    end: int

    @classmethod
    def of(cls, buf: int, table: blob.Table) -> _Layout:
        """Places for a table of that size at `buf`."""
        status = buf + 16
        entries = status + _STATUS.size
        stack = (entries + table.size() + blob.TABLE_CALL_STACK + 15) & ~15
        return cls(buf, status, entries, stack, stack + 8)


def _in_task(inj: Injector, table: blob.Table, timeout: float, gadget: int
             ) -> Results | None:
    """The table run in the task, taken back at its signal (table_signal) or else at its
    socket pair (table_notify); None where the code page or the pair cannot be made (the
    task is as before, but for the mapping, which restore() unmaps)."""
    sig = quiet_signal(inj.status, inj.sigmask)
    if sig:
        return _signalled(inj, table, timeout, gadget, sig)
    try:
        code, buf = inj.code_scratch(blob.CODE, _Layout.of(0, table).end)
    except OSError:
        return None
    assert buf == code + blob.PAIR_AT
    at = _Layout.of(buf, table)
    fds = _socketpair(inj, code, at, gadget)
    if fds is None:
        return None
    try:
        ours = _take_fd(inj.tid, fds[1])
    except OSError:
        _close_pair(inj, code, fds, gadget)
        return None
    try:
        status = _notify_call(inj, table, code, at, fds, ours, timeout)
    except BaseException:
        os.close(ours)
        _close_pair(inj, code, fds, gadget)
        raise
    os.close(ours)
    # The routine closed the task's copy of our end first thing: one close left.
    _close_pair(inj, code, fds[:1], gadget)
    return _results(inj, table, at, status)


def _results(inj: Injector, table: blob.Table, at: _Layout, status: bytes) -> Results:
    """The data area of a table that ran, or its first failed entry raised."""
    left, result = _STATUS.unpack(status)
    if left:
        index = len(table) - left
        rows_left = inj.read(at.entries + index * blob.ENTRY_SIZE + blob.ROWS_LEFT_AT, 8)
        raise table.error(-result, index, int.from_bytes(rows_left, "little"))
    data_at = at.entries + len(table) * blob.ENTRY_SIZE
    return Results(inj.read(data_at, table.size() - len(table) * blob.ENTRY_SIZE))


def quiet_signal(status: Status, mask: int) -> int:
    """A signal the thread drops when it gets it, blocked neither in `mask` (its own, as
    the injector found it) nor in `status`: one of _QUIET left at its default action, else
    one set to SIG_IGN; 0 if none."""
    blocked = mask | status.sig_blk
    quiet = [s for s in _QUIET if not (status.sig_cgt | status.sig_ign) >> (s - 1) & 1]
    ignored = [s for s in range(1, uapi.NSIG + 1)
               if status.sig_ign >> (s - 1) & 1 and s != uapi.SIGCONT]
    return next((s for s in quiet + ignored if not blocked >> (s - 1) & 1), 0)


def _signalled(inj: Injector, table: blob.Table, timeout: float, gadget: int,
               sig: int) -> Results | None:
    """The table run by table_signal; None where the code page cannot be made."""
    size = _Layout.of(0, table).end
    buf = inj.stack_scratch(size)
    try:
        code, after = inj.code_scratch(blob.CODE, 0 if buf is not None else size)
    except OSError:
        return None
    at = _Layout.of(after if buf is None else buf, table)
    go_home(inj, code, -1, gadget)
    inj.write(at.entries, table.encode(at.entries - blob.CODE_AREA))
    regs = _call_regs(inj, code, at, blob.TABLE_SIGNAL_OFFSET,
                      (at.entries, len(table), at.entries - blob.CODE_AREA, at.status, sig))
    with termination_held():  # (see _notify_call)
        ptrace.set_sigmask(inj.tid, uapi.ALL_SIGNALS & ~(1 << (sig - 1)))
        ptrace.set_regs(inj.tid, regs)
        ptrace.cont(inj.tid, 0)
        try:
            _await_signal(inj, code + blob.TABLE_SIGNAL_STOP, sig, timeout)
        except _Faulted:
            raise  # stopped already, in its signal-delivery-stop
        except BaseException:
            _stop(inj, timeout)
            raise
        ptrace.set_sigmask(inj.tid, uapi.ALL_SIGNALS)
    return _results(inj, table, at, inj.read(at.status, _STATUS.size))


def _await_signal(inj: Injector, stop_rip: int, sig: int, timeout: float) -> None:
    """Wait for the delivery stop of `sig` that table_signal sends (at `stop_rip`). The
    same signal sent by another meanwhile is dropped, as the task would drop it; a SIGSTOP
    is kept for the injector's restore(); any other signal raises _Faulted."""
    deadline = time.monotonic() + timeout
    while True:
        status = ptrace.wait_stop(inj.tid, max(deadline - time.monotonic(), 0.0))
        got = ptrace.stop_signal(status)
        if ptrace.stop_event(status) == 0 and got == sig:
            if ptrace.get_regs(inj.tid).rip == stop_rip:
                return
        elif ptrace.stop_event(status) == 0 and got == uapi.SIGSTOP:
            inj.deferred_signals.append(got)
        elif ptrace.stop_event(status) == 0:
            rip = ptrace.get_regs(inj.tid).rip
            raise _Faulted(f"task {inj.tid} got signal {got} at {rip:#x} while running a "
                           "table")
        ptrace.cont(inj.tid, 0)


def _call_regs(inj: Injector, code: int, at: _Layout, entry: int,
               args: tuple[int, ...]) -> UserRegs:
    """The task's registers for a call of the routine at code + `entry` with `args`, on
    the stack at at.stack, its home registers set (crc_return's, see go_home)."""
    os.pwrite(inj.mem_fd, (code + blob.CRC_RETURN_OFFSET).to_bytes(8, "little"), at.stack)
    regs = ptrace.get_regs(inj.tid)
    home = inj.home_regs
    for name in _HOME_REGS:
        setattr(regs, name, home[name])
    for name, value in zip(_CALL_REGS, args):
        setattr(regs, name, value & _MASK64)
    regs.rip, regs.rsp = code + entry, at.stack
    regs.orig_rax = uapi.ORIG_RAX_NONE
    regs.eflags &= ~(uapi.X86_EFLAGS_TF | uapi.X86_EFLAGS_DF)
    return regs


def _socketpair(inj: Injector, code: int, at: _Layout, gadget: int
                ) -> tuple[int, int] | None:
    """A unix stream socket pair made in the task (its fds), or None; a task whose engine
    dies right after closes both (crc_pair_return)."""
    inj.write(at.pair, _PAIR.pack(-1, -1))
    go_home(inj, code, -1, gadget, blob.CRC_PAIR_RETURN_OFFSET)
    res = inj.syscall(uapi.SYS_socketpair, socket.AF_UNIX,
                      socket.SOCK_STREAM | socket.SOCK_CLOEXEC, 0, at.pair)
    fds: tuple[int, int] = _PAIR.unpack(inj.read(at.pair, _PAIR.size))
    if res < 0:
        go_home(inj, code, -1, gadget)
        return None
    go_home(inj, code, fds[0], gadget, rbp=fds[1])
    return fds


def _take_fd(pid: int, fd: int) -> int:
    """A copy of the task's fd `fd` in the engine (pidfd_getfd)."""
    pidfd = ksys.pidfd_open(pid)
    try:
        return ksys.pidfd_getfd(pidfd, fd)
    finally:
        os.close(pidfd)


def _close_pair(inj: Injector, code: int, fds: tuple[int, ...], gadget: int) -> None:
    """Close what is left of the pair in the task (the peer may be closed already)."""
    for fd in fds:
        inj.syscall(uapi.SYS_close, fd)
    go_home(inj, code, -1, gadget)


def _notify_call(inj: Injector, table: blob.Table, code: int, at: _Layout,
                 fds: tuple[int, int], ours: int, timeout: float) -> bytes:
    """Run table_notify in the task until it reports; returns its status with the task
    back in a ptrace-stop (interrupted in its read)."""
    inj.write(at.entries, table.encode(at.entries - blob.CODE_AREA))
    regs = _call_regs(inj, code, at, blob.TABLE_NOTIFY_OFFSET,
                      (at.entries, len(table), at.entries - blob.CODE_AREA, at.status, fds[0],
                       fds[1]))
    # A termination signal waits until the task is stopped again: raising while it runs
    # would leave the engine's cleanup a running task.
    with termination_held():
        ptrace.set_regs(inj.tid, regs)
        ptrace.cont(inj.tid, 0)
        try:
            status = _await_status(inj, ours, timeout)
        except _Faulted:
            raise  # stopped already, in its signal-delivery-stop
        except BaseException:
            _stop(inj, timeout)
            raise
        _stop(inj, timeout)
        return status


class _Faulted(OSError):
    """The task got a signal of its own while running the table (a fault in it)."""


def _await_status(inj: Injector, ours: int, timeout: float) -> bytes:
    """The 16 status bytes the task writes once the table ran. A SIGSTOP met meanwhile
    (every other signal is blocked) is kept for the injector's restore()."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(ours, select.POLLIN)
    got = b""
    while len(got) < _STATUS.size:
        if poller.poll(_POLL_SLICE_MS):
            chunk = os.read(ours, _STATUS.size - len(got))
            if not chunk:
                raise OSError(f"task {inj.tid} closed its end while running a table")
            got += chunk
            continue
        _pass_signal_stop(inj)
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {inj.tid} did not run its table within "
                               f"{timeout:.1f}s")
    return got


def _pass_signal_stop(inj: Injector) -> None:
    """Resume the task from a SIGSTOP's signal-delivery-stop it is in, if any (the signal
    kept); raise _Faulted for any other signal, leaving the task stopped."""
    pid, status = os.waitpid(inj.tid, uapi.WALL | uapi.WNOHANG)
    if not pid:
        return
    if not os.WIFSTOPPED(status):
        raise ptrace.TaskExited(inj.tid, status)
    sig = ptrace.stop_signal(status)
    if ptrace.stop_event(status) == 0 and sig != uapi.SIGSTOP:
        rip = ptrace.get_regs(inj.tid).rip
        raise _Faulted(f"task {inj.tid} got signal {sig} at {rip:#x} while running a "
                       "table")
    if ptrace.stop_event(status) == 0:
        inj.deferred_signals.append(sig)
    ptrace.cont(inj.tid, 0)


def _stop(inj: Injector, timeout: float) -> None:
    """Stop the running task (PTRACE_INTERRUPT) and wait for its interrupt stop."""
    ptrace.interrupt(inj.tid)
    while True:
        status = ptrace.wait_stop(inj.tid, timeout)
        if ptrace.stop_event(status) == uapi.PTRACE_EVENT_STOP:
            return
        if ptrace.stop_event(status) == 0:
            inj.deferred_signals.append(ptrace.stop_signal(status))
        ptrace.cont(inj.tid, 0)


def _one_by_one(inj: Injector, table: blob.Table) -> Results:
    """The table's entries as injected syscalls, with table_runner's semantics."""
    size = table.size() - len(table) * blob.ENTRY_SIZE
    data = inj.scratch(max(size, 8))
    base = data - table.data_offset()
    encoded = table.encode(base)
    inj.write(data, encoded[len(table) * blob.ENTRY_SIZE:])
    saved = 0
    for index, (nr, *args, flags) in enumerate(_ENTRY.iter_unpack(
            encoded[:len(table) * blob.ENTRY_SIZE])):
        calls = [args]
        if flags & blob.F_ROWS:
            at = args[0] - data
            calls = [list(row) for row in _ROW.iter_unpack(
                encoded[len(table) * blob.ENTRY_SIZE + at:][:args[1] * blob.ROW_SIZE])]
        for row, call in enumerate(calls):
            call = [saved if flags & (1 << i) else a for i, a in enumerate(call)]
            res = inj.syscall(nr, *call)
            if -_MAX_ERRNO <= res < 0 and not flags & blob.F_MAY_FAIL:
                raise table.error(-res, index, len(calls) - row)
            if flags & blob.F_SAVE:
                saved = res
            if flags & blob.F_STORE:
                inj.write(base + (flags >> 32), res.to_bytes(8, "little", signed=True))
    return Results(inj.read(data, size) if size else b"")
