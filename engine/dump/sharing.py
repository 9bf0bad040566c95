"""Kernel tables that processes of the tree share, and the sharings restore cannot rebuild.

Threads of one process share all of them. Between processes, clone() shares the creator's
fd table (CLONE_FILES), fs info: cwd, root, umask (CLONE_FS), address space (CLONE_VM) and
signal handlers (CLONE_SIGHAND, which needs CLONE_VM) with the child. kcmp() tells which
processes share which table.

Restore creates every task from its parent, so it can share a table again when the tasks
holding it are one chain of parents and children below a first holder: each of the others
records, in its inventory entry, the tables it shares with its parent (TaskEntry.shared).
A task sharing its parent's address space is created by a clone injected into the already
restored parent (engine/restore/vmchild.py), which limits it further: no children of its
own, its parent's session, its parent's process group or one of its own that no other task
joins, no pidfd in an fd table of its own and none referring to it (pidfds are opened while
spawning, before it exists). Anything else is refused here, while the tree can still run
on, with one line naming the tasks and the table.
"""

from __future__ import annotations

import functools

from engine.dump.tree import FrozenTree, Proc
from engine.errors import EngineError
from engine.images.records import FdEntry, FileRecord
from engine.kernel import uapi
from engine.kernel.sys import kcmp

#: table kind (as in TaskEntry.shared) -> kcmp type
KCMP_TYPES = {"vm": uapi.KCMP_VM, "files": uapi.KCMP_FILES, "fs": uapi.KCMP_FS,
              "sighand": uapi.KCMP_SIGHAND}
NAMES = {"vm": "address space (CLONE_VM)", "files": "fd table (CLONE_FILES)",
         "fs": "fs info (CLONE_FS)", "sighand": "signal handlers (CLONE_SIGHAND)"}


def find(frozen: FrozenTree) -> dict[int, list[str]]:
    """pid -> the tables it shares with its parent (only processes that share one).
    Raises EngineError("seize") for a sharing restore cannot rebuild."""
    live = [p for p in frozen.order() if p.state != "zombie"]
    shared: dict[int, list[str]] = {}
    for kind, code in KCMP_TYPES.items():
        for members in _classes(live, code, kind):
            pids = {m.pid for m in members}
            tops = [m for m in members if m.ppid not in pids or m.pid == frozen.root]
            if len(tops) > 1:
                raise EngineError("seize", f"tasks {_pids(tops)} share one {NAMES[kind]} "
                                           "that none of them got from its parent: restore "
                                           "cannot share it again")
            for m in members:
                if m is not tops[0]:
                    shared.setdefault(m.pid, []).append(kind)
    for p in live:
        _check_child(frozen, p, shared.get(p.pid, []))
    return shared


def _classes(live: list[Proc], code: int, kind: str) -> list[list[Proc]]:
    """Groups of two or more processes sharing one table (kcmp orders the kernel objects:
    a sort, not a comparison of every pair)."""
    def order(a: Proc, b: Proc) -> int:
        try:
            res = kcmp(a.pid, b.pid, code)
        except OSError as e:
            raise EngineError("seize", f"kcmp of the {NAMES[kind]} of tasks {a.pid} and "
                                       f"{b.pid}: {e.strerror}") from None
        if res not in (0, 1, 2):
            raise EngineError("seize", f"kcmp cannot order the {NAMES[kind]} of tasks "
                                       f"{a.pid} and {b.pid}")
        return (0, -1, 1)[res]

    groups: list[list[Proc]] = []
    for p in sorted(live, key=functools.cmp_to_key(order)):
        if groups and order(groups[-1][0], p) == 0:
            groups[-1].append(p)
        else:
            groups.append([p])
    return [g for g in groups if len(g) > 1]


def _check_child(frozen: FrozenTree, p: Proc, kinds: list[str]) -> None:
    """Refuse what creating p from its parent with these tables cannot give back."""
    if not kinds:
        return
    parent = frozen.procs[p.ppid]
    what = f"task {p.pid} shares the {' and '.join(NAMES[k] for k in kinds)} of its " \
           f"parent {parent.pid}"
    if p.sid not in (p.pid, parent.sid):
        raise EngineError("seize", f"{what} but is in another session, which restore "
                                   "creates it from a sibling for: cannot restore")
    if "vm" not in kinds:
        return
    if p.children:
        raise EngineError("seize", f"{what} and has children of its own: cannot restore")
    if p.sid != parent.sid:
        raise EngineError("seize", f"{what} and leads its own session: cannot restore")
    if p.pgid != parent.pgid and (p.pgid != p.pid or any(
            q.pgid == p.pid for q in frozen.procs.values() if q is not p)):
        raise EngineError("seize", f"{what} and is in process group {p.pgid}, neither its "
                                   "parent's nor one of its own alone: cannot restore")


def check_files(shared: dict[int, list[str]], fds: dict[int, list[FdEntry]],
                files: list[FileRecord]) -> None:
    """Raise EngineError("files") for a pidfd in the fd table of a task sharing its
    parent's address space but not its fd table, or a pidfd referring to such a task
    (restore opens pidfds while spawning, before that task exists)."""
    vm_children = {pid for pid, kinds in shared.items() if "vm" in kinds}
    pidfds = {rec.id: rec.pidfd.pid for rec in files if rec.pidfd is not None}
    for pid in sorted(vm_children):
        if "files" in shared[pid]:
            continue
        for e in fds[pid]:
            if e.file_id in pidfds:
                raise EngineError("files", f"task {pid} shares the address space (CLONE_VM) "
                                           "of its parent but not its fd table, and holds a "
                                           f"pidfd (fd {e.fd}): cannot restore")
    for target in pidfds.values():
        if target in vm_children:
            raise EngineError("files", f"a pidfd refers to task {target}, which shares the "
                                       "address space (CLONE_VM) of its parent: cannot "
                                       "restore")


def staged_fds(shared: dict[int, list[str]], fds: dict[int, list[FdEntry]]) -> int:
    """Fd numbers restore holds besides the descriptions for the fd tables of tasks
    sharing their parent's address space but not its fd table (their parents hold each
    one at a spare number until they are cloned)."""
    return sum(max((e.fd for e in fds[pid]), default=-1) + 1 for pid, kinds in shared.items()
               if "vm" in kinds and "files" not in kinds)


def _pids(procs: list[Proc]) -> str:
    return ", ".join(str(p.pid) for p in procs)
