"""Where things go in the restored address space, and the table that builds it.

The fresh child inherits the engine's layout (Python, its libraries, the engine's vdso and
vvar). `plan_window()` picks a scratch window that is free both there and in the dumped
layout: it holds the table runner region and temporary places for the vdso/vvar and for
shared memory objects. `layout_table()` builds the one table run that replaces the whole
old layout with the dumped one: munmap everything but the runner and the vdso/vvar, move
those to their dumped addresses, map every VMA (file mappings grouped per file, so one fd
at a time is open), and apply madvise state.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import os
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.errors import EngineError
from engine.images import ipcns, vmatable
from engine.images.records import PAGE_SIZE, MmCore, ShmemEntry, Vma, deleted_key
from engine.images.vmatable import KIND_INDEX, VmaColumns
from engine.kernel import blob, uapi
from engine.proc import maps as procmaps
from engine.proc.maps import read_maps
from engine.restore import layoutrows

TASK_SIZE = (1 << 47) - PAGE_SIZE  # x86_64 4-level paging user space limit
_SPECIAL_NAMES = ("[vvar]", "[vvar_vclock]", "[vdso]")
_SPECIAL_KINDS = ("vvar", "vdso")
_GAP = 1 << 30  # keep the scratch window this far from any existing mapping
_WINDOW_ALIGN = 1 << 40
# smaps VmFlags that are restored by madvise(), and whether failing is acceptable
# (hugepage/KSM advice depends on kernel config and must not fail a restore). "lo"
# (VM_LOCKED) is mlock(), applied before the pages are written: they are then faulted in
# and locked at once, as the dumped task had them.
_MLOCK = -1
_MADVISE = {
    "sr": (uapi.MADV_SEQUENTIAL, False),
    "rr": (uapi.MADV_RANDOM, False),
    "lo": (_MLOCK, False),
    "dc": (uapi.MADV_DONTFORK, False),
    "dd": (uapi.MADV_DONTDUMP, False),
    "wf": (uapi.MADV_WIPEONFORK, False),
    "hg": (uapi.MADV_HUGEPAGE, True),
    "nh": (uapi.MADV_NOHUGEPAGE, True),
    "mg": (uapi.MADV_MERGEABLE, True),
}


def _page_up(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


@dataclass(frozen=True)
class Special:
    """A vdso/vvar mapping: where the child has it now, where it must go."""

    name: str
    start: int
    end: int
    target: int | None  # None: the dumped process had none, unmap it

    @property
    def size(self) -> int:
        """Length in bytes."""
        return self.end - self.start


@dataclass
class Window:
    """The scratch window in the child: the runner region, then temporary spots."""

    base: int
    region_size: int
    specials_tmp: int  # temporary home of the vdso/vvar block while the layout changes
    shmem_tmp: dict[str, int] = field(default_factory=dict)  # shmem id -> full mapping
    anon_tmp: int = 0  # where anonymous VMAs kept apart are first mapped (see layout_table)
    premap: int = 0  # the slot area of premapped private memory (engine.restore.premap)
    end: int = 0

    @property
    def region(self) -> tuple[int, int]:
        """[start, end) of the table runner region."""
        return self.base, self.base + self.region_size


@functools.cache
def engine_specials() -> tuple[tuple[str, int, int], ...]:
    """The engine's own vvar/vvar_vclock/vdso (a forked child has them at the same place:
    read once, by the engine server before it forks any step, engine/serve.py)."""
    return tuple((v.path, v.start, v.end) for v in read_maps(os.getpid())
                 if v.path in _SPECIAL_NAMES)


def match_specials(mm: MmCore, mine: Sequence[tuple[str, int, int]]) -> list[Special]:
    """Pair the child's vdso/vvar mappings with the dumped ones, in address order.

    Both come from this kernel, so the blocks must agree in number and sizes; the vdso
    code finds its data at a fixed offset from itself, so the block moves as a whole.
    """
    dumped = [mm.vmas[i] for i in vmatable.columns_of(mm.vmas).of_kinds(*_SPECIAL_KINDS)]
    if not dumped:
        return [Special(n, s, e, None) for n, s, e in mine]
    if [e - s for _, s, e in mine] != [v.end - v.start for v in dumped]:
        raise EngineError("mm", "the dumped vdso/vvar layout "
                                f"{[(v.kind, v.end - v.start) for v in dumped]} does not match "
                                f"this kernel's {[(n, e - s) for n, s, e in mine]}")
    return [Special(n, s, e, v.start) for (n, s, e), v in zip(mine, dumped)]


def _overlaps(a0: int, a1: int, ranges: list[tuple[int, int]]) -> bool:
    return any(a0 < r1 and r0 < a1 for r0, r1 in ranges)


def _used(cols: VmaColumns, lo: int, hi: int) -> bool:
    """Whether a VMA of these (sorted, disjoint) overlaps [lo, hi)."""
    i = bisect.bisect_right(cols.end, lo)
    return i < len(cols.start) and cols.start[i] < hi


def plan_window(mms: list[MmCore], region_size: int, shmem: list[ShmemEntry],
                specials: list[Special], premap_size: int = 0) -> Window:
    """Choose a scratch window free in the engine's layout and in every dumped one (the
    same addresses then serve every task of the tree), with premap_size bytes for
    premapped private memory at its end."""
    specials_size = sum(s.size for s in specials)
    dumped = [vmatable.columns_of(mm.vmas) for mm in mms]
    anon_max = max((c.end[i] - c.start[i] for c in dumped for i in c.of_kinds("anon")),
                   default=0)
    size = region_size + _GAP + specials_size + sum(s.size + _GAP for s in shmem) \
        + anon_max + _GAP + _page_up(premap_size) + _GAP
    mine = [(lo, hi) for lo, hi in procmaps.ranges(os.getpid()) if hi <= TASK_SIZE]
    base = _WINDOW_ALIGN
    while base + size + _GAP <= TASK_SIZE:
        lo, hi = base - _GAP, base + size + _GAP
        if not _overlaps(lo, hi, mine) and not any(_used(c, lo, hi) for c in dumped):
            break
        base += _WINDOW_ALIGN
    else:
        raise EngineError("mm", f"no free window of {size} bytes for the restorer")
    w = Window(base, region_size, base + region_size + _GAP)
    pos = w.specials_tmp + _page_up(specials_size) + _GAP
    for s in shmem:
        w.shmem_tmp[s.id] = pos
        pos += s.size + _GAP
    w.anon_tmp = pos
    w.premap = pos + _page_up(anon_max) + _GAP
    w.end = w.premap + _page_up(premap_size) + _GAP
    return w


def _unmap_all_but(t: blob.Table, keep: list[tuple[int, int]]) -> None:
    pos = 0
    for start, end in sorted(keep):
        if start > pos:
            t.add(uapi.SYS_munmap, pos, start - pos, what=f"munmap {pos:#x}-{start:#x}")
        pos = max(pos, end)
    if pos < TASK_SIZE:
        t.add(uapi.SYS_munmap, pos, TASK_SIZE - pos, what=f"munmap {pos:#x}-{TASK_SIZE:#x}")


def _move_specials(t: blob.Table, specials: list[Special], tmp: int) -> None:
    # Two steps (to the temporary spot, then home) so that a new place overlapping an old
    # one of another special never clobbers it.
    moving = [s for s in specials if s.target is not None and s.target != s.start]
    pos = tmp
    for s in moving:
        t.add(uapi.SYS_mremap, s.start, s.size, s.size,
              uapi.MREMAP_MAYMOVE | uapi.MREMAP_FIXED, pos, what=f"move {s.name} away")
        pos += s.size
    pos = tmp
    for s in moving:
        assert s.target is not None
        t.add(uapi.SYS_mremap, pos, s.size, s.size,
              uapi.MREMAP_MAYMOVE | uapi.MREMAP_FIXED, s.target,
              what=f"move {s.name} to {s.target:#x}")
        pos += s.size
    for s in specials:
        if s.target is None:
            t.add(uapi.SYS_munmap, s.start, s.size, what=f"unmap {s.name}")


def _map_private_memfd(t: blob.Table, v: Vma, objfds: dict[str, int]) -> None:
    fd = objfds.get(v.shmem_id or "")
    if fd is None:
        raise EngineError("mm", f"vma {v.start:#x}: private mapping of shmem object "
                                f"{v.shmem_id} that is not a memfd")
    t.add(uapi.SYS_mmap, v.start, v.end - v.start, v.prot, layoutrows.map_flags(v), fd, v.pgoff,
          what=("map memfd {} privately at {:#x}", v.shmem_id, v.start))


_ANON_KINDS = layoutrows.ANON_KINDS


def _kept_apart(vmas: Sequence[Vma], cols: VmaColumns) -> set[int]:
    """Starts of the private anonymous VMAs that touch another one: the kernel would
    merge them into one VMA where the dumped process had two (there they could not merge:
    a VMA inherited through fork, or another anon_vma)."""
    out: set[int] = set()
    anon = [vmas[i] for i in cols.of_kinds(*_ANON_KINDS) if not cols.flags[i] & uapi.MAP_SHARED]
    for a, b in itertools.pairwise(anon):
        if a.end == b.start:
            out.update((a.start, b.start))
    return {s for s in out if any(v.start == s and v.kind == "anon" for v in anon)}


def _map_anon_apart(t: blob.Table, v: Vma, tmp: int) -> None:
    """Map a private anonymous VMA so that it never merges with its neighbours.

    The kernel merges two anonymous VMAs only when their page offsets (the address each
    was first mapped at) run on and at most one has an anon_vma (or both the same). So
    the VMA is mapped at a scratch spot, given an anon_vma there by one write (whose page
    is dropped again: it reads as zero, and the page fill writes what was dumped), and
    moved into place: a moved VMA keeps its offset once it has an anon_vma."""
    size = v.end - v.start
    t.add(uapi.SYS_mmap, tmp, size, uapi.PROT_READ | uapi.PROT_WRITE, layoutrows.map_flags(v), -1, 0,
          what=("map anon {:#x}-{:#x} at the scratch spot", v.start, v.end))
    t.add(uapi.SYS_clock_gettime, 1, tmp, what=("anon_vma for {:#x}", v.start))
    t.add(uapi.SYS_madvise, tmp, PAGE_SIZE, uapi.MADV_DONTNEED,
          what=("drop the scratch page of {:#x}", v.start))
    if v.prot != uapi.PROT_READ | uapi.PROT_WRITE:
        t.add(uapi.SYS_mprotect, tmp, size, v.prot, what=("protect anon {:#x}", v.start))
    t.add(uapi.SYS_mremap, tmp, size, size, uapi.MREMAP_MAYMOVE | uapi.MREMAP_FIXED, v.start,
          what=("move anon {:#x}-{:#x} into place", v.start, v.end))


def _move_premapped(t: blob.Table, v: Vma, pieces: list[tuple[int, int, int]]) -> None:
    """Move a premapped VMA (read-write where it was built) into place, piece by piece
    (mremap moves one mapping at a time), and give it its protection."""
    for src, dst, size in pieces:
        t.add(uapi.SYS_mremap, src, size, size, uapi.MREMAP_MAYMOVE | uapi.MREMAP_FIXED, dst,
              what=("move premapped {:#x}-{:#x} into place", dst, dst + size))
    if v.prot != uapi.PROT_READ | uapi.PROT_WRITE:
        t.add(uapi.SYS_mprotect, v.start, v.end - v.start, v.prot,
              what=("protect premapped {:#x}", v.start))


def _attach_sysv(t: blob.Table, vmas: list[Vma], sizes: dict[int, int]) -> None:
    """Attach each SysV segment where the task had it (shmat maps it whole: the VMAs of
    one attach are its parts, split by mprotect), read-only where no part may write."""
    try:
        found = ipcns.attaches(vmas, sizes)
    except ValueError as e:
        raise EngineError("mm", str(e)) from None
    for a in found:
        writable = any("mw" in v.vmflags for v in a.vmas)
        t.add(uapi.SYS_shmat, a.shmid, a.start, 0 if writable else uapi.SHM_RDONLY,
              what=("attach SysV segment {} at {:#x}", a.shmid, a.start))
        prot = uapi.PROT_READ | (uapi.PROT_WRITE if writable else 0)
        for v in a.vmas:
            if v.prot != prot:
                t.add(uapi.SYS_mprotect, v.start, v.end - v.start, v.prot,
                      what=("protect SysV segment {} at {:#x}", a.shmid, v.start))


def _deleted_path(v: Vma, objfds: dict[str, int]) -> str:
    """Where the task opens the unlinked file a VMA maps: the root made it again and
    removed it, and every task holds a description of it until its finish table; a new
    description through /proc/self/fd has the access mode this mapping needs."""
    fd = objfds.get(deleted_key(v.dev, v.inode))
    if fd is None:
        raise EngineError("mm", f"vma {v.start:#x}: the unlinked file {v.path} it maps was "
                                "not saved")
    return f"/proc/self/fd/{fd}"


def unregister_rseq_first(t: blob.Table, rseq: tuple[int, int, int]) -> None:
    """Make the child's own rseq registration (ptr, len, sig) be undone first in its
    layout table (its placeholder entry 0): once its memory is gone the kernel would fail
    the task on its next return to user space. (Asked of the task once it is seized; the
    table is made, and may be encoded, before.)"""
    ptr, size, sig = rseq
    t.set_entry(0, uapi.SYS_rseq, ptr, size, uapi.RSEQ_FLAG_UNREGISTER, sig,
                what="unregister the engine's rseq")


def layout_table(mm: MmCore, window: Window, specials: list[Special],
                 shmem: list[ShmemEntry], objfds: dict[str, int],
                 moves: dict[int, list[tuple[int, int, int]]] | None = None,
                 sysv_sizes: dict[int, int] | None = None) -> blob.Table:
    """The table that turns the child's layout into the dumped one (pages not written);
    the child's rseq registration is unregistered before it (unregister_rseq_first).

    shmem: every shared memory object of the tree. The root mapped each one whole at
    window.shmem_tmp before it forked anything, so every task has the very same objects
    there; a dumped VMA becomes a second mapping of its part of the object (mremap with
    old_size 0 on a shared mapping), which needs neither a path nor /proc/PID/map_files
    (refused inside a user namespace). A private mapping of a memfd is mapped from the
    memfd's fd that every task holds until the finish table (objfds: shmem id -> fd);
    a mapping of an unlinked file from the file's (objfds: deleted_key -> fd).
    moves: VMA start -> (from, to, size) of each piece of a private VMA the task built
    before it forked (engine.restore.premap): moved into place instead of mapped.
    sysv_sizes: id -> mapped size of each SysV segment of the tree's ipc namespace, which
    the engine has made again by now (engine.restore.ipcns).
    """
    moves = moves or {}
    t = blob.Table()
    # entry 0: where the task's rseq registration is undone (unregister_rseq_first), a
    # call that changes nothing for a task with none
    t.add(uapi.SYS_getpid, what="(no rseq registration to undo)")
    keep = [window.region] + [(s.start, s.end) for s in specials]
    keep += [(window.shmem_tmp[s.id], window.shmem_tmp[s.id] + s.size) for s in shmem]
    keep += [(src, src + size) for pieces in moves.values() for src, _, size in pieces]
    _unmap_all_but(t, keep)
    _move_specials(t, specials, window.specials_tmp)
    vmas = mm.vmas
    cols = vmatable.columns_of(vmas)
    # The plain VMAs (tens of thousands in maps06) a rows entry per group; the rest one
    # VMA at a time, in order.
    apart = layoutrows.indexes(cols, _kept_apart(vmas, cols) | set(moves))
    groups = layoutrows.groups(cols, apart)
    shared = _one_by_one(t, vmas, groups.other, window, objfds, moves, groups.files)
    args = layoutrows.Args.of(cols)
    starts, ends = cols.start, cols.end
    if groups.anon:
        runs = groups.anon

        def what(row: int) -> str:
            i = layoutrows.vma_of_row(runs, row)
            return f"map anon {starts[i]:#x}-{ends[i]:#x}"
        t.rows(uapi.SYS_mmap, layoutrows.rows(args, runs, -1), what=what)
    for (path, oflags), file_runs in groups.files.items():
        _map_file(t, path, oflags, args, file_runs)
    for sid, group in shared.items():
        _map_shared(t, sid, group, window.shmem_tmp[sid])
    sysv = [vmas[i] for i in groups.other if vmas[i].kind == "sysv"]
    if sysv:
        _attach_sysv(t, sysv, sysv_sizes or {})
    _advise(t, vmas, cols)
    return t


def _one_by_one(t: blob.Table, vmas: Sequence[Vma], which: list[int], window: Window,
                objfds: dict[str, int], moves: dict[int, list[tuple[int, int, int]]],
                files: dict[tuple[str, int], list[range]]) -> dict[str, list[Vma]]:
    """The entries of the VMAs `which` (indexes), which are not plain: premapped ones,
    anonymous ones kept apart, private memfd mappings, mapped unlinked files (added to
    `files`); returns the shared memory VMAs per object (SysV attaches are the caller's)."""
    shared: dict[str, list[Vma]] = {}
    for i in which:
        v = vmas[i]
        kind = v.kind
        if v.start in moves:
            _move_premapped(t, v, moves[v.start])
        elif kind == "file":
            assert v.path is not None
            path = _deleted_path(v, objfds) if v.deleted else v.path
            oflags = layoutrows.open_flags(v.flags, v.prot, "mw" in v.vmflags)
            files.setdefault((path, oflags), []).append(range(i, i + 1))
        elif kind in _ANON_KINDS:
            _map_anon_apart(t, v, window.anon_tmp)
        elif kind == "shmem" and v.flags & uapi.MAP_PRIVATE:
            _map_private_memfd(t, v, objfds)
        elif kind == "shmem":
            assert v.shmem_id is not None
            shared.setdefault(v.shmem_id, []).append(v)
        elif kind not in _SPECIAL_KINDS and kind not in ("vsyscall", "sysv"):
            raise EngineError("mm", f"vma {v.start:#x}-{v.end:#x} ({v.path}): "
                                    "unsupported mapping kind")
    return shared


def _map_file(t: blob.Table, path: str, oflags: int, args: layoutrows.Args,
              runs: list[range]) -> None:
    """One open per file for all its VMAs (`runs` of them): the fd lives in the runner's
    saved register and is closed right after, so no more than one extra fd ever exists in
    the task."""
    starts = args.start
    t.add(uapi.SYS_openat, uapi.AT_FDCWD, t.cstr(path), oflags, 0, save=True,
          what=f"open {path}")
    t.rows(uapi.SYS_mmap, layoutrows.rows(args, runs, 0), use_saved=1 << 4,
           what=lambda row: f"map {path} at {starts[layoutrows.vma_of_row(runs, row)]:#x}")
    t.add(uapi.SYS_close, 0, use_saved=1, what=f"close {path}")


def _map_shared(t: blob.Table, sid: str, vmas: list[Vma], tmp: int) -> None:
    """Each VMA of a shared object: a second mapping of its part of the whole mapping
    at `tmp`, with its protection."""
    for v in vmas:
        size = v.end - v.start
        t.add(uapi.SYS_mremap, tmp + v.pgoff, 0, size,
              uapi.MREMAP_MAYMOVE | uapi.MREMAP_FIXED, v.start,
              what=("map shmem {} at {:#x}", sid, v.start))
        if v.prot != uapi.PROT_READ | uapi.PROT_WRITE:
            t.add(uapi.SYS_mprotect, v.start, size, v.prot,
                  what=("protect shmem {} at {:#x}", sid, v.start))


def _advised(cols: VmaColumns) -> dict[int, list[str]]:
    """VmFlags string reference -> the flags of it that madvise() or mlock() restore
    (references with none left out)."""
    out = {}
    for ref in set(cols.vmflags):
        flags = [f for f in (cols.strings[ref] or "").split() if f in _MADVISE]
        if flags:
            out[ref] = flags
    return out


def _advise(t: blob.Table, vmas: Sequence[Vma], cols: VmaColumns) -> None:
    """madvise() and mlock() state from VmFlags: one rows entry per advice (specials are
    left alone: the kernel sets their flags itself)."""
    by_ref = _advised(cols)
    if not by_ref:
        return
    skip = {KIND_INDEX[k] for k in (*_SPECIAL_KINDS, "vsyscall")}
    advised: dict[str, list[Vma]] = {}
    refs = cols.vmflags
    for i in itertools.compress(range(len(refs)), map(by_ref.__contains__, refs)):
        if cols.kind[i] not in skip:
            for flag in by_ref[refs[i]]:
                advised.setdefault(flag, []).append(vmas[i])
    for flag, which in advised.items():
        _advice_rows(t, flag, which)


def _advice_rows(t: blob.Table, flag: str, vmas: list[Vma]) -> None:
    """The madvise (or mlock) of one VmFlags flag on each of `vmas`."""
    advice, may_fail = _MADVISE[flag]
    rows = array("q")
    for v in vmas:
        rows.extend((v.start, v.end - v.start, max(advice, 0), 0, 0, 0))

    def what(i: int) -> str:
        call = "mlock" if advice == _MLOCK else f"madvise {flag}"
        return f"{call} {vmas[i].start:#x}-{vmas[i].end:#x}"
    if advice == _MLOCK:
        t.rows(uapi.SYS_mlock, rows.tobytes(), what=what)
    else:
        t.rows(uapi.SYS_madvise, rows.tobytes(), may_fail=may_fail, what=what)


def layout_table_bytes(mm: MmCore, nr_shmem: int, nr_moves: int = 0) -> int:
    """An upper bound of the layout table's size (to size the region before forking);
    nr_shmem: the shared objects (shmem, mapped unlinked files) of the tree."""
    # a row per VMA, up to 5 entries for an anonymous one kept apart, 2 for a shared one;
    # per file an open and a close; a row per advice. (Counted a column at a time:
    # 30,000 VMAs.)
    cols = vmatable.columns_of(mm.vmas)
    paths = [cols.strings[ref] or "" for ref in set(cols.path)]
    kinds = cols.kind.tobytes()  # bytes.count is memchr's speed, array.count is not
    anon = sum(kinds.count(KIND_INDEX[k]) for k in _ANON_KINDS)
    shared = kinds.count(KIND_INDEX["shmem"]) + kinds.count(KIND_INDEX["sysv"])
    advice = sum(cols.vmflags.count(ref) * len(flags) for ref, flags in _advised(cols).items())
    plain = len(kinds) - anon - shared
    per_vma = (5 * anon + 2 * shared) * blob.ENTRY_SIZE + (plain + advice) * blob.ROW_SIZE
    entries = 16 + 2 * len(_MADVISE) + 3 * len(paths) + nr_shmem * 3 + nr_moves
    strings = sum(len(os.fsencode(p)) + 1 for p in paths) + nr_shmem * 64
    strings += 32 * cols.deleted.tobytes().count(1)  # /proc/self/fd/N, not the path
    return entries * blob.ENTRY_SIZE + per_vma + strings + 4096
