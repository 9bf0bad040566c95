"""Find and freeze the tree to dump: every process and thread, stopped under ptrace.

Freezing works by fixed point: seize and interrupt every thread of every known process,
wait until each is in a ptrace-stop, then list threads and children again; anything new
(forked or cloned before its parent stopped) is seized the same way. Once a pass finds
nothing new, every task is stopped and none can fork, clone or exit any more. Zombies
cannot be seized; they are recorded with their exit code.

The tree may be running (pre-dump, --leave-running): a task that exits before it is
stopped is not in the tree, or is a zombie of its frozen parent; a thread that exits
before it stops is not in its process; a stopped thread killed by its process's exit
before the rest of that process stopped is collected and dropped. Never an error.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass, field

from engine.errors import EngineError
from engine.kernel import inject, ptrace, uapi
from engine.kernel import sys as ksys
from engine.proc import tasks
from engine.proc.stat import read_stat
from engine.proc.status import read_status

# How long one task may take to reach its ptrace-stop after PTRACE_INTERRUPT.
STOP_TIMEOUT = 5.0
# How long seizing may go on while the tree keeps changing.
SETTLE_TIMEOUT = 30.0
_PF_KTHREAD = 0x00200000


@dataclass
class Proc:
    """One process of the frozen tree."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str  # alive | stopped | zombie
    threads: list[int] = field(default_factory=list)
    children: list[int] = field(default_factory=list)
    exit_code: int | None = None


@dataclass
class FrozenTree:
    """A seized tree; `release()` must be called on every path (it is idempotent)."""

    root: int
    procs: dict[int, Proc]
    seized: list[int]  # every tid we seized, in seize order
    started: float = field(default_factory=time.monotonic)  # when seizing began
    released: float | None = None  # when every task was let go

    @property
    def frozen_seconds(self) -> float:
        """How long the tree has been (or was) frozen."""
        return (self.released or time.monotonic()) - self.started

    def order(self) -> list[Proc]:
        """Processes parents first (root first)."""
        out: list[Proc] = []
        todo = [self.root]
        while todo:
            p = self.procs.get(todo.pop(0))
            if p is not None:
                out.append(p)
                todo.extend(p.children)
        return out

    def release(self, kill: bool = False) -> None:
        """Detach from every thread; with kill, SIGKILL every process afterwards.

        Detaching first means the SIGKILL is not seen by us as a ptrace event and the tasks
        die as ordinary processes (their parent reaps them as usual); parked first
        (_park), none of them runs any code of its own in between. The kill goes through
        pidfds opened while the tasks are still held, so no pid can have been reused in
        between. Their death is not waited for (nor is it by CRIU): it is their parent's
        to wait for, and whoever restores the tree reaps it first (the harness, bench).
        """
        pidfds = self._pidfds() if kill else []
        if kill:
            self._park()
        for tid in reversed(self.seized):
            try:
                ptrace.detach(tid, 0)
            except OSError:
                pass  # the thread is gone (e.g. killed from outside): nothing to undo
        if self.released is None:
            self.released = time.monotonic()
        for fd in pidfds:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                pass  # killed from outside meanwhile
            finally:
                os.close(fd)
        self.seized = []

    def _park(self) -> None:
        """Make every seized thread of the tree, once let go, block every signal and
        sleep in pause() until the SIGKILL that follows: a dumped tree must not go on
        running its own code after the image was taken (it would write files, send
        messages the restored tree then sends again). A process whose syscall
        instruction cannot be found is left as it is (it runs until the kill)."""
        seized = set(self.seized)
        for p in self.procs.values():
            threads = [tid for tid in p.threads if tid in seized]
            if p.state == "zombie" or not threads:
                continue
            try:
                mem = os.open(f"/proc/{p.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    insn = inject.find_syscall_insn(p.pid, mem)
                finally:
                    os.close(mem)
            except (OSError, inject.InjectError):
                continue
            for tid in threads:
                try:
                    ptrace.set_sigmask(tid, uapi.ALL_SIGNALS)
                    regs = ptrace.get_regs(tid)
                    # not a syscall to restart (-1): the next instruction is the syscall
                    regs.rip, regs.rax, regs.orig_rax = insn, uapi.SYS_pause, uapi.ORIG_RAX_NONE
                    ptrace.set_regs(tid, regs)
                except OSError:
                    pass  # the thread is gone (killed from outside)

    def _pidfds(self) -> list[int]:
        """A pidfd on every process that is not a zombie (and has not vanished)."""
        out = []
        for p in self.procs.values():
            if p.state != "zombie":
                try:
                    out.append(ksys.pidfd_open(p.pid))
                except ProcessLookupError:
                    pass
        return out


def _threads(pid: int) -> list[int]:
    try:
        return tasks.threads(pid)
    except FileNotFoundError:
        return []  # exited: settled by _settle


def _children(pid: int) -> list[int]:
    try:
        return tasks.children(pid)
    except FileNotFoundError:
        return []


def freeze(root: int, timeout: float = SETTLE_TIMEOUT) -> FrozenTree:
    """Seize and stop the tree rooted at `root`. On error everything seized is released
    and an EngineError("seize", ...) names the task that failed. Tasks that exit while
    the tree is being seized are simply not in it (or are zombies of a frozen parent)."""
    tree = FrozenTree(root, {}, [])
    try:
        _freeze(tree, time.monotonic() + timeout)
    except EngineError:
        tree.release()
        raise
    except (OSError, TimeoutError) as e:
        tree.release()
        raise EngineError("seize", str(e)) from None
    return tree


def _gone_or_dead(pid: int, tid: int) -> bool:
    """Whether thread `tid` has exited (zombie, dead or reaped): seizing it then fails
    with ESRCH or EPERM (the kernel refuses to attach to a task with an exit state)."""
    try:
        return read_stat(pid, tid).state in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def _seize_thread(tree: FrozenTree, proc: Proc, tid: int) -> bool:
    """Seize and stop one thread; False when it exited before it could be stopped."""
    try:
        ptrace.seize(tid, inject.SEIZE_OPTIONS)
    except OSError as e:
        if e.errno in (errno.ESRCH, errno.EPERM) and _gone_or_dead(proc.pid, tid):
            return False  # exited before we got it: it cannot matter any more
        why = ("operation not permitted (already traced, a kernel thread, or not ours)"
               if e.errno == errno.EPERM else e.strerror)
        raise EngineError("seize", f"cannot seize task {tid}: {why}") from None
    tree.seized.append(tid)
    try:
        frozen = ptrace.freeze(tid, STOP_TIMEOUT)
    except ptrace.TaskExited:
        tree.seized.remove(tid)  # its exit was reported to us: nothing left to detach
        return False
    if frozen.group_stop_sig:
        proc.state = "stopped"
    return True


def _new_proc(pid: int) -> Proc | None:
    """A process found in a children list; None when it is already gone."""
    try:
        st = read_stat(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None  # reaped already (its parent ignores SIGCHLD)
    if st.flags & _PF_KTHREAD:
        raise EngineError("seize", f"cannot dump task {pid}: it is a kernel thread")
    if st.state in ("Z", "X"):
        # exit_code (stat field 52) is the wait status its reaper will get.
        return Proc(pid, st.ppid, st.pgid, st.sid, "zombie", exit_code=st.exit_code)
    return Proc(pid, st.ppid, st.pgid, st.sid, "alive")


def _freeze(tree: FrozenTree, deadline: float) -> None:
    """Fixed point: stop every thread of every known process, drop what exited meanwhile,
    and list children only once every known thread is stopped; repeat until a round finds
    nothing new. A stopped process cannot fork, clone or exit; a process whose threads
    are only partly stopped can still exit (exit_group kills its stopped threads too), so
    each round also collects the exits of threads already stopped."""
    root = _new_proc(tree.root)
    if root is None:
        raise EngineError("seize", f"no such process {tree.root}")
    if root.state == "zombie":
        raise EngineError("seize", f"cannot dump task {tree.root}: it is a zombie")
    tree.procs[tree.root] = root
    while True:
        if time.monotonic() > deadline:
            raise EngineError("seize", "the tree kept changing: no stable set of tasks "
                              f"after {SETTLE_TIMEOUT:.0f}s")
        changed = False
        for proc in _alive(tree):
            changed |= _seize_threads(tree, proc)
        changed |= _collect_exits(tree)
        if changed:
            continue  # list children only once every known thread is stopped
        if not _add_children(tree):
            break
    _prune(tree)
    # Refresh ids now that nothing can change them any more (setsid/setpgid races).
    for proc in _alive(tree):
        st = read_stat(proc.pid)
        proc.ppid, proc.pgid, proc.sid = st.ppid, st.pgid, st.sid
        proc.threads.sort()


def _alive(tree: FrozenTree) -> list[Proc]:
    return [p for p in tree.procs.values() if p.state != "zombie"]


def _seize_threads(tree: FrozenTree, proc: Proc) -> bool:
    """Stop the threads of `proc` not stopped yet; True when anything changed."""
    changed = False
    for tid in _threads(proc.pid):
        if tid in proc.threads:
            continue
        if _seize_thread(tree, proc, tid):
            proc.threads.append(tid)
            changed = True
        else:
            changed |= _reap_killed(tree, proc)
    if not proc.threads and not _settle(tree, proc):
        time.sleep(0.001)  # still exiting: look again in the next round
    return changed or not proc.threads


def _reap_killed(tree: FrozenTree, proc: Proc) -> bool:
    """A thread of `proc` exited before it stopped: if by exit_group, its siblings
    stopped already got SIGKILL and leave their stop to die, maybe only after the last
    look for exits (tests/engine/test_dump_churn.py, 3 at once: 2 runs in 114 then found
    a process gone at its registers). Wait for those exits and drop those threads; True
    when any was."""
    dying = [tid for tid in proc.threads if _killed(proc.pid, tid)]
    # The leader's exit is reported only once every other thread's was reaped: last.
    dying.sort(key=lambda tid: tid == proc.pid)
    for tid in dying:
        try:
            ptrace.wait_stop(tid, STOP_TIMEOUT)
            continue  # (a stop: it was not dying after all)
        except (ptrace.TaskExited, ChildProcessError):
            pass
        proc.threads.remove(tid)
        tree.seized.remove(tid)
    return bool(dying)


def _killed(pid: int, tid: int) -> bool:
    """Whether thread `tid` has a SIGKILL pending (or is gone already)."""
    try:
        st = read_status(pid, tid)
    except OSError:
        return True
    return bool((st.sig_pnd | st.shd_pnd) >> (signal.SIGKILL - 1) & 1)


def _collect_exits(tree: FrozenTree) -> bool:
    """Drop stopped threads that have died since (killed by the exit_group or execve of
    a thread of their process that was not stopped yet); True when any did."""
    changed = False
    for proc in _alive(tree):
        for tid in list(proc.threads):
            pid, status = os.waitpid(tid, uapi.WNOHANG | uapi.WALL)
            if pid and not os.WIFSTOPPED(status):
                proc.threads.remove(tid)
                tree.seized.remove(tid)
                changed = True
        if not proc.threads:
            _settle(tree, proc)
    return changed


def _settle(tree: FrozenTree, proc: Proc) -> bool:
    """A process none of whose threads could be stopped: it has exited (a zombie of a
    frozen parent, or reaped) or is exiting (the next round looks again)."""
    try:
        st = read_stat(proc.pid)
    except (FileNotFoundError, ProcessLookupError):
        st = None
    if proc.pid == tree.root and (st is None or st.state in ("Z", "X")):
        raise EngineError("seize", f"task {proc.pid} (the root) exited while being seized")
    if st is None:
        del tree.procs[proc.pid]
        return True
    if st.state in ("Z", "X"):
        proc.state, proc.exit_code, proc.children = "zombie", st.exit_code, []
        return True
    return False


def _add_children(tree: FrozenTree) -> bool:
    """Refresh every stopped process's children (new ones become Procs); True when a new
    process was found."""
    changed = False
    for proc in _alive(tree):
        kids = []
        for kid in _children(proc.pid):
            if kid not in tree.procs:
                found = _new_proc(kid)
                if found is None:
                    continue
                tree.procs[kid] = found
                changed = True
            kids.append(kid)
        proc.children = kids
    return changed


def _prune(tree: FrozenTree) -> None:
    """Forget processes no longer below the root (re-parented out of the tree when their
    parent exited while being seized): they are detached and go on."""
    reachable = {p.pid for p in tree.order()}
    for pid in [pid for pid in tree.procs if pid not in reachable]:
        for tid in tree.procs.pop(pid).threads:
            if tid in tree.seized:
                tree.seized.remove(tid)
                try:
                    ptrace.detach(tid, 0)
                except OSError:
                    pass  # gone meanwhile
