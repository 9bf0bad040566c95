"""Refuse, at dump time, sessions and process groups the restore cannot rebuild.

Restore forks every task from its parent; a task joins the session it inherits (or leads
its own), and joins a process group of a task of the tree. A child whose session is not
its parent's is created by a sibling in that session (CLONE_PARENT). Everything else
(a group or session whose leader is gone, a session no sibling is in) would come back
wrong, so the dump refuses it while the tree can still run on.
"""

from __future__ import annotations

from engine.dump.tree import FrozenTree, Proc
from engine.errors import EngineError


def check(frozen: FrozenTree) -> None:
    """Raise EngineError("seize") naming the first task whose ids cannot be restored."""
    procs = frozen.procs
    for p in frozen.order():
        if p.pid == frozen.root:
            continue  # led from outside or by itself: restore keeps what it inherits
        parent = procs[p.ppid]
        if p.pgid not in procs and p.pgid != parent.pgid:
            raise EngineError("seize", f"task {p.pid}: process group {p.pgid} has no "
                                       "leader in the tree and is not its parent's")
        if p.sid in (p.pid, parent.sid):
            continue
        if p.sid not in procs:
            raise EngineError("seize", f"task {p.pid}: session {p.sid} has no leader in "
                                       "the tree and is not its parent's")
        if not any(_can_make(s, p) for s in (procs[c] for c in parent.children)):
            raise EngineError("seize", f"task {p.pid}: session {p.sid} is not its "
                                       "parent's and no live sibling is in it")


def _can_make(sibling: Proc, p: Proc) -> bool:
    return sibling.pid != p.pid and sibling.sid == p.sid and sibling.state != "zombie"
