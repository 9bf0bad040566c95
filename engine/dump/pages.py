"""Copy page data out of a frozen task (private pages) or a shmem object into an image.

Private pages are found with one PAGEMAP_SCAN over the task's address space asking for
pages that are present or swapped and neither the zero page nor file/shmem-backed: that
is exactly the anonymous and copied-on-write pages (a private file mapping's untouched
pages stay in the file). The runs are read in few, large transfers into a reused staging
buffer and appended to the pages file: process_vm_readv for readable VMAs, /proc/PID/mem
(which may read PROT_NONE and exec-only memory) for the others. Nothing is ever read
outside a VMA, so a growsdown stack is never touched below its start.
"""

from __future__ import annotations

import bisect
import ctypes
import functools
import itertools
import operator
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import NamedTuple, Self

from engine.dump.vmas import has_private_pages
from engine.errors import EngineError
from engine.images.imgdir import (
    PE_PARENT,
    PE_PRESENT,
    ImageDir,
    PagemapEntry,
    PagesWriter,
    encode_pagemap,
)
from engine.images.records import PAGE_SIZE, Vma
from engine.kernel import pagecrc, uapi
from engine.kernel import sys as ksys
from engine.proc import pagemap as procpagemap
from engine.proc import tasks, writeback
from engine.proc.status import read_status

# Staging buffer size: large enough for few syscalls, small enough to stay cache-warm
# between the read from the target and the write to the image (measured 4-16 MiB best).
STAGING_BYTES = 16 << 20
#: The smallest staging slot: a small tree needs no more, and populating 32 MiB of
#: buffers cost a 1 MiB process's dump 10 ms.
MIN_STAGING = 1 << 20
#: The slot shared memory objects need: they are read a data extent at a time with pread,
#: and larger slots cost more to populate than their fewer reads save (a 64 MiB object's
#: dump, medians of 5: 67 ms with 16 MiB slots, 46 with 4, 44 with 2).
SHMEM_STAGING = 2 << 20
#: The share of the kernel's free-run room for dirty pages (engine.proc.writeback) a tree's
#: resident memory may take for its pages files to be written through the page cache, where
#: a restore then finds them; a larger tree's are written with O_DIRECT. Through the cache
#: the writer is not throttled below the free-run ceiling, and a restore copies the pages
#: from the cache, where O_DIRECT waits on the disk both ways. Measured on the reference VM
#: (24 GiB, 3.4 GiB of room), a process of 1 GiB, dump / restore s: O_DIRECT 0.71-0.72 /
#: 0.72-0.83, through the cache 0.31-0.36 / 0.32-0.34 (once 0.72 to dump: the page cache
#: had to find fresh pages); of 2 GiB (medians of 3): O_DIRECT 1.44 / 1.51, through the
#: cache 0.82 / 0.65. A quarter of the room is left to other writers; the next dump sees
#: what this one's image still holds dirty (free_run_room), and goes O_DIRECT if need be.
CACHE_ROOM_SHARE = 0.75

_UNWANTED = uapi.PAGE_IS_PFNZERO | uapi.PAGE_IS_FILE
# More groups of VMAs than this: one PAGEMAP_SCAN over all of them (see _scan_groups).
_MAX_SCAN_GROUPS = 64
# One scan over all groups also when their anonymous VMAs are at most this large per
# syscall saved: asking about file pages costs ~2 us per resident MiB (120 us per 64 MiB
# here), a scan syscall ~13 us (a small task has 5-6 groups).
_JOIN_ANON_BYTES = 4 << 20


class Run(NamedTuple):
    """Pages to copy: [addr, addr + length) of the source; `via_mem` when the source
    VMA is not readable by process_vm_readv (PROT_NONE, exec-only). (A tuple: a
    maps06-sized task has tens of thousands.)"""

    addr: int
    length: int
    via_mem: bool


class Resident(NamedTuple):
    """The resident memory of a tree, summed over its tasks (shared memory counts once
    per task mapping it)."""

    anon: int  # private pages
    shmem: int  # pages of shared memory objects (engine.dump.shmem)
    largest_anon: int = 0  # the private pages of the task that has the most
    tasks: int = 0  # processes counted

    @property
    def total(self) -> int:
        """Both kinds."""
        return self.anon + self.shmem


def resident_bytes(root: int, limit: int) -> Resident:
    """The resident memory of the tree of `root`, counted up to a little past `limit` in
    all (read before the tree is frozen: a guess for sizing the dump's buffers and
    choosing its kind of writes)."""
    anon = shmem = largest = count = 0
    todo = [root]
    while todo and anon + shmem <= limit:
        pid = todo.pop()
        try:
            status = read_status(pid)
            todo += tasks.children(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone: the dump finds out
        anon += status.rss_anon
        shmem += status.rss_shmem
        largest = max(largest, status.rss_anon)
        count += 1
    return Resident(anon, shmem, largest, count)


def buffered_limit() -> int:
    """The most resident memory (Resident.total) a tree may have for its pages files to be
    written through the page cache (CACHE_ROOM_SHARE of the room left now)."""
    return int(writeback.free_run_room() * CACHE_ROOM_SHARE)


def write_buffered(resident: int, limit: int) -> bool:
    """Whether a tree of `resident` bytes in all (Resident.total) gets its pages files
    written through the page cache: when at most `limit` (buffered_limit()), or as
    ENGINE_PAGES_IO says (`direct`, `buffered`; for tests and measurements)."""
    how = os.environ.get("ENGINE_PAGES_IO", "")
    if how not in ("", "direct", "buffered"):
        raise EngineError("usage", f"ENGINE_PAGES_IO={how!r}: not direct or buffered")
    return how == "buffered" or (not how and resident <= limit)


def staging_size(resident: Resident) -> int:
    """A staging slot for a tree of that resident memory: about the private memory of its
    largest task (a slot holds one task's pages at a time), between MIN_STAGING and
    STAGING_BYTES, and up to SHMEM_STAGING for its shared memory, in whole MiB. (The
    private pages of many VMAs want large slots: 30,000 VMAs' memory step took 267 ms with
    2 MiB slots, 243 with 16; a tree of 50 small tasks, 11 MiB in all, spent 8 ms
    populating two 12 MiB slots.)"""
    want = max(resident.largest_anon, min(resident.shmem, SHMEM_STAGING))
    whole = (want + MIN_STAGING - 1) & ~(MIN_STAGING - 1)
    return min(STAGING_BYTES, max(MIN_STAGING, whole))


class Staging:
    """Two anonymous, prefaulted buffers reused for every transfer of one dump, and a
    writer thread: while one slot is written to the image, the next is filled from the
    target (both syscalls release the GIL), so the dump takes about max(read, write).
    The buffers are mapped on first use, or by `map()` ahead of it (populating them takes
    10-40 ms here: a dump does it before it freezes the tree)."""

    slots = 2

    def __init__(self, slot_size: int = STAGING_BYTES) -> None:
        self.size = slot_size
        self._total = slot_size * self.slots
        self._base = 0
        self.views: list[memoryview] = []
        self._whole: memoryview | None = None
        self._pending: list[Future[None] | None] = [None] * self.slots
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pages-writer")
        self._closed = False

    def map(self) -> None:
        """Map and populate the buffers now (a dump does it before the freeze)."""
        if self._base:
            return
        base = ksys.mmap(0, self._total, uapi.PROT_READ | uapi.PROT_WRITE,
                         uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS | uapi.MAP_POPULATE)
        whole = memoryview((ctypes.c_char * self._total).from_address(base)).cast("B")
        self.views = [whole[i * self.size:(i + 1) * self.size] for i in range(self.slots)]
        # _base last: an interruption before it leaves close() nothing half-made (the
        # mapping goes with the engine)
        self._whole, self._base = whole, base

    def address(self, slot: int) -> int:
        """Engine address of a slot (iovec base; valid once the slot was acquired)."""
        return self._base + slot * self.size

    def acquire(self, slot: int) -> memoryview:
        """Wait until the slot's previous write is done (re-raising its error); its view."""
        self.map()
        pending, self._pending[slot] = self._pending[slot], None
        if pending is not None:
            pending.result()
        return self.views[slot]

    def submit(self, slot: int, sink: Callable[[memoryview], None], length: int,
               inline: bool = False) -> None:
        """Write the first `length` bytes of the slot through `sink` in the background,
        or right here when `inline` (nothing to overlap it with: handing it to the
        writer thread and waiting for it cost a small task's dump ~0.3 ms)."""
        if inline:
            sink(self.views[slot][:length])
            return
        self._pending[slot] = self._pool.submit(sink, self.views[slot][:length])

    def drain(self) -> None:
        """Wait for every pending write (re-raising the first error)."""
        for slot in range(self.slots):
            self.acquire(slot)

    def drain_quietly(self) -> None:
        """Wait for every pending write, ignoring errors (an error is already raised)."""
        for slot in range(self.slots):
            pending, self._pending[slot] = self._pending[slot], None
            if pending is not None:
                wait([pending])

    def close(self) -> None:
        """Finish the writer thread and unmap the buffers."""
        if self._closed:
            return
        self._closed = True
        for f in self._pending:
            if f is not None:
                f.cancel()
        self._pool.shutdown(wait=True)
        if self._base:
            for v in self.views:
                v.release()
            assert self._whole is not None
            self._whole.release()
            ksys.munmap(self._base, self._total)
            self._base = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def private_runs(pid: int, vmas: list[Vma]) -> tuple[list[Run], list[tuple[int, int]]]:
    """The runs of private (anonymous or COW'ed) pages of a frozen task, each inside one
    VMA, sorted; and the ranges of those pages that lie in VMAs registered for memory
    tracking (PAGE_IS_WPALLOWED: userfaultfd WP_ASYNC, as VmFlags "uw" would tell). Uses
    PAGEMAP_SCAN; falls back to /proc/PID/pagemap when the kernel lacks it (ENOTTY/EINVAL;
    nothing is tracked then).

    Needs only the layout (maps): a VM_PFNMAP VMA is skipped by the kernel itself, and
    the data of a private VM_IO mapping could not be read (the dump then fails)."""
    candidates = [v for v in vmas if has_private_pages(v)]
    if not candidates:
        return [], []
    try:
        fd = procpagemap.open_pagemap(pid)
    except OSError as e:
        raise EngineError("memory", f"cannot open pagemap of {pid}: {e.strerror}") from None
    try:
        # Swapped-out pages are data too, and so is a page the kernel is migrating even
        # without swap (compaction, hot-unplug: its pte is a migration entry, "swapped"
        # here; asking for present pages only once lost one such page of a frozen task).
        # The uffd-wp pte markers of memory tracking are "swapped" too: dropped below.
        regions: list[tuple[int, int, int]] = []
        try:
            for start, end, unwanted in _scan_groups(candidates):
                regions += ksys.pagemap_scan(
                    fd, start, end, category_inverted=unwanted, category_mask=unwanted,
                    category_anyof_mask=uapi.PAGE_IS_PRESENT | uapi.PAGE_IS_SWAPPED,
                    return_mask=uapi.PAGE_IS_PRESENT | uapi.PAGE_IS_WPALLOWED
                    | uapi.PAGE_IS_WRITTEN, vec_len=16384)
            if not all(map(uapi.PAGE_IS_PRESENT.__and__, map(operator.itemgetter(2),
                                                             regions))):
                regions = procpagemap.drop_markers(fd, regions)
        except OSError as e:
            if e.errno not in (25, 22):  # ENOTTY, EINVAL: no PAGEMAP_SCAN
                raise EngineError("memory", f"PAGEMAP_SCAN of {pid}: {e.strerror}") from None
            regions = procpagemap.private_runs(fd, [(v.start, v.end) for v in candidates])
        runs = clip_to_vmas(regions, candidates)
        runs = _shared_via_mem(runs, procpagemap.shared_pages(
            fd, [(r.addr, r.addr + r.length) for r in runs]))
    finally:
        os.close(fd)
    wp = [g for g in regions if g[2] & uapi.PAGE_IS_WPALLOWED]
    tracked = [(r.addr, r.addr + r.length) for r in clip_to_vmas(wp, candidates)] if wp \
        else []
    return runs, tracked


def _shared_via_mem(runs: list[Run], shared: list[tuple[int, int]]) -> list[Run]:
    """The runs, their parts in `shared` (pages another process maps too) to be read
    through /proc/PID/mem. process_vm_readv pins the pages it reads, and the kernel first
    gives the pinning task its own copy of an anonymous page it shares (GUP "unshare"):
    read that way, a tree's copy-on-write pages would no longer be shared once it runs
    on (a second dump would find none); /proc/PID/mem reads them as they are."""
    if not shared:
        return runs
    out: list[Run] = []
    k = 0
    for r in runs:
        addr, end = r.addr, r.addr + r.length
        while k < len(shared) and shared[k][1] <= addr:
            k += 1
        while addr < end:
            if k < len(shared) and shared[k][0] <= addr:
                stop = min(end, shared[k][1])
                out.append(Run(addr, stop - addr, True))
                if stop == shared[k][1]:
                    k += 1
            else:
                stop = min(end, shared[k][0]) if k < len(shared) else end
                out.append(Run(addr, stop - addr, r.via_mem))
            addr = stop
    return out


def _scan_groups(candidates: list[Vma]) -> list[tuple[int, int, int]]:
    """(start, end, unwanted categories) of each PAGEMAP_SCAN over the candidate VMAs.

    Telling file pages apart costs the kernel a look at each page's struct page (4x the
    scan of 1 GiB here); an anonymous VMA has none, so consecutive anonymous VMAs are
    scanned without asking. Past a few groups (VMAs of both kinds interleaved, as in
    maps06), or when the anonymous VMAs are small (a small task's), one scan asking
    everywhere is cheaper than a syscall per group."""
    groups: list[tuple[int, int, int]] = []
    anon = 0
    for v in candidates:
        unwanted = uapi.PAGE_IS_PFNZERO if _anonymous(v) else _UNWANTED
        if unwanted != _UNWANTED:
            anon += v.end - v.start
        if groups and groups[-1][2] == unwanted:
            groups[-1] = (groups[-1][0], v.end, unwanted)
        else:
            groups.append((v.start, v.end, unwanted))
    if len(groups) > _MAX_SCAN_GROUPS or anon <= _JOIN_ANON_BYTES * (len(groups) - 1):
        return [(candidates[0].start, candidates[-1].end, _UNWANTED)]
    return groups


def _anonymous(v: Vma) -> bool:
    """A private anonymous VMA: every page in it is anonymous (or the zero page)."""
    return v.kind in ("anon", "heap", "stack") and not v.flags & uapi.MAP_SHARED


def clip_to_vmas(regions: list[tuple[int, int, int]] | list[tuple[int, int]],
                 vmas: list[Vma]) -> list[Run]:
    """Intersect sorted regions with sorted VMAs (one merge pass): runs inside one VMA
    each (readers such as the lazy-pages daemon hand a run to the kernel whole), marked
    for /proc/PID/mem where the VMA is not readable."""
    runs: list[Run] = []
    add = runs.append
    make = Run._make  # (tuple.__new__, not the generated __new__: 20,000 runs in maps06)
    starts = list(map(_START, vmas))
    ends = list(map(_END, vmas))
    unreadable = [not prot & uapi.PROT_READ for prot in map(_PROT, vmas)]
    n = len(vmas)
    i = 0
    for region in regions:
        start, end = region[0], region[1]
        while i < n and ends[i] <= start:
            i += 1
        if i < n and starts[i] <= start and end <= ends[i]:
            add(make((start, end - start, unreadable[i])))  # inside one VMA: most regions
            continue
        j = i
        while j < n and starts[j] < end:
            s, e = max(start, starts[j]), min(end, ends[j])
            if s < e:
                add(make((s, e - s, unreadable[j])))
            j += 1
    return runs


_START, _END, _PROT = (operator.attrgetter(name) for name in ("start", "end", "prot"))


#: Has the dumped task write (and sum) some runs itself: given the new pages file and
#: (run, file offset) pairs, it claims what it wrote in the file (PagesWriter.claim) and
#: returns the pairs it did not write (engine/dump/selfwrite.py).
TaskWriter = Callable[[PagesWriter, list[tuple[Run, int]]], list[tuple[Run, int]]]


def write_pages(img: ImageDir, pagemap_name: str, pages_name: str, runs: list[Run],
                read_vm: int, mem_fd: int, staging: Staging, base: int = 0) -> int:
    """Write the data of `runs` (a shmem object's or a SysV segment's; a task's is
    write_task_pages) and then their pagemap file, with the checksum of every page;
    returns the number of pages stored."""
    pagemap = write_task_pages(img, pages_name, runs, read_vm, mem_fd, staging, base)
    img.write_bytes(pagemap_name, pagemap)
    return sum(r.length for r in runs) // PAGE_SIZE


def write_task_pages(img: ImageDir, pages_name: str, runs: list[Run], read_vm: int,
                     mem_fd: int, staging: Staging, base: int = 0,
                     in_parent: list[tuple[int, int]] | None = None,
                     task_writer: TaskWriter | None = None, tolerant: bool = False) -> bytes:
    """Write the data of `runs`, with the checksum of every page; returns their pagemap
    (encode_pagemap: a task's goes into its mm file, ImageDir.write_mm).

    `read_vm` is the pid for process_vm_readv (0: never use it); `mem_fd` is an fd to read
    `via_mem` runs (and every run when read_vm is 0) with pread at `addr + base`. The
    pagemap records `addr` as given (virtual addresses, or offsets for shmem objects).
    `in_parent` ranges (disjoint from the runs) are recorded as PE_PARENT, without data.
    `task_writer` first gets every run with its place in the file; the engine writes what
    it hands back. `tolerant`: the task runs on (pre-dump), so memory it unmapped since
    the runs were found is stored as zeros instead of failing the dump.
    """
    entries = [PagemapEntry(r.addr, r.length // PAGE_SIZE, PE_PRESENT) for r in runs]
    nr_pages = sum(e.nr_pages for e in entries)
    if in_parent:
        entries += [PagemapEntry(s, (e - s) // PAGE_SIZE, PE_PARENT) for s, e in in_parent]
        entries.sort(key=lambda e: e.addr)
    out = img.pages_writer(pages_name, nr_pages, direct=True)
    placed = list(zip(runs, itertools.accumulate((r.length for r in runs), initial=0)))
    try:
        if task_writer is not None:
            placed = task_writer(out, placed)
        _stage(out, staging, placed, read_vm, mem_fd, base, tolerant)
    except BaseException:
        staging.drain_quietly()
        out.abort()
        raise
    out.close()
    return encode_pagemap(entries, out.sums)


def _stage(out: PagesWriter, staging: Staging, placed: list[tuple[Run, int]], read_vm: int,
           mem_fd: int, base: int, tolerant: bool) -> None:
    """Copy runs through the staging slots into their places in the file: a slot holds
    bytes that are contiguous in the file, and is written while the next one fills."""
    if read_vm and not tolerant and _all_vm_contiguous(placed):
        _stage_vm(out, staging, placed, read_vm)
        return
    slot = 0
    batch: list[tuple[int, int, int, bool]] = []  # (slot offset, addr, len, via_mem)
    fill = start = 0  # bytes in the slot; file offset of its first byte
    inline = sum(r.length for r, _off in placed) <= staging.size  # one slot holds it all

    def flush() -> None:
        nonlocal slot, batch, fill
        _fill(staging, slot, batch, read_vm, mem_fd, base, tolerant)
        staging.submit(slot, _sink(out, staging, slot, start, fill), fill, inline)
        slot = (slot + 1) % staging.slots
        batch, fill = [], 0

    for r, off in placed:
        if fill and off != start + fill:
            flush()  # the runs between were written by the task
        addr, left = r.addr, r.length
        while left:
            if not fill:
                start = off
            n = min(left, staging.size - fill)
            batch.append((fill, addr, n, r.via_mem or not read_vm))
            fill += n
            addr += n
            off += n
            left -= n
            if fill == staging.size:
                flush()
    if fill:
        flush()
    staging.drain()


def _all_vm_contiguous(placed: list[tuple[Run, int]]) -> bool:
    """Whether every run is read with process_vm_readv and they follow each other in the
    file (none was written by the task)."""
    if not placed or any(r.via_mem for r, _off in placed):
        return False
    last, off = placed[-1]
    return off + last.length - placed[0][1] == sum(r.length for r, _off in placed)


def _stage_vm(out: PagesWriter, staging: Staging, placed: list[tuple[Run, int]],
              pid: int) -> None:
    """_stage for runs all read with process_vm_readv, one after another in the file: each
    slot's runs found by bisection and read with one call (30,000 one-page runs made the
    general loop's bookkeeping cost ~20 ms)."""
    addrs = [r.addr for r, _off in placed]
    lens = [r.length for r, _off in placed]
    bounds = list(itertools.accumulate(lens, initial=0))  # each run's offset from the first
    total, first = bounds[-1], placed[0][1]
    inline = total <= staging.size
    for k, lo in enumerate(range(0, total, staging.size)):
        hi = min(lo + staging.size, total)
        i, j = bisect.bisect_right(bounds, lo) - 1, bisect.bisect_left(bounds, hi)
        remote = list(zip(addrs[i:j], lens[i:j]))
        addr, length = remote[0]
        remote[0] = (addr + lo - bounds[i], length - (lo - bounds[i]))
        addr, length = remote[-1]
        remote[-1] = (addr, length - (bounds[j] - hi))
        slot = k % staging.slots
        staging.acquire(slot)
        try:
            got = ksys.process_vm_readv(pid, [(staging.address(slot), hi - lo)], remote)
        except OSError as e:
            raise EngineError("memory", f"process_vm_readv of {pid}: {e.strerror}") from None
        if got != hi - lo:
            raise EngineError("memory", f"short read from {pid}: {got} of {hi - lo} bytes")
        staging.submit(slot, _sink(out, staging, slot, first + lo, hi - lo), hi - lo, inline)
    staging.drain()


def _sink(out: PagesWriter, staging: Staging, slot: int, offset: int, length: int
          ) -> Callable[[memoryview], None]:
    """The write of a filled slot's `length` bytes at `offset`, its pages summed here, in
    the thread that fills the slots: the writer thread then only writes (1 GiB through the
    page cache, memory step: 292-309 ms before, 277-289 after, alternating)."""
    sums = pagecrc.sums_at(out.sums.algo, staging.address(slot), length)
    return functools.partial(out.write_at, offset=offset, sums=sums)


def _fill(staging: Staging, slot: int, batch: list[tuple[int, int, int, bool]], pid: int,
          mem_fd: int, base: int, tolerant: bool = False) -> None:
    view = staging.acquire(slot)
    vm = [(off, addr, n) for off, addr, n, via_mem in batch if not via_mem]
    if vm:
        local = _merged([(staging.address(slot) + off, n) for off, _addr, n in vm])
        remote = [(addr, n) for _off, addr, n in vm]
        want = sum(n for _o, _a, n in vm)
        try:
            got = ksys.process_vm_readv(pid, local, remote)
        except OSError as e:
            if not tolerant:
                raise EngineError("memory", f"process_vm_readv of {pid}: {e.strerror}"
                                  ) from None
            got = -1
        if got != want:
            if not tolerant:
                raise EngineError("memory", f"short read from {pid}: {got} of {want} bytes")
            # Changed under us (unmapped, or made PROT_NONE): /proc/PID/mem page by page.
            batch = [(off, addr, n, True) for off, addr, n, _via in batch]
    read = _pread_or_zero if tolerant else _pread_exact
    for off, addr, n, via_mem in batch:
        if via_mem:
            read(mem_fd, view[off:off + n], addr + base)


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(address, length) ranges with each one that continues the one before joined to
    it (the staging side of a batch: usually one range)."""
    out = [ranges[0]]
    for addr, n in ranges[1:]:
        last, length = out[-1]
        if last + length == addr:
            out[-1] = (last, length + n)
        else:
            out.append((addr, n))
    return out


def _pread_or_zero(fd: int, view: memoryview, pos: int) -> None:
    """Read what is still mapped; zeros for each page that is not (EIO), and for the rest
    once the address space is gone (end of data: the process exited)."""
    while view:
        try:
            n = os.preadv(fd, [view], pos)
        except OSError:
            n = -1
        if n == 0:
            view[:] = bytes(len(view))
            return
        if n < 0:
            n = min(PAGE_SIZE - pos % PAGE_SIZE, len(view))
            view[:n] = bytes(n)
        view = view[n:]
        pos += n


def _pread_exact(fd: int, view: memoryview, pos: int) -> None:
    while view:
        try:
            n = os.preadv(fd, [view], pos)
        except OSError as e:
            raise EngineError("memory", f"read at {pos:#x}: {e.strerror}") from None
        if n == 0:
            raise EngineError("memory", f"read at {pos:#x}: unexpected end of data")
        view = view[n:]
        pos += n
