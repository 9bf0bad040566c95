"""Find and freeze the tree to dump: every process and thread, stopped under ptrace.

Freezing works by fixed point: seize and interrupt every thread of every known process,
wait until each is in a ptrace-stop, then list threads and children again; anything new
(forked or cloned before its parent stopped) is seized the same way. Once a pass finds
nothing new, every task is stopped and none can fork, clone or exit any more. Zombies
cannot be seized; they are recorded with their exit code.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

from engine.errors import EngineError
from engine.kernel import ptrace
from engine.proc import tasks
from engine.proc.stat import read_stat

# How long one task may take to reach its ptrace-stop after PTRACE_INTERRUPT.
STOP_TIMEOUT = 5.0
# How long a dump waits for the tasks it killed to die.
KILL_TIMEOUT = 5.0
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

    def order(self) -> list[Proc]:
        """Processes parents first (root first)."""
        out: list[Proc] = []
        todo = [self.root]
        while todo:
            p = self.procs[todo.pop(0)]
            out.append(p)
            todo.extend(p.children)
        return out

    def release(self, kill: bool = False) -> None:
        """Detach from every thread; with kill, SIGKILL every process afterwards.

        Detaching first means the SIGKILL is not seen by us as a ptrace event and the tasks
        die as ordinary processes (their parent reaps them as usual).
        """
        for tid in reversed(self.seized):
            try:
                ptrace.detach(tid, 0)
            except OSError:
                pass  # the thread is gone (e.g. killed from outside): nothing to undo
        if kill:
            for p in self.procs.values():
                if p.state != "zombie":
                    try:
                        os.kill(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            self._wait_dead()
        self.seized = []

    def _wait_dead(self) -> None:
        """Wait (bounded) until every killed task has died: a zombie or gone. Reaping is
        its parent's business (the harness, a subreaper, reaps the root)."""
        deadline = time.monotonic() + KILL_TIMEOUT
        for p in self.procs.values():
            while time.monotonic() < deadline:
                try:
                    if read_stat(p.pid).state in ("Z", "X"):
                        break
                except (FileNotFoundError, ProcessLookupError):
                    break
                time.sleep(0.001)


def _threads(pid: int) -> list[int]:
    try:
        return tasks.threads(pid)
    except FileNotFoundError:
        return []  # exited: reported by the stop wait of its threads


def _children(pid: int) -> list[int]:
    try:
        return tasks.children(pid)
    except FileNotFoundError:
        return []


def freeze(root: int) -> FrozenTree:
    """Seize and stop the tree rooted at `root`. On error everything seized is released
    and an EngineError("seize", ...) names the task that failed."""
    tree = FrozenTree(root, {}, [])
    try:
        _freeze(tree)
    except EngineError:
        tree.release()
        raise
    except (OSError, TimeoutError) as e:
        tree.release()
        raise EngineError("seize", str(e)) from None
    return tree


def _seize_thread(tree: FrozenTree, pid: int, tid: int) -> None:
    try:
        ptrace.seize(tid, 0)
    except OSError as e:
        if e.errno == 3 and not os.path.exists(f"/proc/{pid}/task/{tid}"):  # ESRCH
            return  # the thread exited before we got it; it cannot matter any more
        why = {1: "operation not permitted (already traced, a kernel thread, or not ours)"}
        raise EngineError("seize", f"cannot seize task {tid}: "
                          f"{why.get(e.errno, e.strerror)}") from None
    tree.seized.append(tid)
    if ptrace.freeze(tid, STOP_TIMEOUT).group_stop_sig:
        tree.procs[pid].state = "stopped"


def _new_proc(pid: int) -> Proc:
    try:
        st = read_stat(pid)
    except (FileNotFoundError, ProcessLookupError):
        raise EngineError("seize", f"no such process {pid}") from None
    if st.flags & _PF_KTHREAD:
        raise EngineError("seize", f"cannot dump task {pid}: it is a kernel thread")
    if st.state in ("Z", "X"):
        # exit_code (stat field 52) is the wait status its reaper will get.
        return Proc(pid, st.ppid, st.pgid, st.sid, "zombie", exit_code=st.exit_code)
    return Proc(pid, st.ppid, st.pgid, st.sid, "alive")


def _freeze(tree: FrozenTree) -> None:
    root = tree.procs[tree.root] = _new_proc(tree.root)
    if root.state == "zombie":
        raise EngineError("seize", f"cannot dump task {tree.root}: it is a zombie")
    changed = True
    while changed:
        changed = False
        for proc in list(tree.procs.values()):
            if proc.state == "zombie":
                continue
            for tid in _threads(proc.pid):
                if tid not in proc.threads:
                    _seize_thread(tree, proc.pid, tid)
                    proc.threads.append(tid)
                    changed = True
        if changed:
            continue  # list children only once every known thread is stopped
        for proc in list(tree.procs.values()):
            if proc.state == "zombie":
                continue
            kids = _children(proc.pid)
            for kid in kids:
                if kid not in tree.procs:
                    tree.procs[kid] = _new_proc(kid)
                    changed = True
            proc.children = kids
    # Refresh ids now that nothing can change them any more (setsid/setpgid races).
    for proc in tree.procs.values():
        if proc.state != "zombie":
            st = read_stat(proc.pid)
            proc.ppid, proc.pgid, proc.sid = st.ppid, st.pgid, st.sid
            proc.threads.sort()
