"""Tables of syscalls run in a live task (engine/kernel/intask.py): in one go by the task
itself, taken back at a signal it ignores (blob.S table_signal) or, when it catches them
all, at a socket (table_notify); or entry by entry. The task put back exactly as it was,
also when the engine dies in the middle."""

from __future__ import annotations

import errno
import os
import signal
import struct
import time
from array import array
from dataclasses import dataclass, replace

import pytest

from engine.kernel import blob, inject, intask, ptrace, uapi
from engine.kernel.inject import Injector
from engine.kernel.structs import KSigaction
from engine.proc.status import read_status

TIMEOUT = 10.0
#: how the table runs: in the task (taken back at its signal or at its socket), or one
#: injected syscall per entry
WAYS = ["signal", "socket", "entries"]
#: injected syscalls of an in-task run: the mapping; with the socket also the rest of the
#: mapping made writable, the socketpair and the close of its end
_IN_TASK_SYSCALLS = {"signal": 1, "socket": 4}
_KSA = 32  # sizeof(struct sigaction) as the kernel has it


@dataclass
class _Refs:
    pid: blob.DataRef
    ppid: blob.DataRef
    action: blob.DataRef
    bad_close: blob.DataRef


def _table(extra: int = 12) -> tuple[blob.Table, _Refs]:
    """getpid, getppid, SIGUSR1's action, a tolerated failure, and `extra` getpids."""
    t = blob.Table()
    refs = _Refs(t.slot(), t.slot(), t.data(bytes(_KSA)), t.slot())
    t.add(uapi.SYS_getpid, store=refs.pid, what="getpid")
    t.add(uapi.SYS_getppid, store=refs.ppid, what="getppid")
    t.add(uapi.SYS_rt_sigaction, signal.SIGUSR1, 0, refs.action, uapi.SIGSET_SIZE,
          what="sigaction")
    t.add(uapi.SYS_close, 123456, may_fail=True, store=refs.bad_close, what="bad close")
    for _ in range(extra):
        t.add(uapi.SYS_getpid, what="getpid")
    return t, refs


def _stop(pid: int) -> None:
    ptrace.seize(pid, inject.SEIZE_OPTIONS)
    ptrace.freeze(pid, TIMEOUT)


def _snapshot(pid: int) -> tuple[str, list[str], str]:
    """maps, fd names and blocked mask: what the task must have again afterwards."""
    with open(f"/proc/{pid}/maps", encoding="utf-8") as f:
        maps = f.read()
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        mask = next(ln for ln in f if ln.startswith("SigBlk:"))
    return maps, sorted(os.listdir(f"/proc/{pid}/fd")), mask


def _back_in_pause(t) -> None:  # type: ignore[no-untyped-def]
    """The target goes on in pause(): SIGUSR1 makes it return with EINTR, handled once."""
    os.kill(t.pid, signal.SIGUSR1)
    assert t.result() == ["-1", str(errno.EINTR), "1"]


def _in_pause(spawn, way: str):  # type: ignore[no-untyped-def]
    """A target in pause(); for the socket way one that catches every signal it would
    otherwise ignore (each delivery counts as handled, see _back_in_pause)."""
    return spawn("pause", "catch-quiet") if way == "socket" else spawn("pause")


def _seized_in_pause(spawn, way: str):  # type: ignore[no-untyped-def]
    """A target seized and stopped inside pause(), and its _snapshot."""
    t = _in_pause(spawn, way)
    t.wait_in_syscall(uapi.SYS_pause)
    _stop(t.pid)
    return t, _snapshot(t.pid)


def _released(t) -> None:  # type: ignore[no-untyped-def]
    """Detach the target: it must go on in pause() as before."""
    ptrace.detach(t.pid)
    time.sleep(0.05)
    _back_in_pause(t)


@pytest.mark.parametrize("way", WAYS)
def test_results_alike_and_task_put_back(spawn, way: str) -> None:
    """Every way gives the same results; the task's registers, maps, fds and mask are as
    before (no code page, no socket left), and it goes on where it was."""
    t, before = _seized_in_pause(spawn, way)
    regs = ptrace.get_regs(t.pid)
    table, refs = _table()
    with Injector(t.pid, TIMEOUT) as inj:
        res = intask.run(inj, table, TIMEOUT, in_task=way != "entries")
        assert inj.count == _IN_TASK_SYSCALLS.get(way, len(table))
    assert res.slot(refs.pid) == t.pid and res.slot(refs.ppid) == os.getpid()
    assert KSigaction.from_buffer_copy(res.read(refs.action, _KSA)).handler != 0
    assert res.slot(refs.bad_close) == -errno.EBADF
    assert ptrace.get_regs(t.pid).to_dict() == regs.to_dict()
    assert _snapshot(t.pid) == before
    _released(t)


def test_table_without_stack_room_runs_after_its_code(spawn) -> None:
    """No stack kept below the frame: the signal way maps the table's place after its
    code (and makes it writable: one more injected syscall), with the same results."""
    t, before = _seized_in_pause(spawn, "signal")
    table, refs = _table()
    with Injector(t.pid, TIMEOUT, stack_scratch=0) as inj:
        res = intask.run(inj, table, TIMEOUT)
        assert inj.count == 2
        assert inj.mapping is not None and inj.mapping[1] > uapi.PAGE_SIZE  # code + table
    assert res.slot(refs.pid) == t.pid and res.slot(refs.bad_close) == -errno.EBADF
    assert _snapshot(t.pid) == before
    _released(t)


@pytest.mark.parametrize("way", WAYS)
def test_failed_entry_is_named_and_stops_the_table(spawn, way: str) -> None:
    t, before = _seized_in_pause(spawn, way)
    table, _ = _table()
    after = table.slot()
    table.add(uapi.SYS_close, 654321, what=("close {}", 654321))
    table.add(uapi.SYS_getpid, store=after, what="never")
    with Injector(t.pid, TIMEOUT) as inj, pytest.raises(blob.TableError) as info:
        intask.run(inj, table, TIMEOUT, in_task=way != "entries")
    assert info.value.errno == errno.EBADF and info.value.index == len(table) - 2
    assert "close 654321" in str(info.value)
    assert _snapshot(t.pid) == before
    _released(t)


@pytest.mark.parametrize("way", WAYS)
def test_rows_run_and_a_failed_row_is_named(spawn, way: str) -> None:
    """Rows entries run once per row both ways; a failed row stops the table, named."""
    t, before = _seized_in_pause(spawn, way)
    table, _ = _table()
    fds = (0, 1, 2, 987654, 1)  # fcntl(F_GETFD) of each: EBADF in row 3
    rows = array("q", [v for fd in fds for v in (fd, uapi.F_GETFD, 0, 0, 0, 0)])
    table.rows(uapi.SYS_getppid, bytes(4 * blob.ROW_SIZE))
    table.rows(uapi.SYS_fcntl, rows.tobytes(), what=lambda i: f"fcntl row {i}")
    after = table.slot()
    table.add(uapi.SYS_getpid, store=after)
    with Injector(t.pid, TIMEOUT) as inj, pytest.raises(blob.TableError) as info:
        intask.run(inj, table, TIMEOUT, in_task=way != "entries")
    assert (info.value.index, info.value.row) == (len(table) - 2, 3)
    assert info.value.errno == errno.EBADF and "fcntl row 3" in str(info.value)
    assert _snapshot(t.pid) == before
    _released(t)


def _engine_dies(pid: int, way: str, where: str) -> None:
    """In a forked tracer: run a table in pid in one go and die by SIGKILL `where`: right
    after the task made its socket pair; while the task runs the table (the signal way:
    it sleeps in it); once it reported (waits in read(), or sits in its signal's stop)."""
    try:
        _stop(pid)
        inj = Injector(pid, TIMEOUT)
        table = _table()[0]
        if where == "socketpair":
            real = Injector.syscall

            def dying(self: Injector, nr: int, *args: int) -> int:
                res = real(self, nr, *args)
                if nr == uapi.SYS_socketpair:
                    os.kill(os.getpid(), signal.SIGKILL)
                return res
            Injector.syscall = dying  # type: ignore[method-assign]
        else:
            if where == "table":
                nap = table.data(struct.pack("<qq", 0, 300_000_000))
                table.add(uapi.SYS_nanosleep, nap, 0, what="nap")

            def dead(*_: object) -> bytes:
                if where == "reported":
                    time.sleep(0.05)  # the task has run its table and reported
                os.kill(os.getpid(), signal.SIGKILL)
                return b""
            if way == "signal":
                intask._await_signal = dead  # type: ignore[assignment]
            else:
                intask._await_status = dead  # type: ignore[assignment]
        intask.run(inj, table, TIMEOUT,
                   gadget=inject.find_code(pid, inj.mem_fd, (inject.SYSCALL_RET,)))
    finally:
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("way,where", [("signal", "table"), ("signal", "reported"),
                                       ("socket", "socketpair"), ("socket", "table")])
def test_task_survives_its_engine_killed(spawn, way: str, where: str) -> None:
    """The engine SIGKILLed around the in-task run: the task drops its signal or closes
    its socket pair, unmaps the code page, puts itself back and goes on in pause() (no
    handler ran: see _back_in_pause)."""
    t = _in_pause(spawn, way)
    t.wait_in_syscall(uapi.SYS_pause)
    before = _snapshot(t.pid)
    tracer = os.fork()
    if tracer == 0:
        _engine_dies(t.pid, way, where)
    _, status = os.waitpid(tracer, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    t.wait_in_syscall(uapi.SYS_pause)  # not in its table, signal stop or read() any more
    assert _snapshot(t.pid) == before
    _back_in_pause(t)


def test_quiet_signal_is_one_the_thread_drops() -> None:
    """SIGURG, SIGWINCH or SIGCHLD at their default action, else a signal set to SIG_IGN
    (never SIGCONT); none blocked by the thread; 0 when no signal qualifies."""
    st = read_status(os.getpid(), os.getpid())

    def bits(*sigs: int) -> int:
        return sum(1 << (s - 1) for s in sigs)
    quiet = {"sig_cgt": 0, "sig_ign": 0, "sig_blk": 0}
    assert intask.quiet_signal(replace(st, **quiet), 0) == signal.SIGURG
    caught = replace(st, **{**quiet, "sig_cgt": bits(signal.SIGURG)})
    assert intask.quiet_signal(caught, 0) == signal.SIGWINCH
    assert intask.quiet_signal(caught, bits(signal.SIGWINCH)) == signal.SIGCHLD
    blocked = replace(caught, sig_blk=bits(signal.SIGWINCH))
    assert intask.quiet_signal(blocked, bits(signal.SIGCHLD)) == 0
    ignoring = replace(blocked, sig_ign=bits(signal.SIGCONT, signal.SIGPIPE))
    assert intask.quiet_signal(ignoring, bits(signal.SIGCHLD)) == signal.SIGPIPE
    all_caught = replace(st, **{**quiet, "sig_cgt": bits(*intask._QUIET),
                                "sig_ign": bits(signal.SIGCONT)})
    assert intask.quiet_signal(all_caught, 0) == 0
