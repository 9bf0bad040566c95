"""Page contents into the restored task, in few large transfers.

The dump writes pages files with O_DIRECT, so at restore they are usually not in the page
cache. Large transfers therefore read the files with O_DIRECT, in segments of a few MiB,
into reused aligned buffers and copy each one into the task (`_stream`): several workers
each read a segment and write it, so reads of one overlap copies of another and the disk
sees several requests at once. Measured on the reference VM for 1 GiB cold: about
1.0-1.3 s this way, 2.2 s through a mapping of the file (one read-around per fault).
Small transfers, files that refuse O_DIRECT and `PageSource.read()` use the read-only
mapping of the file (`PagesReader`) instead.

Writable destinations get process_vm_writev with up to 1024 iovecs per call; read-only or
PROT_NONE destinations (where process_vm_writev fails) get pwrite on /proc/PID/mem, which
writes with FOLL_FORCE. Pages an incremental image marks PE_PARENT are taken from the
parent image's files.

Every page is checked against its pagemap checksum where the engine has it in memory (a
read segment, or the file's mapping) before it goes into the task: a damaged pages file
fails the restore (whose tasks are then killed) and is never restored.
"""

from __future__ import annotations

import bisect
import ctypes
import itertools
import operator
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from engine.errors import EngineError
from engine.images import PE_PARENT, PE_PRESENT, DumpImage, PagesReader
from engine.images.imgdir import Pagemap
from engine.images.records import PAGE_SIZE, Vma
from engine.images.vmatable import KIND_INDEX, columns_of
from engine.kernel import sys as ksys
from engine.kernel import uapi

_IOV_MAX = 1024
#: below this, one thread is as fast. The cost is the target's page faults (a private
#: file page is read before it is overwritten), which two threads take on two cores:
#: 10,000 one-page VMAs (27 MB) 19 -> 14.5 ms; no gain at 8 MB.
_PARALLEL_BYTES = 16 << 20
_MAX_WORKERS = 4
_STREAM_MIN = 4 << 20  # below this, a transfer goes through the file's mapping
#: pages checked at once by InPlaceCheck.start, not in a thread (~60 us; a thread's start
#: and its first hold of the interpreter lock cost the restore 0.5-1 ms)
_INLINE_CHECK = 256 << 10
_LENGTH = operator.attrgetter("length")
_READER = operator.attrgetter("reader")
# 4 MiB x 6 measured a little better than 8 x 4, 16 x 3 or 2 x 8 (1.0-1.4 s against
# 1.25-1.5 s per GiB; noisy): more requests in flight, less to wait for at the end.
_SEGMENT = 4 << 20  # bytes read per O_DIRECT read
_STREAM_WORKERS = 6  # segments in flight (each worker reads one, then copies it)
_MAX_GAP = 256 << 10  # unused file bytes a segment may read over to stay one read
#: Pages files of at most this much in all are read ahead whole when a restore starts
#: (prefetch_files); larger ones are read with O_DIRECT where they are used.
PREFETCH_MAX = 64 << 20
#: Pages files of at most this much in all whose pages are mostly in short runs (which the
#: engine copies from the file's mapping: selfread.mostly_short) are read ahead whole too.
#: 30,000 VMAs' 78 MiB, cold: restore 164-183 -> 143-153 ms. (Long runs are better read
#: by the task with O_DIRECT: a 100 MiB one read ahead took 156-167 ms, not 101-113.)
SHORT_PREFETCH_MAX = 256 << 20
#: bytes per read-ahead request: the kernel reads at most the device's read-ahead window
#: or largest request (128 KiB on many disks, 8 MiB here) of one POSIX_FADV_WILLNEED
_PREFETCH_STEP = 1 << 20


class Chunk(NamedTuple):
    """`length` bytes at engine address `src` go to target address `dst`; when they come
    from a pages file, `reader` is that file and `offset` where they are in it.
    (A tuple: maps06-scale restores make tens of thousands of them.)"""

    dst: int
    src: int
    length: int
    reader: PagesReader | None = None
    offset: int = 0

    def cut(self, n: int) -> tuple[Chunk, Chunk]:
        """The first n bytes and the rest."""
        dst, src, length, reader, offset = self
        return (Chunk(dst, src, n, reader, offset),
                Chunk(dst + n, src + n, length - n, reader, offset + n))


class PageSource:
    """The pages of one pagemap (a task's or a shmem object's), following parent images.

    `chunks(start, end)` yields where each present byte range of [start, end) comes from.
    """

    def __init__(self, pagemap: Pagemap, reader: PagesReader | None,
                 parent_lookup: PageSource | None) -> None:
        """The pages of `pagemap`, whose data `reader` maps (owned from now on)."""
        self.pagemap = pagemap
        # plain lists for chunks_in's walk (attribute access per entry cost it half)
        self._starts, self._ends, self._flags = pagemap.addrs, pagemap.ends, pagemap.flags
        self.reader = reader
        self.parent = parent_lookup

    @classmethod
    def of(cls, image: DumpImage, pagemap: Pagemap, pages_name: str,
           parent_lookup: PageSource | None) -> PageSource:
        """The pages of `pagemap`, stored in the image's file `pages_name`."""
        return cls(pagemap, image.dir.pages_reader(pages_name, pagemap), parent_lookup)

    def close(self) -> None:
        """Unmap the pages files of this image and its parents."""
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.parent is not None:
            self.parent.close()

    def readers(self) -> list[PagesReader]:
        """The pages files of this image and of its parents."""
        own = [self.reader] if self.reader is not None else []
        return own + (self.parent.readers() if self.parent is not None else [])

    def chunks(self, start: int, end: int) -> list[Chunk]:
        """Present data inside [start, end), as (dst, engine src, length) chunks."""
        return self.chunks_in([(start, end)])

    def chunks_in(self, ranges: list[tuple[int, int]]) -> list[Chunk]:
        """chunks() of every range of a sorted list of disjoint ranges, in one walk over
        the pagemap (one bisect per VMA cost a maps06-scale restore 0.1 s)."""
        out: list[Chunk] = []
        starts, ends, flags = self._starts, self._ends, self._flags
        offsets = self.pagemap.offsets
        reader = self.reader
        base = reader.address if reader is not None else 0
        n = len(starts)
        i = max(bisect.bisect_right(starts, ranges[0][0]) - 1, 0) if ranges else 0
        for start, end in ranges:
            while i < n and ends[i] <= start:
                i += 1
            j = i
            while j < n and starts[j] < end:
                lo, hi = max(starts[j], start), min(ends[j], end)
                if lo < hi:
                    if flags[j] & PE_PRESENT:
                        off = offsets[j] + (lo - starts[j])
                        out.append(Chunk(lo, base + off, hi - lo, reader, off))
                    elif flags[j] & PE_PARENT:
                        out.extend(self._from_parent(lo, hi))
                j += 1
            # The next range starts at or after `end`: entry j-1 may still reach into it.
            i = max(i, j - 1)
        return out

    def _from_parent(self, lo: int, hi: int) -> list[Chunk]:
        """The chunks of [lo, hi), which the parent image must hold whole."""
        if self.parent is None:
            raise EngineError("pages", f"pages at {lo:#x} are in a parent "
                                       "image that does not have them")
        got = self.parent.chunks(lo, hi)
        if sum(c.length for c in got) != hi - lo:
            raise EngineError("pages", f"parent image lacks pages at {lo:#x}")
        return got

    def read(self, addr: int, n: int) -> bytes:
        """Dumped bytes at [addr, addr+n) (zeros where no page was stored)."""
        buf = bytearray(n)
        for c in self.chunks(addr & ~(PAGE_SIZE - 1), _page_up(addr + n)):
            assert c.reader is not None
            c.reader.verify(c.offset, c.src, c.length)
            lo, hi = max(c.dst, addr), min(c.dst + c.length, addr + n)
            if lo < hi:
                buf[lo - addr:hi - addr] = _engine_view(c.src + (lo - c.dst), hi - lo)
        return bytes(buf)


def _page_up(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def task_source(image: DumpImage, pid: int) -> PageSource:
    """The page source of task `pid`, chained to its parents' for PE_PARENT runs."""
    parent_img = image.parent()
    parent = None
    if parent_img is not None and pid in parent_img.tasks:
        parent = task_source(parent_img, pid)
    t = image.tasks[pid]
    assert t.mm is not None and t.pagemap is not None
    return PageSource.of(image, t.pagemap, t.mm.pages, parent)


def shmem_source(image: DumpImage, sid: str) -> PageSource:
    """The page source of shmem object `sid` (offsets), chained to its parents'."""
    parent_img = image.parent()
    parent = None
    if parent_img is not None and sid in parent_img.shmem:
        parent = shmem_source(parent_img, sid)
    s = image.shmem[sid]
    return PageSource.of(image, s.pagemap, s.entry.pages, parent)


_NOT_RESTORED = frozenset(KIND_INDEX[k] for k in ("vdso", "vvar", "vsyscall"))


def task_chunks(src: PageSource, vmas: Sequence[Vma], skip: frozenset[int] = frozenset()
                ) -> tuple[list[Chunk], list[Chunk]]:
    """The stored pages of the task's private VMAs (sorted by address, as an image has
    them) but those starting at an address in `skip`, as (writable, not writable) chunks
    sorted by address (the second kind is written through /proc/PID/mem). A column-wise
    walk: tens of thousands of VMAs."""
    fast: list[tuple[int, int]] = []
    forced: list[tuple[int, int]] = []
    cols = columns_of(vmas)
    for start, end, kind, flags, prot in zip(cols.start, cols.end, cols.kind, cols.flags,
                                             cols.prot):
        if kind in _NOT_RESTORED or flags & uapi.MAP_SHARED or skip and start in skip:
            continue  # shared objects are filled on the object, not through a task
        # (a private mapping of a memfd gets its COW pages here, like a file mapping)
        ranges = fast if prot & uapi.PROT_WRITE else forced
        if ranges and ranges[-1][1] == start:  # one range for neighbours alike (maps06)
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return src.chunks_in(fast), src.chunks_in(forced)


def prefetch_files(readers: list[PagesReader], limit: int | None = None) -> bool:
    """Have the kernel start reading these pages files now, when they are small enough
    (`limit` in all, PREFETCH_MAX by default): a restore does it at its start, so that the
    pages of an image no longer in the page cache are read while the tree is made, in
    requests in flight together rather than one page fault at a time; they are then read
    through the cache (PagesReader.read_through_cache). True when it asked."""
    sizes = [os.fstat(r.fd).st_size for r in readers]
    if sum(sizes) > (PREFETCH_MAX if limit is None else limit):
        return False
    for r, size in zip(readers, sizes):
        _will_need(r.fd, 0, size)
        r.read_through_cache()
    return True


def prefetch_chunks(chunks: list[Chunk]) -> None:
    """prefetch_files for these chunks' pages only (a lazy restore's own few)."""
    for reader, offset, _src, length in _file_spans(chunks):
        _will_need(reader.fd, offset, length)


def _will_need(fd: int, offset: int, length: int) -> None:
    for at in range(offset, offset + length, _PREFETCH_STEP):
        os.posix_fadvise(fd, at, min(_PREFETCH_STEP, offset + length - at),
                         os.POSIX_FADV_WILLNEED)


def write_shmem_pages(pid: int, src: PageSource, base: int, size: int) -> int:
    """Write a shmem object's stored pages through its full mapping at `base`."""
    chunks = [c._replace(dst=base + c.dst) for c in src.chunks(0, size)]
    return write_chunks(pid, chunks, False)


def write_chunks(pid: int, chunks: list[Chunk], forced: bool, checked: bool = False) -> int:
    """Write chunks into task pid: through /proc/PID/mem when `forced`, else with
    process_vm_writev; large transfers from pages files are streamed (`_stream`). Every
    page from a pages file is checked (`checked`: an InPlaceCheck does)."""
    if _streamed(chunks):
        return _stream(pid, chunks, forced)
    if not forced:
        return _vm_write(pid, chunks, checked)
    done = _mem_write(pid, chunks)
    if not checked:
        _verify(chunks)
    return done


def _streamed(chunks: list[Chunk], size: int | None = None) -> bool:
    """Whether write_chunks streams these (`size` bytes in all, if known: large, every
    file read with O_DIRECT), rather than copying them from their files' mappings."""
    if size is None:
        size = sum(map(_LENGTH, chunks))
    return size >= _STREAM_MIN and all(
        r is not None and r.direct_fd() >= 0 for r in set(map(_READER, chunks)))


class InPlaceCheck:
    """The check of the pages that write_chunks will copy from their files' mappings (not
    streamed: those are checked where they are read), in a thread of its own. A restore
    starts it while the tasks build their layouts, and it goes on while the pages are
    copied; `result()` before the tasks run, so a damaged page still fails the restore
    first. (A 1 GiB process: its 100 ms of checksums no longer come before the copy; the
    mapping's page faults, a disk read for a file not in the page cache, are taken here
    rather than in the copy.)"""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._errors: list[BaseException] = []

    def start(self, lists: list[list[Chunk]]) -> list[bool]:
        """Start checking those of the chunk lists write_chunks copies from mappings;
        whether each list is checked here. Once only."""
        assert self._thread is None
        sizes = [sum(map(_LENGTH, chunks)) for chunks in lists]
        mine = [size > 0 and not _streamed(chunks, size) for chunks, size in zip(lists, sizes)]
        todo = [chunks for chunks, m in zip(lists, mine) if m]
        if sum(size for size, m in zip(sizes, mine) if m) <= _INLINE_CHECK:
            self._check(todo)  # less than starting a thread costs
        elif todo:
            self._thread = threading.Thread(target=self._check, args=(todo,),
                                             name="pages-check", daemon=True)
            self._thread.start()
        return mine

    def _check(self, lists: list[list[Chunk]]) -> None:
        try:
            for chunks in lists:
                _verify(chunks)
        except BaseException as e:  # noqa: BLE001 - raised by result()
            self._errors.append(e)

    def wait(self) -> None:
        """Wait for the check to end (before the pages files are unmapped)."""
        if self._thread is not None:
            self._thread.join()

    def result(self) -> None:
        """Wait for the check; raise what it found (ImageError for a damaged page)."""
        self.wait()
        if self._errors:
            raise self._errors[0]


def _verify(chunks: list[Chunk]) -> None:
    """Check the chunks' pages from pages files. Called after their copy, which read
    the file's pages into the page cache: the check costs no second disk read, and a
    damaged page still fails the restore before the task ever runs."""
    for reader, offset, src, length in _file_spans(chunks):
        reader.verify(offset, src, length)


def _file_spans(chunks: list[Chunk]) -> list[tuple[PagesReader, int, int, int]]:
    """The chunks from pages files as (reader, offset, engine address, length) spans,
    chunks next to each other in one file merged: one check per span (one per chunk cost
    a maps06-scale restore 30 ms)."""
    out: list[tuple[PagesReader, int, int, int]] = []
    for c in chunks:
        if c.reader is None:
            continue
        if out:
            reader, offset, src, length = out[-1]
            if reader is c.reader and offset + length == c.offset and src + length == c.src:
                out[-1] = (reader, offset, src, length + c.length)
                continue
        out.append((c.reader, c.offset, c.src, c.length))
    return out


@dataclass
class _Segment:
    """One read of a pages file: [offset, offset + length) feeds the chunks `parts`."""

    reader: PagesReader
    offset: int
    length: int
    parts: list[Chunk]


def _segments(chunks: list[Chunk]) -> list[_Segment]:
    """Group chunks into reads of at most _SEGMENT bytes: consecutive chunks of one file
    share a read when the bytes between them are few (reading over them is cheaper than
    another request); a chunk longer than the room left is cut."""
    out: list[_Segment] = []
    cur: _Segment | None = None
    for c in chunks:
        assert c.reader is not None
        while True:
            if (cur is None or c.reader is not cur.reader
                    or not 0 <= c.offset - (cur.offset + cur.length) <= _MAX_GAP
                    or c.offset - cur.offset >= _SEGMENT):
                cur = _Segment(c.reader, c.offset, 0, [])
                out.append(cur)
            room = cur.offset + _SEGMENT - c.offset
            if c.length <= room:
                cur.parts.append(c)
                cur.length = c.offset + c.length - cur.offset
                break
            head, c = c.cut(room)
            cur.parts.append(head)
            cur.length = _SEGMENT
    return out


def _stream(pid: int, chunks: list[Chunk], forced: bool) -> int:
    """Read the chunks' bytes from their pages files with O_DIRECT, a segment at a time,
    into per-worker buffers and write each segment into the task (process_vm_writev, or
    /proc/PID/mem when `forced`). The workers take segments in file order; O_DIRECT reads
    and the copies (where the task's page allocation is paid) release the GIL, so one
    worker's read overlaps another's copy."""
    segs = _segments(chunks)
    if not segs:
        return 0
    sink: Callable[[int, list[Chunk]], object] = _mem_write if forced else _vm_write_serial
    order = itertools.count()  # next() on it is atomic under the GIL
    errors: list[BaseException] = []

    def work() -> None:
        # whole pages: the last page of a shmem object may be partly used, and is
        # checked whole
        size = _page_up(min(_SEGMENT, max(s.length for s in segs)))
        buf = ksys.mmap(0, size, uapi.PROT_READ | uapi.PROT_WRITE,
                        uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS)
        try:
            for i in order:
                if i >= len(segs) or errors:
                    break
                seg = segs[i]
                whole = _page_up(seg.length)
                seg.reader.read_into(buf, seg.offset, whole)
                # One check of the whole segment (the bytes read over between its parts
                # are pages of the same file): one call per chunk costs maps06 more than
                # the copy.
                seg.reader.verify(seg.offset, buf, whole)
                shift = buf - seg.offset
                sink(pid, [Chunk(c.dst, c.offset + shift, c.length) for c in seg.parts])
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread below
            errors.append(e)
        finally:
            ksys.munmap(buf, size)

    workers = min(_STREAM_WORKERS, len(segs))
    threads = [threading.Thread(target=work, name="pages-stream", daemon=True)
               for _ in range(workers - 1)]
    try:
        for t in threads:
            t.start()
        work()  # the calling thread is one of the workers
    except BaseException as e:
        errors.append(e)  # the others stop after their current segment
        raise
    finally:
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return sum(c.length for c in chunks)


def _vm_write(pid: int, chunks: list[Chunk], checked: bool) -> int:
    """process_vm_writev all chunks, then check their pages (_verify) unless `checked`;
    large transfers are split over a few threads, each checking its own part (the cost is
    the target's page allocation and zeroing, which runs in the calling thread's syscall,
    and the checksums: ctypes releases the GIL for both)."""
    total = sum(c.length for c in chunks)
    workers = min(os.cpu_count() or 1, _MAX_WORKERS)
    if total < _PARALLEL_BYTES or workers < 2:
        _vm_write_serial(pid, chunks)
        if not checked:
            _verify(chunks)
        return total
    errors: list[BaseException] = []

    def work(part: list[Chunk]) -> None:
        try:
            _vm_write_serial(pid, part)
            if not checked:
                _verify(part)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(part,), daemon=True)
               for part in _split(chunks, workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return total


def _split(chunks: list[Chunk], parts: int) -> list[list[Chunk]]:
    """Cut the chunk list into `parts` lists of about equal bytes (page-aligned cuts):
    whole chunks are sliced off the list, only the chunks a cut falls in are cut (maps06
    has tens of thousands of one-page chunks)."""
    ends = list(itertools.accumulate(map(operator.attrgetter("length"), chunks)))
    total = ends[-1] if ends else 0
    share = _page_up(total // parts)
    out: list[list[Chunk]] = []
    i = 0  # the first chunk not placed yet
    carry: Chunk | None = None  # the rest of a cut chunk (chunks[i - 1]), at `carry_at`
    carry_at = 0
    for k in range(1, parts):
        cut = k * share
        if not share or cut >= total:
            break
        if carry is not None and carry_at + carry.length > cut:  # a long chunk, cut again
            head, carry = carry.cut(cut - carry_at)
            carry_at = cut
            out.append([head])
            continue
        j = bisect.bisect_right(ends, cut)  # chunks[:j] end at or before the cut
        part = ([carry] if carry is not None else []) + chunks[i:j]
        carry, i = None, j
        if j < len(chunks) and ends[j] - chunks[j].length < cut:
            head, carry = chunks[j].cut(cut - (ends[j] - chunks[j].length))
            carry_at, i = cut, j + 1
            part.append(head)
        out.append(part)
    out.append(([carry] if carry is not None else []) + chunks[i:])
    return out


def _vm_write_serial(pid: int, chunks: list[Chunk]) -> None:
    for i in range(0, len(chunks), _IOV_MAX):
        batch = chunks[i:i + _IOV_MAX]
        want = sum(c.length for c in batch)
        try:
            got = ksys.process_vm_writev(pid, [(c.src, c.length) for c in batch],
                                         [(c.dst, c.length) for c in batch])
        except OSError:
            got = 0
        if got != want:
            # A partial write stops at the first page that failed; finish through
            # /proc/PID/mem, which also reports the real error if there is one.
            done = got
            rest: list[Chunk] = []
            for c in batch:
                if done >= c.length:
                    done -= c.length
                    continue
                rest.append(c.cut(done)[1] if done else c)
                done = 0
            _mem_write(pid, rest)


def _mem_write(pid: int, chunks: list[Chunk]) -> int:
    if not chunks:
        return 0
    fd = os.open(f"/proc/{pid}/mem", os.O_WRONLY | os.O_CLOEXEC)
    total = 0
    try:
        for c in chunks:
            view = memoryview(_engine_view(c.src, c.length))
            addr = c.dst
            while view:
                n = os.pwrite(fd, view, addr)
                if n <= 0:
                    raise EngineError("pages", f"short write at {addr:#x} in task {pid}")
                view, addr = view[n:], addr + n
            total += c.length
    except OSError as e:
        raise EngineError("pages", f"writing pages of task {pid}: {e.strerror}") from None
    finally:
        os.close(fd)
    return total


def _engine_view(addr: int, n: int) -> memoryview:
    """A view of n bytes of the engine's own memory (a mapped pages file) at addr."""
    return memoryview((ctypes.c_char * n).from_address(addr)).cast("B")
