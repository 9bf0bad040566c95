"""Tables of syscalls run in a live task (engine/kernel/intask.py): in one go by the task
itself (blob.S table_notify), or entry by entry; the task put back exactly as it was, also
when the engine dies in the middle."""

from __future__ import annotations

import errno
import os
import signal
import time
from array import array
from dataclasses import dataclass

import pytest

from engine.kernel import blob, inject, intask, ptrace, uapi
from engine.kernel.inject import Injector
from engine.kernel.structs import KSigaction

TIMEOUT = 10.0
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


def _seized_in_pause(spawn):  # type: ignore[no-untyped-def]
    """A target seized and stopped inside pause(), and its _snapshot."""
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)
    _stop(t.pid)
    return t, _snapshot(t.pid)


def _released(t) -> None:  # type: ignore[no-untyped-def]
    """Detach the target: it must go on in pause() as before."""
    ptrace.detach(t.pid)
    time.sleep(0.05)
    _back_in_pause(t)


@pytest.mark.parametrize("in_task", [True, False])
def test_results_alike_and_task_put_back(spawn, in_task: bool) -> None:
    """Both ways give the same results; the task's registers, maps, fds and mask are as
    before (no code page, no socket left), and it goes on where it was."""
    t, before = _seized_in_pause(spawn)
    regs = ptrace.get_regs(t.pid)
    table, refs = _table()
    with Injector(t.pid, TIMEOUT) as inj:
        res = intask.run(inj, table, TIMEOUT, in_task=in_task)
        # in one go: the mapping, the socketpair and closing its end; not one per entry
        assert (inj.count < 8) == in_task
    assert res.slot(refs.pid) == t.pid and res.slot(refs.ppid) == os.getpid()
    assert KSigaction.from_buffer_copy(res.read(refs.action, _KSA)).handler != 0
    assert res.slot(refs.bad_close) == -errno.EBADF
    assert ptrace.get_regs(t.pid).to_dict() == regs.to_dict()
    assert _snapshot(t.pid) == before
    _released(t)


@pytest.mark.parametrize("in_task", [True, False])
def test_failed_entry_is_named_and_stops_the_table(spawn, in_task: bool) -> None:
    t, before = _seized_in_pause(spawn)
    table, _ = _table()
    after = table.slot()
    table.add(uapi.SYS_close, 654321, what=("close {}", 654321))
    table.add(uapi.SYS_getpid, store=after, what="never")
    with Injector(t.pid, TIMEOUT) as inj, pytest.raises(blob.TableError) as info:
        intask.run(inj, table, TIMEOUT, in_task=in_task)
    assert info.value.errno == errno.EBADF and info.value.index == len(table) - 2
    assert "close 654321" in str(info.value)
    assert _snapshot(t.pid) == before
    _released(t)


@pytest.mark.parametrize("in_task", [True, False])
def test_rows_run_and_a_failed_row_is_named(spawn, in_task: bool) -> None:
    """Rows entries run once per row both ways; a failed row stops the table, named."""
    t, before = _seized_in_pause(spawn)
    table, _ = _table()
    fds = (0, 1, 2, 987654, 1)  # fcntl(F_GETFD) of each: EBADF in row 3
    rows = array("q", [v for fd in fds for v in (fd, uapi.F_GETFD, 0, 0, 0, 0)])
    table.rows(uapi.SYS_getppid, bytes(4 * blob.ROW_SIZE))
    table.rows(uapi.SYS_fcntl, rows.tobytes(), what=lambda i: f"fcntl row {i}")
    after = table.slot()
    table.add(uapi.SYS_getpid, store=after)
    with Injector(t.pid, TIMEOUT) as inj, pytest.raises(blob.TableError) as info:
        intask.run(inj, table, TIMEOUT, in_task=in_task)
    assert (info.value.index, info.value.row) == (len(table) - 2, 3)
    assert info.value.errno == errno.EBADF and "fcntl row 3" in str(info.value)
    assert _snapshot(t.pid) == before
    _released(t)


def _engine_dies(pid: int, where: str) -> None:
    """In a forked tracer: run a table in pid in one go and die by SIGKILL `where`: right
    after the task made its socket pair, or while the task runs the table."""
    try:
        _stop(pid)
        inj = Injector(pid, TIMEOUT)
        if where == "socketpair":
            real = Injector.syscall

            def dying(self: Injector, nr: int, *args: int) -> int:
                res = real(self, nr, *args)
                if nr == uapi.SYS_socketpair:
                    os.kill(os.getpid(), signal.SIGKILL)
                return res
            Injector.syscall = dying  # type: ignore[method-assign]
        else:
            def dead(*_: object) -> bytes:
                time.sleep(0.05)  # the task has run its table and waits in read()
                os.kill(os.getpid(), signal.SIGKILL)
                return b""
            intask._await_status = dead  # type: ignore[assignment]
        intask.run(inj, _table()[0], TIMEOUT,
                   gadget=inject.find_code(pid, inj.mem_fd, (inject.SYSCALL_RET,)))
    finally:
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("where", ["socketpair", "table"])
def test_task_survives_its_engine_killed(spawn, where: str) -> None:
    """The engine SIGKILLed around the in-task run: the task closes its socket pair,
    unmaps the code page, puts itself back and goes on in pause()."""
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)
    before = _snapshot(t.pid)
    tracer = os.fork()
    if tracer == 0:
        _engine_dies(t.pid, where)
    _, status = os.waitpid(tracer, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    t.wait_in_syscall(uapi.SYS_pause)  # not waiting in read() on its socket any more
    assert _snapshot(t.pid) == before
    _back_in_pause(t)
