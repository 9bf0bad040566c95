"""Load a whole image directory and cross-check it.

`load(path)` reads the inventory and every per-task file, then checks what single files
cannot: fds point to existing file records, shmem VMAs to existing shmem objects, every
pagemap run lies inside a VMA (or inside its shmem object), every content file exists
under the name its record implies (both ends of a pipe name one pipe), each thread's
xstate (in its core record) has one sane size, the pages files hold exactly what the pagemaps say (and, with
`verify_pages`, match their checksums: a restore instead checks each page where it reads
it, which costs no second read of the file), and the parent chain of an incremental dump is acyclic and at most
MAX_PARENT_DEPTH long (each parent loaded, once, the same way). Restore and `show` read
images only through this.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.images import ipcns, names
from engine.images.imgdir import PE_PARENT, ImageDir, ImageError, Pagemap
from engine.images.records import (
    PAGE_SIZE,
    FileRecord,
    FilesImage,
    Inventory,
    MmCore,
    ShmemEntry,
    TaskCore,
    ThreadCore,
    Vma,
)
from engine.images.vmatable import VmaTable, columns_of
from engine.kernel import uapi

MAX_PARENT_DEPTH = 32
#: bounds of an XSAVE area (legacy 512 + header 64 .. far above AMX's ~11 KiB)
XSTATE_MIN, XSTATE_MAX = 576, 1 << 20


@dataclass
class TaskImage:
    """Everything about one task: core, mm (None for zombies), its pagemap and each
    thread's xstate bytes (read and checked here, by tid)."""

    core: TaskCore
    mm: MmCore | None
    pagemap: Pagemap | None
    xstate: dict[int, bytes] = field(default_factory=dict)


@dataclass
class ShmemImage:
    """One shared memory object and its pagemap (addresses are object offsets)."""

    entry: ShmemEntry
    pagemap: Pagemap


@dataclass
class IpcNsImage:
    """The tree's own ipc namespace and the pagemap of each SysV segment (by id)."""

    record: ipcns.IpcImage
    pagemaps: dict[int, Pagemap]


@dataclass
class DumpImage:
    """A loaded and cross-checked image directory."""

    dir: ImageDir
    inventory: Inventory
    tasks: dict[int, TaskImage]
    files: FilesImage
    shmem: dict[str, ShmemImage] = field(default_factory=dict)
    parent_image: DumpImage | None = None
    ipc: IpcNsImage | None = None

    @property
    def path(self) -> str:
        """The directory."""
        return self.dir.path

    def parent(self) -> DumpImage | None:
        """The parent image of an incremental dump (loaded with this one), or None."""
        return self.parent_image


def load(path: str, trusted: bool = False, verify_pages: bool = True) -> DumpImage:
    """Read and validate every file of the image directory `path` and of its parents.
    Unless `trusted`, every directory and file must belong to the engine's user and be
    writable by nobody else. Without `verify_pages` the data of pages files is not
    checked here: the caller checks every page it uses (PagesReader.verify/check)."""
    return _load(path, trusted, verify_pages, [])


def _load(path: str, trusted: bool, verify_pages: bool,
          chain: list[tuple[int, int]]) -> DumpImage:
    if not os.path.isdir(path):
        raise ImageError(path, "no such image directory")
    d = ImageDir.open(path, trusted)
    key = d.identity()
    if key in chain or len(chain) >= MAX_PARENT_DEPTH:
        d.close()
        raise ImageError(path, "parent chain loops back to this image" if key in chain
                         else f"parent chain longer than {MAX_PARENT_DEPTH} images")
    chain = [*chain, key]
    inv = d.read_inventory(names.INVENTORY, Inventory)
    d.prefetch(sorted(d.checksums))
    where = d.file(names.INVENTORY)
    present = d.names()  # one listing, not a stat per file (6 a task)
    for name in d.checksums:
        if name not in present:
            raise ImageError(d.file(name), "missing (listed in the checksums)")
    parent = None
    if inv.parent is not None:
        parent_dir = os.path.normpath(os.path.join(path, inv.parent))
        try:
            parent = _load(parent_dir, trusted, verify_pages, chain)
        except ImageError as err:
            raise ImageError(where, f"parent: {err.message}") from None
    files = d.read_json(names.FILES, FilesImage)
    by_id = files.by_id()
    mapped = {(m.dev, m.inode) for m in files.mapped}
    shmem_ids = {s.id for s in inv.shmem}
    for f in files.files:
        _check_file(d, f, shmem_ids)
    shmem: dict[str, ShmemImage] = {}
    for s in inv.shmem:
        shm_pm = d.read_pagemap(s.pagemap)
        _check_pages(d, s.pagemap, s.pages, shm_pm, inv.parent, verify_pages)
        for e in shm_pm.entries:
            if e.end > s.size:
                raise ImageError(d.file(s.pagemap), f"offset {e.addr:#x} beyond object size")
        shmem[s.id] = ShmemImage(s, shm_pm)
    ipc = _load_ipc(d, inv) if inv.ipc is not None else None
    tasks: dict[int, TaskImage] = {}
    for t in inv.tasks:
        core = d.read_json(names.core(t.pid), TaskCore)
        where = d.file(names.core(t.pid))
        if (core.pid, core.ppid, core.pgid, core.sid) != (t.pid, t.ppid, t.pgid, t.sid):
            raise ImageError(where, "ids disagree with the inventory")
        if sorted(th.tid for th in core.threads) != sorted(t.threads):
            raise ImageError(where, "threads disagree with the inventory")
        for fde in core.fds:
            if fde.file_id not in by_id:
                raise ImageError(where, f"fd {fde.fd} refers to unknown file {fde.file_id}")
        if core.cwd_file is not None and not (
                core.cwd_file in by_id and by_id[core.cwd_file].type == "dir"
                and by_id[core.cwd_file].deleted):
            raise ImageError(where, f"cwd_file {core.cwd_file} is not a removed directory "
                                    "of files.json")
        xstate = {th.tid: _xstate(th, where)
                  for th in core.threads if th.xstate is not None}
        mm: MmCore | None = None
        pm: Pagemap | None = None
        # A task sharing its parent's address space has no memory of its own in the image.
        if t.state != "zombie" and "vm" not in t.shared:
            mm, pm = _load_mm(d, t.pid, shmem, mapped, ipc, inv.parent, verify_pages)
        tasks[t.pid] = TaskImage(core, mm, pm, xstate)
    parents = {t.pid: t.ppid for t in inv.tasks}
    ranges: dict[int, list[tuple[int, int]]] = {}  # a parent's, worked out once
    for pid, ti in tasks.items():
        if ti.mm is not None and ti.mm.cow:
            ppid, above = parents[pid], tasks.get(parents[pid])
            if ppid not in ranges and above is not None and above.mm is not None:
                ranges[ppid] = cow_ranges(above.mm.vmas)
            _check_cow(d.file(names.mm(pid)), ti.mm, ranges.get(ppid))
    _check_shared(d, inv, tasks, files)
    for f in files.files:
        leader = tasks[f.ctty_of].core if f.ctty_of in tasks else None
        if f.ctty_of and (leader is None or leader.sid != leader.pid or leader.ctty is None):
            raise ImageError(d.file(names.FILES), f"file {f.id}: ctty_of {f.ctty_of} is not "
                                                  "a session leader with a controlling "
                                                  "terminal")
    if ipc is not None:
        _check_sem_tasks(d.file(names.IPC), ipc.record, set(tasks))
    return DumpImage(d, inv, tasks, files, shmem, parent, ipc)


def _load_mm(d: ImageDir, pid: int, shmem: dict[str, ShmemImage],
             mapped: set[tuple[str, int]], ipc: IpcNsImage | None, parent: str | None,
             verify_pages: bool) -> tuple[MmCore, Pagemap]:
    """A task's mm record with its VMAs, and its pagemap (all three in its mm file), each
    checked against the other and against the image's shmem objects, mapped files and
    SysV segments, and the pagemap against the pages file."""
    mm, vmas, pm = d.read_mm(names.mm(pid), MmCore)
    mm.vmas = vmas
    where = d.file(names.mm(pid))
    _check_vma_refs(where, vmas, shmem, mapped)
    _check_sysv_attaches(where, vmas, ipc)
    _check_in_vmas(where, pm, mm)
    _check_pages(d, names.mm(pid), mm.pages, pm, parent, verify_pages)
    return mm, pm


def _load_ipc(d: ImageDir, inv: Inventory) -> IpcNsImage:
    """ipc.json, each segment's pages and each queue's messages, which must be what the
    record says; only a tree in an ipc namespace of its own has one."""
    where = d.file(names.IPC)
    if not any(ns.type == "ipc" and not ns.shared_with_engine for ns in inv.namespaces):
        raise ImageError(where, "the tree has no ipc namespace of its own")
    rec = d.read_json(names.IPC, ipcns.IpcImage)
    pagemaps = {}
    for seg in rec.shm:
        if (seg.pagemap, seg.pages) != (names.sysv_shm_pagemap(seg.id),
                                        names.sysv_shm_pages(seg.id)):
            raise ImageError(where, f"shm segment {seg.id}: files {seg.pagemap}, {seg.pages}")
        pm = d.read_pagemap(seg.pagemap)
        _check_pages(d, seg.pagemap, seg.pages, pm, None, True)
        for e in pm.entries:
            if e.end > seg.mapped_size:
                raise ImageError(d.file(seg.pagemap), f"offset {e.addr:#x} beyond the "
                                                      f"segment's {seg.size} bytes")
        pagemaps[seg.id] = pm
    for q in rec.msg:
        if q.content != names.sysv_msg_content(q.id) or not d.exists(q.content):
            raise ImageError(where, f"message queue {q.id}: content {q.content!r} missing")
        d.verify_file(q.content)
        if d.size(q.content) != sum(q.sizes):
            raise ImageError(d.file(q.content), f"holds {d.size(q.content)} bytes, ipc.json "
                                                f"says queue {q.id} had {sum(q.sizes)}")
    return IpcNsImage(rec, pagemaps)


def _check_vma_refs(where: str, vmas: VmaTable, shmem: dict[str, ShmemImage],
                    mapped: set[tuple[str, int]]) -> None:
    """The shared memory objects and unlinked files the VMAs map are in the image (a
    look at each distinct reference, and at each VMA of a deleted file)."""
    cols = vmas.columns
    for ref in set(cols.shmem) - {0}:
        if cols.strings[ref] not in shmem:
            v = vmas[cols.shmem.index(ref)]
            raise ImageError(where, f"vma {v.start:#x}: unknown shmem {v.shmem_id}")
    if not any(cols.deleted):
        return
    for v in vmas:
        if v.kind == "file" and v.deleted and (v.dev, v.inode) not in mapped:
            raise ImageError(where, f"vma {v.start:#x}: the unlinked file {v.path} it maps "
                                    "is not in files.json's mapped files")


def _check_sysv_attaches(where: str, vmas: VmaTable, ipc: IpcNsImage | None) -> None:
    """SysV VMAs map segments of the image's ipc namespace, each attach whole."""
    sysv = [vmas[i] for i in vmas.columns.of_kinds("sysv")]
    if not sysv:
        return
    sizes = {s.id: s.mapped_size for s in ipc.record.shm} if ipc is not None else {}
    try:
        ipcns.attaches(sysv, sizes)
    except ValueError as e:
        raise ImageError(where, str(e)) from None


def _check_sem_tasks(where: str, rec: ipcns.IpcImage, pids: set[int]) -> None:
    for s in rec.sem:
        for i, sem in enumerate(s.sems):
            if sem.last == "task" and sem.pid not in pids:
                raise ImageError(where, f"semaphore set {s.id} #{i}: last changed by task "
                                        f"{sem.pid}, not in the image")


#: VMA kinds whose private pages can be shared copy-on-write with a parent's
COW_KINDS = ("anon", "heap", "stack", "file")


def cow_ranges(vmas: Sequence[Vma]) -> list[tuple[int, int]]:
    """Address ranges of the VMAs that may hold pages shared copy-on-write with a
    parent: private anonymous and private file mappings. (A decoded table's from its
    columns, without making its records: a restore asks it of every task and parent.)"""
    if not isinstance(vmas, VmaTable):
        return [(v.start, v.end) for v in vmas
                if v.kind in COW_KINDS and not v.flags & uapi.MAP_SHARED]
    cols = vmas.columns
    return [(cols.start[i], cols.end[i]) for i in cols.of_kinds(*COW_KINDS)
            if not cols.flags[i] & uapi.MAP_SHARED]


def _check_cow(path: str, mm: MmCore, theirs: list[tuple[int, int]] | None) -> None:
    """Every run a task says it shares with its parent lies in private VMAs of both
    (`theirs`: the parent's cow_ranges, None when it has no memory in the image)."""
    if theirs is None:
        raise ImageError(path, "shares pages with a parent that has no memory in the image")
    mine = cow_ranges(mm.vmas)
    for addr, n in mm.cow:
        end = addr + n * PAGE_SIZE
        for ranges, whose in ((mine, "own"), (theirs, "parent's")):
            if not _covered(addr, end, ranges):
                raise ImageError(path, f"cow run {addr:#x}-{end:#x} is not inside the "
                                       f"{whose} private VMAs")


def _covered(start: int, end: int, ranges: list[tuple[int, int]]) -> bool:
    """Whether [start, end) lies inside the union of sorted disjoint ranges."""
    pos = start
    for lo, hi in ranges:
        if hi <= pos:
            continue
        if lo > pos:
            return False
        pos = hi
        if pos >= end:
            return True
    return pos >= end



def _check_shared(d: ImageDir, inv: Inventory, tasks: dict[int, TaskImage],
                  files: FilesImage) -> None:
    """A task sharing a table with its parent holds the same values (it is one table).
    No pidfd in the own fd table of a task sharing its parent's address space, none
    referring to such a task (restore opens pidfds before it exists)."""
    vm_children = set()
    pidfds = {f.id: f.pidfd.pid for f in files.files if f.pidfd is not None}
    for t in inv.tasks:
        if not t.shared:
            continue
        core, pcore = tasks[t.pid].core, tasks[t.ppid].core
        where = d.file(names.core(t.pid))
        differs = [k for k, same in (
            ("files", _fds(core) == _fds(pcore)),
            ("fs", (core.cwd, core.root, core.umask) == (pcore.cwd, pcore.root, pcore.umask)),
            ("sighand", core.sigactions == pcore.sigactions)) if k in t.shared and not same]
        if differs:
            raise ImageError(where, f"shares the {differs[0]} table of its parent {t.ppid} "
                                    "but holds other values")
        if "vm" in t.shared:
            vm_children.add(t.pid)
            if "files" not in t.shared and any(f.file_id in pidfds for f in core.fds):
                raise ImageError(where, "shares its parent's address space but not its fd "
                                        "table, and holds a pidfd")
    for fid, target in pidfds.items():
        if target in vm_children:
            raise ImageError(d.file(names.FILES), f"file {fid}: a pidfd of task {target}, "
                                                  "which shares its parent's address space")


def _fds(core: TaskCore) -> list[tuple[int, int, bool]]:
    return sorted((f.fd, f.file_id, f.cloexec) for f in core.fds)


def _check_file(d: ImageDir, f: FileRecord, shmem_ids: set[str]) -> None:
    where = d.file(names.FILES)
    if f.type == "pipe" and f.inode != f.pipe_ino:
        raise ImageError(where, f"file {f.id}: pipe_ino {f.pipe_ino} is not its inode "
                                f"{f.inode}")
    if f.type == "mqueue" and f.content is None:
        raise ImageError(where, f"file {f.id}: message queue without its messages")
    if f.content is not None:
        if f.type in ("pipe", "fifo"):
            expect = names.pipe_content(f.pipe_ino or 0)
        elif f.type == "mqueue":
            expect = names.mqueue_content(f.inode)
        elif f.type == "socket":
            expect = names.socket_queue(f.inode)
        else:
            expect = names.file_content(f.id)
        if f.content != expect:
            raise ImageError(where, f"file {f.id}: content {f.content!r} is not {expect!r}")
        if not d.exists(f.content):
            raise ImageError(where, f"file {f.id}: content {f.content} missing")
        d.verify_file(f.content)
        _check_content_size(d, f)
    if f.shmem_id is not None and f.shmem_id not in shmem_ids:
        raise ImageError(where, f"file {f.id}: unknown shmem {f.shmem_id}")


def _check_content_size(d: ImageDir, f: FileRecord) -> None:
    """The content fits what the record says: a pipe's data its capacity, an unlinked
    file's copy its data extents (or its size)."""
    assert f.content is not None
    size = d.size(f.content)
    if f.type in ("pipe", "fifo") and f.pipe_size is not None and size > f.pipe_size:
        raise ImageError(d.file(f.content), f"holds {size} bytes, more than the pipe's "
                                            f"capacity {f.pipe_size} (files.json file {f.id})")
    # the data extents back to back, holes left out (the whole file without extents)
    want = f.size if f.extents is None else sum(end - start for start, end in f.extents)
    if f.type == "reg" and size != want:
        raise ImageError(d.file(f.content), f"holds {size} bytes, files.json says file "
                                            f"{f.id} had {want} bytes of data")
    if f.mqueue is not None and size != sum(f.mqueue.sizes):
        raise ImageError(d.file(f.content), f"holds {size} bytes, files.json says queue "
                                            f"{f.mqueue.name} had {sum(f.mqueue.sizes)}")


def _xstate(th: ThreadCore, where: str) -> bytes:
    """A thread's XSAVE area from its core record (hex, trailing zeros left out), its
    size bounded."""
    text, size = th.xstate or "", th.xstate_size
    # Only bounds here: the size is the CPU's (2696 under qemu's emulated CPU, not a
    # multiple of 64); restore compares it with this CPU's own and the kernel checks it.
    if not XSTATE_MIN <= size <= XSTATE_MAX:
        raise ImageError(where, f"thread {th.tid}: xstate size {size} is not an XSAVE area")
    if len(text) > 2 * size:
        raise ImageError(where, f"thread {th.tid}: xstate longer than its size {size}")
    try:
        data = bytes.fromhex(text)
    except ValueError:
        data = b""
    if 2 * len(data) != len(text):  # (fromhex skips spaces)
        raise ImageError(where, f"thread {th.tid}: xstate is not hex")
    return data + bytes(size - len(data))

def _check_pages(d: ImageDir, pagemap: str, pages: str, pm: Pagemap,
                 parent: str | None, verify: bool) -> None:
    """`pm` (read from file `pagemap`) against the pages file `pages`."""
    if parent is None and PE_PARENT in pm.flags:
        raise ImageError(d.file(pagemap), "refers to a parent image but there is none")
    size = d.size(pages) if d.exists(pages) else -1
    if size != pm.pages_stored * PAGE_SIZE:
        raise ImageError(d.file(pages), f"holds {size} bytes, pagemap says "
                                        f"{pm.pages_stored * PAGE_SIZE}")
    if verify:
        d.verify_pages(pages, pm)


def _check_in_vmas(path: str, pm: Pagemap, mm: MmCore) -> None:
    """Every run of pages lies in one stretch of adjacent VMAs. Runs and VMAs are sorted
    and apart (checked before), so the runs starting in a stretch are found by bisection,
    and of them only the last can run past its end (a maps06-sized task has 30,000 VMAs
    in a few stretches); each run must start in one."""
    cols = columns_of(mm.vmas)
    starts, ends, addrs = cols.start, cols.end, pm.addrs
    n = len(starts)
    cuts = [0, *itertools.compress(range(1, n), map(operator.ne, starts[1:], ends)), n]
    inside = 0
    for first, end in itertools.pairwise(cuts) if n else ():
        lo = bisect.bisect_left(addrs, starts[first])
        hi = bisect.bisect_left(addrs, ends[end - 1])
        if hi > lo and pm.ends[hi - 1] > ends[end - 1]:
            raise ImageError(path, f"pages at {addrs[hi - 1]:#x} run past a VMA end")
        inside += hi - lo
    if inside != len(addrs):
        stray = next(a for a in addrs if not _in_stretch(a, starts, ends, cuts))
        raise ImageError(path, f"pages at {stray:#x} lie outside every VMA")


def _in_stretch(addr: int, starts: Sequence[int], ends: Sequence[int],
                cuts: list[int]) -> bool:
    """Whether addr lies in a stretch of adjacent VMAs (stretch k: VMAs cuts[k] to
    cuts[k + 1] - 1)."""
    k = bisect.bisect_right(cuts, bisect.bisect_right(starts, addr) - 1) - 1
    return 0 <= k < len(cuts) - 1 and addr < ends[cuts[k + 1] - 1]
