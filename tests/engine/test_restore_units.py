"""Unit tests of the restore planning code (no processes involved)."""

from __future__ import annotations

import itertools
import os
import time
from array import array
from collections.abc import Iterator
from types import SimpleNamespace
from typing import cast

import pytest

from engine.errors import EngineError
from engine.images import PE_PRESENT, ImageError, Pagemap, PagemapEntry, vmatable
from engine.images.records import MmCore, RseqRecord, ShmemEntry, ThreadCore, Vma
from engine.kernel import blob, uapi
from engine.kernel.pagecrc import ALGO_CRC32C, PageSums
from engine.restore import layout, ns, pages, restorer, selfread, spawn
from engine.restore.lazy import LazyPages

PAGE = 4096


def _vma(start: int, end: int, kind: str = "anon", prot: int = 3, flags: int = 0x22,
         path: str | None = None, shmem_id: str | None = None, pgoff: int = 0) -> Vma:
    return Vma(start=start, end=end, prot=prot, flags=flags, pgoff=pgoff, kind=kind,
               path=path, shmem_id=shmem_id)


def _mm(vmas: list[Vma]) -> MmCore:
    return MmCore(start_code=0, end_code=0, start_data=0, end_data=0, start_brk=0, brk=0,
                  start_stack=0, arg_start=0, arg_end=0, env_start=0, env_end=0,
                  auxv=[0, 0], vmas=vmas, pages="q")


def test_split_keeps_every_byte_in_order() -> None:
    """Parallel page writes: the parts cover exactly the input, cut at page boundaries."""
    chunks = [pages.Chunk(0x10000, 0x900000, 10 * PAGE), pages.Chunk(0x40000, 0xA00000, PAGE),
              pages.Chunk(0x80000, 0xB00000, 7 * PAGE)]
    parts = pages._split(chunks, 3)
    assert len(parts) == 3
    flat = [c for p in parts for c in p]
    assert sum(c.length for c in flat) == 18 * PAGE
    assert all(c.length % PAGE == 0 and c.length > 0 for c in flat)
    # re-joining adjacent pieces gives the input back
    joined: list[pages.Chunk] = []
    for c in flat:
        last = joined[-1] if joined else None
        if last and last.dst + last.length == c.dst and last.src + last.length == c.src:
            joined[-1] = pages.Chunk(last.dst, last.src, last.length + c.length)
        else:
            joined.append(c)
    assert joined == chunks


def test_unmap_all_but_leaves_the_kept_ranges() -> None:
    """The munmap entries cover [0, TASK_SIZE) except the kept ranges."""
    t = blob.Table()
    keep = [(0x7000, 0x9000), (0x1000, 0x2000)]
    layout._unmap_all_but(t, keep)
    ranges = [(e.args[0], e.args[0] + e.args[1]) for e in t.entries]
    assert ranges == [(0, 0x1000), (0x2000, 0x7000), (0x9000, layout.TASK_SIZE)]
    assert all(e.nr == uapi.SYS_munmap for e in t.entries)


def test_layout_opens_each_file_once() -> None:
    """Many VMAs of one file: one open, the mmaps use the saved fd, one close."""
    vmas = [_vma(0x10000 + i * 2 * PAGE, 0x10000 + i * 2 * PAGE + PAGE, kind="file",
                 flags=0x2, path="/bin/true", pgoff=i * PAGE) for i in range(100)]
    vmas.append(_vma(0x900000, 0x901000))
    w = layout.Window(1 << 40, 1 << 20, (1 << 40) + (2 << 20))
    t = layout.layout_table(_mm(vmas), w, [], [], {})
    opens = [e for e in t.entries if e.nr == uapi.SYS_openat]
    closes = [e for e in t.entries if e.nr == uapi.SYS_close]
    # one rows entry per file (and one for anonymous memory): a row per VMA
    maps = [e for e in t.entries if e.nr == uapi.SYS_mmap]
    assert len(opens) == 1 and len(closes) == 1 and [e.args[1] for e in maps] == [1, 100]
    assert all(e.flags & blob.F_ROWS for e in maps)
    assert [bool(e.flags & (1 << 4)) for e in maps] == [False, True]  # fd from the open
    assert t.describe(t.entries.index(maps[1]), 3) == f"map /bin/true at {vmas[3].start:#x}"


def test_layout_maps_shmem_from_the_inherited_object() -> None:
    """A shmem VMA is a second mapping (mremap old_size 0) of the object's whole mapping,
    at its offset, then given its protection; the whole mapping is kept while unmapping."""
    s = ShmemEntry(id="shmem-1", size=8 * PAGE, inode=1, pagemap="a", pages="b")
    vma = _vma(0x500000, 0x502000, kind="shmem", prot=uapi.PROT_READ, flags=0x21,
               shmem_id="shmem-1", pgoff=2 * PAGE)
    w = layout.Window(1 << 40, 1 << 20, (1 << 40) + (2 << 20))
    w.shmem_tmp["shmem-1"] = 1 << 41
    t = layout.layout_table(_mm([vma]), w, [], [s], {})
    unmapped = [(e.args[0], e.args[0] + e.args[1]) for e in t.entries
                if e.nr == uapi.SYS_munmap]
    assert not any(a < (1 << 41) + s.size and (1 << 41) < b for a, b in unmapped)
    remap = next(e for e in t.entries if e.nr == uapi.SYS_mremap)
    assert remap.args[:2] == ((1 << 41) + 2 * PAGE, 0) and remap.args[4] == 0x500000
    prot = next(e for e in t.entries if e.nr == uapi.SYS_mprotect)
    assert prot.args == (0x500000, 2 * PAGE, uapi.PROT_READ)


def test_window_avoids_both_layouts() -> None:
    """The scratch window overlaps no dumped VMA (and no engine mapping)."""
    busy = _vma(1 << 40, (1 << 40) + PAGE)
    w = layout.plan_window([_mm([busy])], 1 << 20, [], [])
    assert not (w.base < busy.end and busy.start < w.end)


def test_specials_must_match_this_kernel() -> None:
    """A dumped vdso of another size is refused with a clear error."""
    mm = _mm([_vma(0x1000, 0x3000, kind="vdso", prot=5, flags=2)])
    with pytest.raises(EngineError, match="vdso"):
        layout.match_specials(mm, [("[vdso]", 0x5000, 0x6000)])


def test_tasks_laid_out_alike_have_one_layout_key() -> None:
    """Two tasks whose VMAs, vdso/vvar and premapped moves are the same (a decoded table
    or records alike) share a layout table; any of the three differing, they do not."""
    vmas = [_vma(0x10000, 0x12000), _vma(0x20000, 0x21000, "file", 1, 2, "/lib/x.so")]
    decoded = vmatable.decode(vmatable.encode(vmas))
    vdso = [layout.Special("[vdso]", 0x7000, 0x9000, 0x5000)]
    moves = {0x10000: [(0x90000, 0x10000, 2 * PAGE)]}
    key = restorer._layout_key(vmas, vdso, moves)
    assert restorer._layout_key(decoded, vdso, dict(moves)) == key
    other = [vmas[0], _vma(0x20000, 0x21000, "file", 1, 2, "/lib/y.so")]
    assert restorer._layout_key(other, vdso, moves) != key
    assert restorer._layout_key(vmas, [layout.Special("[vdso]", 0x7000, 0x9000, 0x6000)],
                                moves) != key
    assert restorer._layout_key(vmas, vdso, {}) != key


def test_table_describe_is_lazy_and_exact() -> None:
    """Entries name themselves from a format tuple only when asked."""
    t = blob.Table()
    t.add(uapi.SYS_mmap, 1, 2, what=("map {} at {:#x}", "/x", 0x1000))
    t.add(uapi.SYS_getpid)
    assert t.describe(0) == "map /x at 0x1000"
    assert t.describe(1) == f"syscall {uapi.SYS_getpid}"


def test_table_encodes_data_addresses_and_patches() -> None:
    """DataRef arguments and patched pointers resolve to the region's addresses."""
    t = blob.Table()
    a = t.data(b"abcdefgh")
    holder = t.data(bytes(8))
    t.patch_address(holder, a)
    t.add(uapi.SYS_write, 1, a, 8)
    raw = t.encode(0x10000)
    data_at = blob.CODE_AREA + blob.ENTRY_SIZE  # one entry
    assert int.from_bytes(raw[16:24], "little") == 0x10000 + data_at + a.offset
    off = blob.ENTRY_SIZE + holder.offset
    assert int.from_bytes(raw[off:off + 8], "little") == 0x10000 + data_at + a.offset


def test_id_maps_translate_into_the_user_namespace() -> None:
    """Engine-side ids map through uid_map rows; an unmapped id is an error."""
    n = ns.NsSetup(uapi.CLONE_NEWUSER, uid_map=[[0, 100000, 65536]], gid_map=[[0, 100000, 10]])
    assert n.inner_uid(100000) == 0 and n.inner_uid(100123) == 123
    with pytest.raises(EngineError):
        n.inner_gid(100010)


class _FakeReader:
    """Stands for a PagesReader in segment planning (only its identity matters)."""


def test_segments_group_reads_and_cut_long_chunks() -> None:
    """Consecutive chunks of one file share a read across small gaps; a large gap, another
    file or the segment size starts a new read; every byte keeps its destination."""
    a, b = _FakeReader(), _FakeReader()
    seg = pages._SEGMENT
    chunks = [pages.Chunk(0x10000, 0, PAGE, a, 0),  # type: ignore[arg-type]
              pages.Chunk(0x20000, 0, PAGE, a, 2 * PAGE),  # small gap: same read
              pages.Chunk(0x30000, 0, PAGE, a, 2 * PAGE + pages._MAX_GAP + 2 * PAGE),
              pages.Chunk(0x40000, 0, seg + PAGE, a, 8 * seg),  # cut at the segment size
              pages.Chunk(0x50000, 0, PAGE, b, 8 * seg + seg + PAGE)]  # other file
    segs = pages._segments(chunks)  # type: ignore[arg-type]
    assert [(s.offset, s.length, len(s.parts)) for s in segs] == [
        (0, 3 * PAGE, 2), (2 * PAGE + pages._MAX_GAP + 2 * PAGE, PAGE, 1),
        (8 * seg, seg, 1), (9 * seg, PAGE, 1), (9 * seg + PAGE, PAGE, 1)]
    assert segs[-1].reader is b and all(s.reader is a for s in segs[:-1])
    assert all(p.offset + p.length <= s.offset + s.length and p.offset >= s.offset
               for s in segs for p in s.parts)
    assert [(p.dst, p.length) for p in segs[2].parts + segs[3].parts] == [
        (0x40000, seg), (0x40000 + seg, PAGE)]


def _present_source(runs: list[tuple[int, int]]) -> pages.PageSource:
    """A page source of these (address, pages) runs, all stored one after another in a
    pages file mapped at 0x7000000."""
    entries = [PagemapEntry(addr, n, PE_PRESENT) for addr, n in runs]
    offsets = list(itertools.accumulate((n * PAGE for _, n in runs[:-1]), initial=0))
    stored = sum(n for _, n in runs)
    reader = _FakeReader()
    reader.address = 0x7000000  # type: ignore[attr-defined]
    return pages.PageSource(Pagemap.of(entries, offsets, stored,
                                       PageSums(ALGO_CRC32C, array("I", bytes(4 * stored)))),
                            reader, None)  # type: ignore[arg-type]


def test_chunks_in_walks_the_pagemap_once() -> None:
    """chunks_in over sorted ranges gives, per range, exactly the stored pages inside it
    with their file offsets (entries spanning two ranges included)."""

    src = _present_source([(0x10000, 4), (0x20000, 2), (0x30000, 8)])
    ranges = [(0x11000, 0x12000), (0x13000, 0x21000), (0x32000, 0x34000),
              (0x34000, 0x40000)]
    got = [(c.dst, c.length, c.offset) for c in src.chunks_in(ranges)]
    assert got == [(0x11000, PAGE, PAGE), (0x13000, PAGE, 3 * PAGE),
                   (0x20000, PAGE, 4 * PAGE), (0x32000, 2 * PAGE, 8 * PAGE),
                   (0x34000, 4 * PAGE, 10 * PAGE)]
    assert all(c.src == 0x7000000 + c.offset for c in src.chunks_in(ranges))
    assert src.chunks(0x50000, 0x60000) == []


def test_a_lazy_restore_writes_the_rseq_page_itself() -> None:
    """The pages the restore still writes in a lazy restore come in address order, so
    the page walk finds the rseq page inside a lazy VMA (it once came last, was never
    written, and the restore's own rseq registration waited for the daemon)."""
    rw, anon = 3, uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS
    vmas = [Vma(0x10000, 0x12000, rw, uapi.MAP_PRIVATE, 0, "file", path="/lib"),
            Vma(0x20000, 0x28000, rw, anon, 0, "anon"),
            Vma(0x30000, 0x31000, rw, uapi.MAP_PRIVATE, 0, "file", path="/lib")]
    th = ThreadCore(1, {}, None, 0, rseq=RseqRecord(0x23020, 32, 0x53053053))
    mm = cast(MmCore, SimpleNamespace(vmas=vmas))
    eager = LazyPages.__new__(LazyPages).eager_vmas(mm, [th])
    assert [(v.start, v.end) for v in eager] == [(0x10000, 0x12000), (0x23000, 0x24000),
                                                 (0x30000, 0x31000)]
    src = _present_source([(0x10000, 2), (0x20000, 8), (0x30000, 1)])
    writable, _ = pages.task_chunks(src, eager)
    assert (0x23000, PAGE, 5 * PAGE) in [(c.dst, c.length, c.offset) for c in writable]


class _FakeRunner:
    """start/finish of a BlobRunner, recorded; finish raises `fails` if given."""

    def __init__(self, pid: int, log: list[str], fails: BaseException | None = None) -> None:
        self.pid, self.log, self.fails = pid, log, fails

    def start(self, table: object) -> bool:
        self.log.append(f"start {self.pid}")
        return True

    def finish(self) -> None:
        self.log.append(f"finish {self.pid}")
        if self.fails is not None:
            raise self.fails


def test_run_all_waits_for_every_task_before_it_raises() -> None:
    """Tables run in all tasks at once: a failure in one is raised (as an EngineError
    of the phase, naming the task) only once every started task has stopped again."""
    from engine.restore.restorer import _run_all

    log: list[str] = []
    runners = [_FakeRunner(1, log), _FakeRunner(2, log, blob.TableError(12, "mmap", 0)),
               _FakeRunner(3, log)]
    with pytest.raises(EngineError, match=r"task 2: .*mmap: Cannot allocate memory"):
        _run_all(((r, blob.Table()) for r in runners), "mm")  # type: ignore[misc]
    assert log == ["start 1", "start 2", "start 3", "finish 1", "finish 2", "finish 3"]

    def tables() -> Iterator[tuple[_FakeRunner, blob.Table]]:
        yield runners[0], blob.Table()
        raise EngineError("mm", "building the second table failed")

    log.clear()
    with pytest.raises(EngineError, match="building the second table"):
        _run_all(tables(), "mm")  # type: ignore[arg-type]
    assert log == ["start 1", "finish 1"]


class _CheckingReader:
    """Stands for a PagesReader whose file is in the page cache or not; records checks."""

    def __init__(self, on_disk: bool) -> None:
        self.on_disk = on_disk
        self.checked: list[tuple[int, int]] = []

    def direct_fd(self) -> int:
        return 7 if self.on_disk else -1

    def verify(self, offset: int, address: int, length: int) -> None:
        self.checked.append((offset, length))


def _in_place(lists: list[list[pages.Chunk]]) -> list[bool]:
    check = pages.InPlaceCheck()
    mine = check.start(lists)
    check.result()
    return mine


def test_pages_copied_from_mappings_are_checked_aside() -> None:
    """InPlaceCheck checks the chunks write_chunks copies from the files' mappings (one
    check per run of a file): from the page cache, or few from disk; it leaves alone
    those write_chunks streams (large, every file to be read from disk), checked where
    they are read."""
    cached = _CheckingReader(on_disk=False)
    chunks = [pages.Chunk(0x10000, 0x9000000, PAGE, cached, 0),  # type: ignore[arg-type]
              pages.Chunk(0x11000, 0x9001000, PAGE, cached, PAGE),  # type: ignore[arg-type]
              pages.Chunk(0x20000, 0x9005000, PAGE, cached, 5 * PAGE)]  # type: ignore[arg-type]
    assert _in_place([chunks]) == [True]
    assert cached.checked == [(0, 2 * PAGE), (5 * PAGE, PAGE)]
    disk = _CheckingReader(on_disk=True)
    few = [pages.Chunk(0x30000, 0x9100000, PAGE, disk, 0)]  # type: ignore[arg-type]
    assert _in_place([few]) == [True] and disk.checked == [(0, PAGE)]
    disk.checked.clear()
    big = [pages.Chunk(0x40000, 0x9200000, pages._STREAM_MIN, disk, 0)]  # type: ignore[arg-type]
    assert _in_place([big, []]) == [False, False] and not disk.checked
    assert _in_place([big + chunks]) == [True]  # not all from disk: copied from mappings


def test_a_damaged_page_found_aside_fails_at_result() -> None:
    """The check runs in a thread; what it finds is raised by result(), after the copy
    and before the tasks run; wait() only waits."""
    class Damaged(_CheckingReader):
        def verify(self, offset: int, address: int, length: int) -> None:
            time.sleep(0.05)
            raise ImageError("pages-1.img", f"page at {offset:#x} damaged")

    check = pages.InPlaceCheck()
    bad = [pages.Chunk(0x10000, 0x9000000, PAGE, Damaged(False), 0)]  # type: ignore[arg-type]
    assert check.start([bad]) == [True]
    check.wait()
    with pytest.raises(ImageError, match="page at 0x0 damaged"):
        check.result()


def test_mostly_short_runs() -> None:
    """A pagemap of one-page runs (maps06) is mostly short; one of a long run is not; a
    tie is not."""
    def pm(counts: list[int]) -> Pagemap:
        addrs = [0x10000 + i * (1 << 30) for i in range(len(counts))]
        return Pagemap(addrs, counts, [PE_PRESENT] * len(counts), [], sum(counts),
                       PageSums(ALGO_CRC32C, array("I")))
    run = selfread.MIN_RUN // PAGE
    assert selfread.mostly_short(pm([1] * 3000))
    assert not selfread.mostly_short(pm([run] + [1] * 10))
    assert not selfread.mostly_short(pm([run - 1, run]))
    assert selfread.mostly_short(pm([run - 1, run - 1, run]))


@pytest.mark.parametrize("ready", [3, 1])
def test_spawn_does_its_idle_work_only_while_tasks_are_not_ready(ready: int) -> None:
    """spawn's `idle` work runs once, before waiting, when not every task has said it is
    ready yet (the engine would wait: a tree whose root still forks); not when all have
    (the engine is the slower one: its meanwhile work goes on in the next step)."""
    err_r, err_w = os.pipe()
    ready_r, ready_w = os.pipe()
    try:
        os.write(ready_w, b"r" * ready)
        done: list[int] = []

        def idle() -> None:
            done.append(ready)
            os.write(ready_w, b"r" * (3 - ready))  # the rest come while it works
        spawn._wait_ready(3, err_r, ready_r, time.monotonic() + 5, idle)
        assert done == ([] if ready == 3 else [1])
    finally:
        for fd in (err_r, err_w, ready_r, ready_w):
            os.close(fd)
