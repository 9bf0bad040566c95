"""Process-tree helpers of the harness: walk, freeze, thaw, kill and reap by pid.

Everything here acts on explicit pids found under a known root (or under the harness
itself); nothing matches processes by name.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

from zdtm.proc import parse_status, read_text, status_ids

PR_SET_CHILD_SUBREAPER = 36
FROZEN_STATES = frozenset("TZX")  # group-stopped, zombie, dead


class TaskError(Exception):
    """A tree could not be frozen or killed in time."""


def set_subreaper() -> None:
    """Make orphaned descendants (e.g. restored trees) re-parent to this process."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"PR_SET_CHILD_SUBREAPER: {os.strerror(err)}")


def children(pid: int) -> list[int]:
    """Direct children of every thread of ``pid`` (empty when it is gone)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


def descendants(pid: int) -> list[int]:
    """All descendants of ``pid``, parents before children."""
    out: list[int] = []
    todo = children(pid)
    seen: set[int] = set()
    while todo:
        p = todo.pop(0)
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        todo.extend(children(p))
    return out


def tree(root: int) -> list[int]:
    """``root`` and its descendants (just the alive ones)."""
    return ([root] if os.path.exists(f"/proc/{root}") else []) + descendants(root)


def _thread_states(pid: int) -> list[str]:
    states = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return ["X"]
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                # the state follows the parenthesised comm, which may hold spaces
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):
            states.append("X")
    return states


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def freeze(root: int, timeout: float) -> list[int]:
    """SIGSTOP every task under ``root`` and wait until all threads are stopped.

    Loops until a walk of the tree finds no task it has not stopped (a parent may have
    forked before its SIGSTOP arrived).  A task already in group-stop (a restored tree left
    stopped) gets no SIGSTOP: it could not consume it, and the signal would stay pending
    until SIGCONT, a difference the checks would rightly report.  Returns the frozen pids;
    TaskError on the deadline.
    """
    deadline = time.monotonic() + timeout
    stopped: set[int] = set()
    while True:
        pids = tree(root)
        for pid in pids:
            if pid not in stopped:
                if any(s not in FROZEN_STATES for s in _thread_states(pid)):
                    _signal(pid, signal.SIGSTOP)
                stopped.add(pid)
        busy = [p for p in pids
                if any(s not in FROZEN_STATES for s in _thread_states(p))]
        if not busy and set(tree(root)) <= stopped:
            return pids
        if time.monotonic() > deadline:
            raise TaskError(f"tree of {root}: tasks {busy} not stopped after {timeout:.0f}s")
        time.sleep(0.01)


def stopped_ids(root: int, settle: float = 0.0) -> set[int]:
    """Tasks under ``root`` that are in group-stop of their own (the test stopped them),
    as pids in their own pid namespace: the same numbers name them after a restore into
    new namespaces.  Call before freeze(); thaw() leaves these stopped.

    ``settle``: a thread just detached by a tracer (a restore that left the tree stopped)
    is briefly running ('R', or still 't') on its way back into group-stop; such a task is
    looked at again until it is all 'T' or ``settle`` seconds have passed."""
    deadline = time.monotonic() + settle
    out = set()
    for pid in tree(root):
        states = _thread_states(pid)
        while (not all(s == "T" for s in states) and all(s in "TRt" for s in states)
               and time.monotonic() < deadline):
            time.sleep(0.001)
            states = _thread_states(pid)
        if all(s == "T" for s in states):
            out.add(_own_pid(pid))
    return out


def _own_pid(pid: int) -> int:
    try:
        ids = status_ids(parse_status(read_text(f"/proc/{pid}/status")), "NSpid")
    except OSError:
        return -1
    return ids[-1] if ids else pid


def thaw(pids: list[int], keep: set[int] | frozenset[int] = frozenset()) -> None:
    """SIGCONT each pid (children after parents do not matter: all were stopped), except
    those whose own-namespace pid is in ``keep`` (stopped by the test itself)."""
    for pid in pids:
        if not keep or _own_pid(pid) not in keep:
            _signal(pid, signal.SIGCONT)


def reap(pid: int) -> int | None:
    """Collect a child's status if it exited; None when it still runs or is not ours."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return status if got == pid else None


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Reap or wait for ``pids`` to disappear; returns those still there at the deadline."""
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left:
        for pid in list(left):
            reap(pid)
            if not os.path.exists(f"/proc/{pid}"):
                left.remove(pid)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return left


def kill_tree(pids: list[int], timeout: float) -> list[int]:
    """SIGKILL ``pids`` (and anything below them) and reap; returns unkillable pids."""
    allp: list[int] = []
    for pid in pids:
        for p in tree(pid):
            if p not in allp:
                allp.append(p)
    for pid in allp:
        _signal(pid, signal.SIGKILL)
    return wait_gone(allp, timeout)


def reap_zombie_children() -> None:
    """Reap zombies re-parented to us (as subreaper) that nobody else waits for."""
    for pid in children(os.getpid()):
        if "Z" in _thread_states(pid) or not os.path.exists(f"/proc/{pid}/task"):
            reap(pid)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    states = _thread_states(pid)
    return bool(states) and not all(s in "ZX" for s in states)


__all__ = ["TaskError", "children", "descendants", "freeze", "kill_tree",
           "pid_alive", "reap", "reap_zombie_children", "set_subreaper", "thaw", "tree",
           "wait_gone"]
