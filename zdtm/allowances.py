"""Allowed deviations: differences an engine makes on purpose, declared and shown apart.

An engine driver declares each difference it makes deliberately as an Allowance with its
reason (CRIU restores into a new time namespace; it restores anonymous shared memory
through a memfd).  Before the checks compare S0 with S1, ``reconcile`` looks for exactly
that difference, field by field, sets the field of S1 back to the S0 value and records a
Deviation.  Every other field of the same object is left as it was, so the checks still
fail any other difference in it (a moved offset on the same fd, a flipped byte in the same
VMA, another namespace of the same process).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from zdtm.snapshot import ProcState, TreeState

O_DIRECTORY = 0o200000
SHMEM_PATH = "/dev/zero (deleted)"  # how /proc names anonymous shared memory
MEMFD_PREFIX = "/memfd:"
TIME_KINDS = ("time", "time_for_children")


@dataclass(frozen=True)
class Allowance:
    """One deliberate difference: the check it concerns, a short name, and why."""

    check: str
    name: str
    reason: str


@dataclass(frozen=True)
class Deviation:
    """One place where an allowance matched."""

    allowance: Allowance
    message: str

    def __str__(self) -> str:
        a = self.allowance
        return f"{a.check}: allowed ({a.name}): {self.message} [{a.reason}]"


Rule = Callable[[TreeState, TreeState, Allowance], list[Deviation]]


def reconcile(before: TreeState, after: TreeState, allowances: Sequence[Allowance]
              ) -> tuple[TreeState, list[Deviation]]:
    """A copy of ``after`` with every allowed difference set back, and what was allowed.

    An allowance whose (check, name) has no rule here is a driver bug: ValueError.
    """
    if not allowances:
        return after, []
    out = copy.copy(after)
    out.procs = {pid: copy.copy(p) for pid, p in after.procs.items()}
    found: list[Deviation] = []
    for allowance in allowances:
        rule = _RULES.get((allowance.check, allowance.name))
        if rule is None:
            raise ValueError(f"no rule for allowance {allowance.check}/{allowance.name}")
        found += rule(before, out, allowance)
    return out, found


def _pairs(before: TreeState, after: TreeState) -> list[tuple[ProcState, ProcState]]:
    return [(b, after.procs[pid]) for pid, b in before.procs.items() if pid in after.procs]


def _new_time_ns(before: TreeState, after: TreeState, allowance: Allowance
                 ) -> list[Deviation]:
    """Each time namespace of S0 became one new namespace in S1, the same for every task."""
    pairs = _pairs(before, after)
    old_labels = {p.namespaces.get(k) for p in before.procs.values() for k in TIME_KINDS}
    out = []
    for kind in TIME_KINDS:
        moves: dict[str, set[str]] = {}
        for b, a in pairs:
            vb, va = b.namespaces.get(kind), a.namespaces.get(kind)
            if vb is not None and va is not None:
                moves.setdefault(vb, set()).add(va)
        targets = [next(iter(v)) for v in moves.values() if len(v) == 1]
        for vb, vas in moves.items():
            va = next(iter(vas))
            # one new namespace per old one: a split or a merge is a real difference
            if len(vas) != 1 or va == vb or va in old_labels or targets.count(va) != 1:
                continue
            holders = [a for b, a in pairs if b.namespaces.get(kind) == vb]
            for a in holders:
                a.namespaces = {**a.namespaces, kind: vb}
            out.append(Deviation(allowance, f"{kind} namespace {vb} -> {va} "
                                            f"({len(holders)} process(es))"))
    return out


def _shmem_maps(before: TreeState, after: TreeState, allowance: Allowance
                ) -> list[Deviation]:
    out = []
    for b, a in _pairs(before, after):
        old = {v.start: v for v in b.maps}
        maps = []
        for v in a.maps:
            vb = old.get(v.start)
            if vb is not None and vb.path == SHMEM_PATH and v.path == MEMFD_PREFIX + SHMEM_PATH:
                out.append(Deviation(allowance, f"{a.name()}: VMA {v.describe()}"))
                v = dataclasses.replace(v, path=vb.path)
            maps.append(v)
        a.maps = maps
    return out


def _shmem_fds(before: TreeState, after: TreeState, allowance: Allowance
               ) -> list[Deviation]:
    out = []
    for b, a in _pairs(before, after):
        fds = dict(a.fds)
        for fd, fa in a.fds.items():
            fb = b.fds.get(fd)
            if (fb is not None and fb.target == SHMEM_PATH
                    and fa.target == MEMFD_PREFIX + SHMEM_PATH):
                out.append(Deviation(allowance, f"{a.name()}: fd {fd} {fa.target}"))
                fds[fd] = dataclasses.replace(fa, target=fb.target)
        a.fds = fds
    return out


def _dir_fd_flags(before: TreeState, after: TreeState, allowance: Allowance
                  ) -> list[Deviation]:
    """O_DIRECTORY lost on a directory fd: only that bit is put back, other flags compare."""
    out = []
    for b, a in _pairs(before, after):
        fds = dict(a.fds)
        for fd, fa in a.fds.items():
            fb = b.fds.get(fd)
            if fb is not None and fb.flags & O_DIRECTORY and not fa.flags & O_DIRECTORY:
                out.append(Deviation(allowance, f"{a.name()}: fd {fd} {fa.target} "
                                                "lost O_DIRECTORY"))
                fds[fd] = dataclasses.replace(fa, flags=fa.flags | O_DIRECTORY)
        a.fds = fds
    return out


Pages = frozenset[tuple[int, int]]


def _forked(parent: ProcState, child: ProcState) -> bool:
    """Whether `child` may have been forked by its parent `parent`: a forked child starts
    in its parent's session and leaves it only by leading a new one, so a child in another
    session it does not lead was forked by someone else and adopted (an orphan)."""
    return child.ppid == parent.pid and child.sid in (parent.sid, child.pid)


def _cow(lost: bool, indirect: bool = False) -> Rule:
    """Pages shared copy-on-write between two processes that are no longer shared after
    (lost=True) or newly shared (lost=False): only those pages are put back; the rest of
    the pair's pages, and every other kind of sharing, still compare. indirect: only the
    lost pages that are not at the same address in a parent and a child it forked (moved
    by one of them after the fork, or shared by two processes through an ancestor that
    has rewritten its own copy since, or by an orphan and the subreaper that adopted it):
    an engine that rebuilds what each child shares with the parent that forked it
    restores all the others."""

    def allowed(before: TreeState, pair: tuple[int, int], pages: Pages) -> Pages:
        if not indirect:
            return pages
        a, b = (before.procs.get(p) for p in pair)
        related = a is not None and b is not None and (_forked(a, b) or _forked(b, a))
        return frozenset(p for p in pages if p[0] != p[1] or not related)

    def rule(before: TreeState, after: TreeState, allowance: Allowance) -> list[Deviation]:
        out, cow = [], dict(after.cow)
        for pair in before.cow.keys() | after.cow.keys():
            sb, sa = before.cow.get(pair, frozenset()), after.cow.get(pair, frozenset())
            moved = allowed(before, pair, sb - sa if lost else sa - sb)
            if not moved or any(p not in after.procs for p in pair):
                continue
            fixed = sa | moved if lost else sa - moved
            if fixed:
                cow[pair] = frozenset(fixed)
            else:
                cow.pop(pair, None)
            names = " and ".join(after.procs[p].name() for p in pair)
            out.append(Deviation(allowance, f"{names}: {len(moved)} private pages "
                                            f"{'no longer' if lost else 'newly'} shared"))
        after.cow = cow
        return out

    return rule


_RULES: dict[tuple[str, str], Rule] = {
    ("sharing", "cow-lost"): _cow(lost=True),
    ("sharing", "cow-gained"): _cow(lost=False),
    ("sharing", "cow-lost-indirect"): _cow(lost=True, indirect=True),
    ("ns", "new-time-ns"): _new_time_ns,
    ("maps", "shmem-as-memfd"): _shmem_maps,
    ("fds", "shmem-as-memfd"): _shmem_fds,
    ("fds", "dir-fd-flags"): _dir_fd_flags,
}
