"""The namespaces a frozen tree lives in, and what a new namespace of each kind needs."""

from __future__ import annotations

import os

from engine.errors import EngineError
from engine.images.records import NamespaceRecord
from engine.proc import tasks


def inodes(pid: int) -> dict[str, int]:
    """Namespace type -> inode for `pid` (from the /proc/PID/ns links, "net:[4026...]")."""
    try:
        links = tasks.namespaces(pid)
    except OSError as e:
        raise EngineError("regs", f"cannot read namespaces of {pid}: {e.strerror}") from None
    return {name: _inode_of(link) for name, link in links.items()}


def inode(pid: int, name: str) -> int:
    """The inode of `pid`'s namespace of type `name` (one link, not all of inodes())."""
    try:
        return _inode_of(tasks.namespace(pid, name))
    except OSError as e:
        raise EngineError("regs", f"cannot read the {name} namespace of {pid}: "
                                  f"{e.strerror}") from None


def _inode_of(link: str) -> int:
    return int(link[link.index("[") + 1:-1])


def records(per_task: dict[int, dict[str, int]],
            unames: dict[int, tuple[str, str]]) -> list[NamespaceRecord]:
    """One record per distinct namespace of the tree, parents first (dict order of
    `per_task` is tree order). uts records carry the names asked from a task inside;
    user records carry the uid/gid maps."""
    own = inodes(os.getpid())
    seen: dict[tuple[str, int], NamespaceRecord] = {}
    for pid, nss in per_task.items():
        for typ, ino in nss.items():
            if (typ, ino) in seen:
                continue
            rec = NamespaceRecord(typ, ino, own.get(typ) == ino, pid)
            if typ == "uts" and pid in unames:
                rec.hostname, rec.domainname = unames[pid]
            if typ == "user":
                rec.uid_map = tasks.id_map(pid, "uid_map")
                rec.gid_map = tasks.id_map(pid, "gid_map")
            seen[(typ, ino)] = rec
    return list(seen.values())
