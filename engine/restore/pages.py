"""Page contents into the restored task, in few large transfers.

Pages files are mapped into the engine (`PagesReader`), so data never passes through
Python objects: writable destinations get process_vm_writev with up to 1024 iovecs per
call pointing straight into those mappings; read-only or PROT_NONE destinations (where
process_vm_writev fails) get pwritev on /proc/PID/mem, which writes with FOLL_FORCE.
Pages an incremental image marks PE_PARENT are taken from the parent image's files.
"""

from __future__ import annotations

import bisect
import ctypes
import os
import threading
from dataclasses import dataclass

from engine.errors import EngineError
from engine.images import PE_PARENT, PE_PRESENT, DumpImage, PagesReader
from engine.images.imgdir import Pagemap
from engine.images.records import PAGE_SIZE, Vma
from engine.kernel import sys as ksys
from engine.kernel import uapi

_IOV_MAX = 1024
_PARALLEL_BYTES = 64 << 20  # below this, one thread is as fast
_MAX_WORKERS = 4


@dataclass(frozen=True)
class Chunk:
    """`length` bytes at engine address `src` go to target address `dst`."""

    dst: int
    src: int
    length: int


class PageSource:
    """The pages of one pagemap (a task's or a shmem object's), following parent images.

    `chunks(start, end)` yields where each present byte range of [start, end) comes from.
    """

    def __init__(self, image: DumpImage, pagemap: Pagemap, pages_name: str,
                 parent_lookup: PageSource | None) -> None:
        self.pagemap = pagemap
        self._starts = [e.addr for e in pagemap.entries]
        self.reader: PagesReader | None = image.dir.pages_reader(pages_name,
                                                                 pagemap.pages_stored)
        self.parent = parent_lookup

    def close(self) -> None:
        """Unmap the pages files of this image and its parents."""
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.parent is not None:
            self.parent.close()

    def chunks(self, start: int, end: int) -> list[Chunk]:
        """Present data inside [start, end), as (dst, engine src, length) chunks."""
        out: list[Chunk] = []
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        entries = self.pagemap.entries
        while i < len(entries) and entries[i].addr < end:
            e = entries[i]
            lo, hi = max(e.addr, start), min(e.end, end)
            if lo < hi:
                if e.flags & PE_PRESENT:
                    assert self.reader is not None
                    src = self.reader.address + self.pagemap.offsets[i] + (lo - e.addr)
                    out.append(Chunk(lo, src, hi - lo))
                elif e.flags & PE_PARENT:
                    if self.parent is None:
                        raise EngineError("pages", f"pages at {lo:#x} are in a parent "
                                                   "image that does not have them")
                    got = self.parent.chunks(lo, hi)
                    if sum(c.length for c in got) != hi - lo:
                        raise EngineError("pages", f"parent image lacks pages at {lo:#x}")
                    out.extend(got)
            i += 1
        return out

    def read(self, addr: int, n: int) -> bytes:
        """Dumped bytes at [addr, addr+n) (zeros where no page was stored)."""
        buf = bytearray(n)
        for c in self.chunks(addr & ~(PAGE_SIZE - 1), _page_up(addr + n)):
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
    return PageSource(image, t.pagemap, t.mm.pages, parent)


def shmem_source(image: DumpImage, sid: str) -> PageSource:
    """The page source of shmem object `sid` (offsets), chained to its parents'."""
    parent_img = image.parent()
    parent = None
    if parent_img is not None and sid in parent_img.shmem:
        parent = shmem_source(parent_img, sid)
    s = image.shmem[sid]
    return PageSource(image, s.pagemap, s.entry.pages, parent)


def write_task_pages(pid: int, src: PageSource, vmas: list[Vma]) -> int:
    """Write every stored page of the task's private VMAs; returns bytes written."""
    fast: list[Chunk] = []
    forced: list[Chunk] = []
    for v in vmas:
        if v.kind in ("shmem", "vdso", "vvar", "vsyscall") or v.flags & uapi.MAP_SHARED:
            continue  # shared objects are filled on the object, not through a task
        dest = fast if v.prot & uapi.PROT_WRITE else forced
        dest.extend(src.chunks(v.start, v.end))
    return _vm_write(pid, fast) + _mem_write(pid, forced)


def write_shmem_pages(pid: int, src: PageSource, base: int, size: int) -> int:
    """Write a shmem object's stored pages through its full mapping at `base`."""
    chunks = [Chunk(base + c.dst, c.src, c.length) for c in src.chunks(0, size)]
    return _vm_write(pid, chunks)


def _vm_write(pid: int, chunks: list[Chunk]) -> int:
    """process_vm_writev all chunks; large transfers are split over a few threads (the
    cost is the target's page allocation and zeroing, which runs in the calling thread's
    syscall, and ctypes releases the GIL)."""
    total = sum(c.length for c in chunks)
    workers = min(os.cpu_count() or 1, _MAX_WORKERS)
    if total < _PARALLEL_BYTES or workers < 2:
        _vm_write_serial(pid, chunks)
        return total
    errors: list[BaseException] = []

    def work(part: list[Chunk]) -> None:
        try:
            _vm_write_serial(pid, part)
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
    """Cut the chunk list into `parts` lists of about equal bytes (page-aligned cuts)."""
    share = _page_up(sum(c.length for c in chunks) // parts)
    out: list[list[Chunk]] = [[]]
    room = share
    for c in chunks:
        while c.length:
            if room == 0 and len(out) < parts:
                out.append([])
                room = share
            n = c.length if len(out) == parts else min(c.length, room)
            out[-1].append(Chunk(c.dst, c.src, n))
            c = Chunk(c.dst + n, c.src + n, c.length - n)
            room -= min(n, room)
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
                rest.append(Chunk(c.dst + done, c.src + done, c.length - done))
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
