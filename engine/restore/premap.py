"""Private pages a child shared copy-on-write with its parent, restored shared.

Pages are shared copy-on-write only through fork(), so they must be in place before the
parent forks the child. The dump recorded, per process, the pages that were the very page
its parent maps at the same address (MmCore.cow). Here, every VMA holding such pages
("inheriting") and every parent VMA they come from ("exported") is premapped: built in
the task while it is still a copy of the engine, before it forks its children, at a
scratch place `slot(address)` that is the same in every task of the tree (a fixed shift
per cluster of overlapping VMA ranges, inside the restorer's window). So a child finds
its parent's premapped memory at the slot address of its own VMA, exactly as after a
fork, and changes it in place:

- an inheriting VMA keeps the inherited range; the task writes its own stored pages over
  it (which gives the task its own copies of those pages only), and drops (MADV_DONTNEED)
  the pages it had none of, so they read as zeros (anonymous) or as the file again;
- an exported VMA that does not inherit is mapped fresh there and filled;
- everything else of the clusters (an ancestor's premaps) is unmapped.

The table run of each task then moves each premapped VMA into place (mremap, one per
piece: a range that lies inside one mapping made in the task or an ancestor) and gives
it its protection; the engine writes pages only into the other VMAs.

What stays unshared (as before): pages the child shares with the parent at another
address (moved after the fork), pages a process shares with a grandparent or a sibling
but not with its parent, VMAs whose parent side is not one compatible premappable range,
a child created by a sibling (CLONE_PARENT), and lazy restores (the premapped pages would
have to come from the lazy-pages daemon).
"""

from __future__ import annotations

import bisect
import ctypes
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from engine.dump.intervals import Interval, intersect, normalise, subtract
from engine.errors import EngineError
from engine.images import DumpImage
from engine.images.load import COW_KINDS
from engine.images.records import PAGE_SIZE, MmCore, Vma, deleted_key
from engine.images.vmatable import KIND_INDEX, columns_of
from engine.kernel import pagecrc, uapi
from engine.kernel import sys as ksys
from engine.restore.pages import Chunk, PageSource

#: room between clusters in the slot area (more than the kernel's stack guard gap)
GAP = 2 << 20
_RW = uapi.PROT_READ | uapi.PROT_WRITE
_MAP_KEEP = uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS | uapi.MAP_GROWSDOWN
_COW_KINDS = frozenset(KIND_INDEX[k] for k in COW_KINDS)  # as the VMA table's column


@dataclass
class Region:
    """One premapped VMA of a task."""

    vma: Vma
    inherited: bool  # its range comes from the parent's premapped memory
    #: dumped-address ranges that each lie inside one mapping of the slot area
    pieces: list[Interval] = field(default_factory=list)


@dataclass
class TaskPremap:
    """A task's premapped VMAs and what the task does to them before it forks."""

    regions: list[Region] = field(default_factory=list)
    shared: list[Interval] = field(default_factory=list)  # pages taken from the parent
    #: filled in by Plan.place(), in slot addresses: inherited ranges to keep, VMAs to
    #: map fresh (and where), pages to drop, page copies
    keep: list[Interval] = field(default_factory=list)
    fresh: list[tuple[Vma, int]] = field(default_factory=list)
    drops: list[Interval] = field(default_factory=list)
    writes: list[Chunk] = field(default_factory=list)

    def starts(self) -> set[int]:
        """Start addresses of the premapped VMAs (the table moves them, pages are in)."""
        return {r.vma.start for r in self.regions}

    def pieces(self) -> int:
        """How many moves the table run makes."""
        return sum(len(r.pieces) for r in self.regions)


@dataclass
class Plan:
    """Every task's premaps and the slot area they live in."""

    tasks: dict[int, TaskPremap] = field(default_factory=dict)
    clusters: list[Interval] = field(default_factory=list)  # dumped-address ranges
    slots: list[int] = field(default_factory=list)  # slot address of each cluster

    @property
    def size(self) -> int:
        """Bytes of the slot area (clusters and the gaps after them)."""
        return sum(hi - lo + GAP for lo, hi in self.clusters)

    def place(self, base: int, sources: dict[int, PageSource]) -> None:
        """Put the slot area at `base` and work out every task's page copies."""
        pos = base
        self.slots = []
        for lo, hi in self.clusters:
            self.slots.append(pos)
            pos += hi - lo + GAP
        for pid, tp in self.tasks.items():
            _fill(tp, sources[pid], self.slot)
        if self.tasks:
            pagecrc.prepare()  # the tasks check the pages they copy

    def slot(self, addr: int) -> int:
        """Where the premapped memory of dumped address `addr` is."""
        i = bisect.bisect_right(self.clusters, (addr, 1 << 64)) - 1
        lo, hi = self.clusters[i]
        assert lo <= addr <= hi
        return self.slots[i] + addr - lo

    def slot_ranges(self, pid: int) -> list[Interval]:
        """The slot ranges task pid's premaps occupy (kept by its table run)."""
        tp = self.tasks.get(pid)
        if tp is None:
            return []
        return [(self.slot(lo), self.slot(lo) + hi - lo) for r in tp.regions
                for lo, hi in r.pieces]

    def areas(self) -> list[Interval]:
        """The slot area of every cluster."""
        return [(s, s + hi - lo) for s, (lo, hi) in zip(self.slots, self.clusters)]


def _premappable(v: Vma) -> bool:
    return v.kind in COW_KINDS and not v.flags & uapi.MAP_SHARED


def _compatible(v: Vma, w: Vma) -> bool:
    """Whether memory mapped like w serves as v (same kind of mapping, same file at the
    same offsets, same mmap flags: mremap keeps them)."""
    if (v.flags & _MAP_KEEP) != (w.flags & _MAP_KEEP) or ("nr" in v.vmflags) != (
            "nr" in w.vmflags):
        return False
    if v.kind == "file" or w.kind == "file":
        return (v.kind == w.kind and (v.path, v.dev, v.inode) == (w.path, w.dev, w.inode)
                and v.pgoff - v.start == w.pgoff - w.start)
    return True


def _covering(v: Vma, parent: Sequence[Vma], starts: Sequence[int],
              ends: Sequence[int]) -> list[Vma] | None:
    """The parent's VMAs (sorted; `starts` and `ends` their columns) that cover v without
    a hole, each compatible; else None."""
    found = list(parent[bisect.bisect_right(ends, v.start):bisect.bisect_left(starts, v.end)])
    pos = v.start
    for w in found:
        if w.start > pos or not _premappable(w) or not _compatible(v, w):
            return None
        pos = w.end
    return found if found and pos >= v.end else None


def _holding_cow(vmas: Sequence[Vma], cow: list[Interval]) -> list[int]:
    """Indexes of the premappable VMAs that hold part of a cow run (sorted, disjoint),
    found on the table's columns (a record is made only for these)."""
    cols = columns_of(vmas)
    cow_starts, cow_ends = [lo for lo, _ in cow], [hi for _, hi in cow]
    out = []
    for i, (start, end, kind, flags) in enumerate(zip(cols.start, cols.end, cols.kind,
                                                      cols.flags)):
        if kind not in _COW_KINDS or flags & uapi.MAP_SHARED:
            continue
        k = bisect.bisect_right(cow_ends, start)  # the first cow run ending past it
        if k < len(cow) and cow_starts[k] < end:
            out.append(i)
    return out


def plan(image: DumpImage, order: list[int], creator: dict[int, int]) -> Plan:
    """The premaps of the live tasks `order` (parents before children); `creator`: task
    -> the task that forks it, for the tasks forked by their dumped parent."""
    mms: dict[int, MmCore] = {}
    for pid in order:
        mm = image.tasks[pid].mm
        assert mm is not None
        mms[pid] = mm
    exported: dict[int, dict[int, Vma]] = {pid: {} for pid in order}
    inheriting: dict[int, list[Vma]] = {pid: [] for pid in order}
    for pid in order:
        ppid = creator.get(pid)
        cow = [(a, a + n * PAGE_SIZE) for a, n in mms[pid].cow]
        if ppid not in mms or not cow:
            continue
        theirs, mine = mms[ppid].vmas, mms[pid].vmas
        pcols = columns_of(theirs)
        for i in _holding_cow(mine, cow):
            v = mine[i]
            ws = _covering(v, theirs, pcols.start, pcols.end)
            if ws is not None:
                inheriting[pid].append(v)
                exported[ppid].update((w.start, w) for w in ws)
    out = Plan()
    for pid in order:
        own = {v.start: v for v in inheriting[pid]}
        premapped = sorted({**exported[pid], **own}.values(), key=lambda v: v.start)
        if not premapped:
            continue
        tp = TaskPremap()
        ppid = creator.get(pid)
        parent = out.tasks.get(ppid) if ppid is not None else None
        for v in premapped:
            if v.start in own and parent is not None:
                pieces = [(max(lo, v.start), min(hi, v.end)) for r in parent.regions
                          for lo, hi in r.pieces if lo < v.end and v.start < hi]
                tp.regions.append(Region(v, True, pieces))
            else:
                tp.regions.append(Region(v, False, [(v.start, v.end)]))
        inherited = [(r.vma.start, r.vma.end) for r in tp.regions if r.inherited]
        tp.shared = intersect(normalise([(a, a + n * PAGE_SIZE) for a, n in mms[pid].cow]),
                              inherited)
        out.tasks[pid] = tp
    out.clusters = normalise([(r.vma.start, r.vma.end) for tp in out.tasks.values()
                              for r in tp.regions])
    return out


def check_contents(image: DumpImage, plan_: Plan, sources: dict[int, PageSource],
                   creator: dict[int, int]) -> None:
    """Every page a task takes from its parent was dumped in both with the same checksum:
    an image that says otherwise is refused (its task would get the parent's bytes)."""
    for pid, tp in plan_.tasks.items():
        if not tp.shared:
            continue
        ppid = creator[pid]
        mine, theirs = _page_sums(sources[pid], tp.shared), _page_sums(sources[ppid],
                                                                        tp.shared)
        for addr, crc in mine.items():
            if theirs.get(addr) != crc:
                raise EngineError("read", f"{image.path}: task {pid} says its page at "
                                          f"{addr:#x} is its parent's, but the two were "
                                          "not dumped alike")
        missing = sum(hi - lo for lo, hi in tp.shared) // PAGE_SIZE - len(mine)
        if missing:
            raise EngineError("read", f"{image.path}: task {pid} shares {missing} pages "
                                      "with its parent that it has no dumped copy of")


def _page_sums(src: PageSource, ranges: list[Interval]) -> dict[int, tuple[int, int]]:
    """address -> (checksum algorithm, checksum) of each stored page in the ranges."""
    out: dict[int, tuple[int, int]] = {}
    for c in src.chunks_in(ranges):
        assert c.reader is not None
        sums = c.reader.sums
        for k in range(c.length // PAGE_SIZE):
            out[c.dst + k * PAGE_SIZE] = (sums.algo, sums.values[c.offset // PAGE_SIZE + k])
    return out


def _fill(tp: TaskPremap, src: PageSource, slot: Callable[[int], int]) -> None:
    whole = normalise([(r.vma.start, r.vma.end) for r in tp.regions])
    own = subtract(whole, tp.shared)
    chunks = src.chunks_in(own)
    tp.writes = [c._replace(dst=slot(c.dst)) for c in chunks]
    stored = normalise([(c.dst, c.dst + c.length) for c in chunks])
    inherited = normalise([(r.vma.start, r.vma.end) for r in tp.regions if r.inherited])
    tp.keep = [(slot(lo), slot(lo) + hi - lo) for lo, hi in inherited]
    tp.drops = [(slot(lo), slot(lo) + hi - lo)
                for lo, hi in subtract(intersect(own, inherited), stored)]
    tp.fresh = [(r.vma, slot(r.vma.start)) for r in tp.regions if not r.inherited]


# ---- in the new task (still a copy of the engine), before it forks its children --------


def build(tp: TaskPremap | None, areas: list[Interval], objfds: dict[str, int]) -> None:
    """Make this task's premapped memory: keep what it inherits, unmap the rest of the
    slot area (`areas`), map the rest fresh, drop the pages it lacks, write its own.
    objfds: deleted_key -> the fd every task holds of a mapped unlinked file."""
    try:
        for lo, hi in subtract(areas, tp.keep if tp is not None else []):
            ksys.munmap(lo, hi - lo)
        if tp is None:
            return
        for v, at in tp.fresh:
            _map_fresh(v, at, objfds)
        for lo, hi in tp.drops:
            ksys.syscall(uapi.SYS_madvise, lo, hi - lo, uapi.MADV_DONTNEED)
    except OSError as e:
        raise EngineError("mm", f"premapping private memory: {e.strerror}") from None
    for c in tp.writes:
        assert c.reader is not None
        c.reader.verify(c.offset, c.src, c.length)
        ctypes.memmove(c.dst, c.src, c.length)


def verify_writes(tp: TaskPremap) -> None:
    """Check the stored pages a task copies into its premapped memory (build() checks
    each as it copies; a tree made by one syscall table has them checked first)."""
    for c in tp.writes:
        assert c.reader is not None
        c.reader.verify(c.offset, c.src, c.length)


def fresh_mapping(v: Vma, objfds: dict[str, int]) -> tuple[int, str | None]:
    """mmap flags of an exported VMA mapped fresh, and the path of its file (None:
    anonymous; an unlinked file through the description the root made of it again)."""
    flags = (v.flags & _MAP_KEEP) | uapi.MAP_FIXED_NOREPLACE
    if "nr" in v.vmflags:
        flags |= uapi.MAP_NORESERVE
    if v.kind != "file":
        return flags, None
    assert v.path is not None
    path = f"/proc/self/fd/{objfds[deleted_key(v.dev, v.inode)]}" if v.deleted else v.path
    return flags & ~uapi.MAP_ANONYMOUS, path


def _map_fresh(v: Vma, at: int, objfds: dict[str, int]) -> None:
    flags, path = fresh_mapping(v, objfds)
    if path is None:
        ksys.mmap(at, v.end - v.start, _RW, flags)
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        ksys.mmap(at, v.end - v.start, _RW, flags, fd, v.pgoff)
    finally:
        os.close(fd)
