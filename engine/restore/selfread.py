"""Large page runs read by the restored task itself, straight from the pages file.

The dump writes pages files with O_DIRECT, so a restore reads them cold. Read by the engine,
every byte is read into an engine buffer and copied again into the task. Instead the task,
still stopped in the table runner, opens the file with O_DIRECT (buffered where the
filesystem does not do O_DIRECT, see directio.py) and preads each large run
into its own memory: the disk DMAs into the task's pages, the kernel allocates those pages
while earlier parts of one big request are already in flight, and nothing is copied.
Measured on the reference VM for 1 GiB cold: 0.78 s, against 1.45 s for engine-side O_DIRECT
segments plus process_vm_writev.

Whatever the task cannot read this way (the task may not open it,
e.g. inside a user namespace, or a read comes back short) is returned to the caller, which
writes it the engine's way. The descriptor is closed before the table ends, and a failed
restore kills the task anyway, so no descriptor outlives this step.

The task then computes the checksums of the pages it read (pagecrc.in_task, the engine's
page_crcs routine, which the runner's code area holds), and the engine compares them with
the pagemap's: no page is read twice or copied to check it. Without SSE4.2, or for an image
summed with CRC32, the engine reads (and checks) everything.
"""

from __future__ import annotations

import operator
import os
from array import array
from dataclasses import dataclass

from engine.images import PagesReader
from engine.images.directio import task_flags
from engine.images.imgdir import Pagemap
from engine.kernel import blob, pagecrc, uapi
from engine.proc.fdinfo import is_same_file
from engine.restore.pages import Chunk

#: Runs shorter than this stay with the engine's streamed segments, which read over small
#: gaps in one request; a task-side read per small run would wait on the disk each time.
MIN_RUN = 1 << 20
#: One pread at most this long (a read returns at most 2 GiB - 4 KiB).
MAX_READ = 1 << 30
#: The slowest disk a table's deadline allows for: it gets the runner's usual deadline
#: plus this much time per byte read (a 1 GiB table may take up to a minute longer).
MIN_BYTES_PER_S = 16 << 20
_ENTRY_BYTES = blob.ENTRY_SIZE + 8  # an entry and its result slot
_OPEN_FLAGS = uapi.O_RDONLY | uapi.O_CLOEXEC  # | O_DIRECT where the engine's file takes it


@dataclass(frozen=True)
class Run:
    """`length` bytes at `offset` of one pages file, for task address `dst`."""

    reader: PagesReader
    dst: int
    offset: int
    length: int


def runs(chunks: list[Chunk]) -> tuple[list[Run], list[Chunk]]:
    """Split chunks (sorted by address) into long runs contiguous in the task and in one
    pages file read with O_DIRECT (for the task to read) and the rest (for the engine to write; the chunks
    as they were: maps06-scale restores have tens of thousands of short ones)."""
    # No long run in less than MIN_RUN, nor among chunks all in the page cache (a warm
    # restore of maps06: 20,000 of them); direct_fd() is asked only when it may matter
    # (its first call looks at the whole file's residency).
    if sum(map(operator.attrgetter("length"), chunks)) < MIN_RUN or not any(
            r is not None and r.direct_fd() >= 0
            for r in set(map(operator.attrgetter("reader"), chunks))):
        return [], chunks
    long_runs: list[Run] = []
    rest: list[Chunk] = []
    i, n = 0, len(chunks)
    while i < n:
        c = chunks[i]
        j, dst_end, off_end = i + 1, c.dst + c.length, c.offset + c.length
        if c.reader is not None:
            while (j < n and chunks[j].reader is c.reader and chunks[j].dst == dst_end
                   and chunks[j].offset == off_end):
                dst_end += chunks[j].length
                off_end += chunks[j].length
                j += 1
        # (from the page cache the engine copies as fast, with no table to run)
        if c.reader is not None and dst_end - c.dst >= MIN_RUN and c.reader.direct_fd() >= 0:
            long_runs.append(Run(c.reader, c.dst, c.offset, dst_end - c.dst))
        else:
            rest.extend(chunks[i:j])
        i = j
    return long_runs, rest


def mostly_short(pm: Pagemap) -> bool:
    """Whether most pages of a pagemap are in runs shorter than MIN_RUN: the task reads
    none of them itself, the engine copies them from the pages file's mapping."""
    short = MIN_RUN // uapi.PAGE_SIZE
    return 2 * sum(n for n in pm.counts if n < short) > sum(pm.counts)


def _chunk(r: Run) -> Chunk:
    return Chunk(r.dst, r.reader.address + r.offset, r.length, r.reader, r.offset)


def read_in_task(runner: blob.BlobRunner, long_runs: list[Run]) -> list[Chunk]:
    """Have the task read `long_runs` itself; returns, as chunks, what it did not read."""
    left: list[Chunk] = []
    by_file: dict[int, list[Run]] = {}
    for r in long_runs:
        by_file.setdefault(id(r.reader), []).append(r)
    for group in by_file.values():
        if group[0].reader.sums.algo != pagecrc.ALGO_CRC32C or not pagecrc.native():
            left += [_chunk(r) for r in group]
            continue
        fd = _open_in_task(runner, group[0].reader)
        if fd < 0:
            left += [_chunk(r) for r in group]
            continue
        pieces = [Run(r.reader, r.dst + k, r.offset + k, min(MAX_READ, r.length - k))
                  for r in group for k in range(0, r.length, MAX_READ)]
        try:
            per_table = max((runner.size - blob.CODE_AREA) // _ENTRY_BYTES, 1)
            for i in range(0, len(pieces), per_table):
                left += _read_table(runner, fd, pieces[i:i + per_table])
        finally:
            _close_in_task(runner, fd)
    return left


def _open_in_task(runner: blob.BlobRunner, reader: PagesReader) -> int:
    """The task's descriptor of the pages file, or -1 where it cannot open it or its path
    leads the task to another file (checked by inode: reading another file's bytes would
    silently restore wrong memory)."""
    path = os.path.abspath(reader.path)
    t = blob.Table()
    opened = t.slot()
    flags = _OPEN_FLAGS | task_flags(reader.direct_fd() >= 0)
    t.add(uapi.SYS_openat, uapi.AT_FDCWD, t.cstr(path), flags, may_fail=True,
          store=opened, what=("open {} in the task", path))
    runner.run(t)
    fd = runner.read_slot(opened)
    if fd < 0:
        return -1
    if not is_same_file(runner.pid, fd, reader.fd):
        _close_in_task(runner, fd)
        return -1
    return fd


def _close_in_task(runner: blob.BlobRunner, fd: int) -> None:
    t = blob.Table()
    t.add(uapi.SYS_close, fd, may_fail=True, what="close the pages file in the task")
    runner.run(t)


def _read_table(runner: blob.BlobRunner, fd: int, pieces: list[Run]) -> list[Chunk]:
    """One pread per piece (at most MAX_READ each): every entry may fail and stores its
    result; then the results are checked."""
    t = blob.Table()
    slots = []
    for piece in pieces:
        slots.append(t.slot())
        t.add(uapi.SYS_pread64, fd, piece.dst, piece.length, piece.offset, may_fail=True,
              store=slots[-1], what=("read pages at {:#x}", piece.dst))
    runner.run(t, runner.timeout + sum(p.length for p in pieces) / MIN_BYTES_PER_S)
    # whole pages read (the results first: checking overwrites the table's slots)
    gots = [max(runner.read_slot(slot), 0) & ~(uapi.PAGE_SIZE - 1) for slot in slots]
    left = []
    for piece, got in zip(pieces, gots):
        if got:
            piece.reader.check(piece.offset, _sums_in_task(runner, piece.dst, got))
        if got < piece.length:
            # A short or failed read: the engine writes the remainder its own way.
            rest = Run(piece.reader, piece.dst + got, piece.offset + got, piece.length - got)
            left.append(_chunk(rest))
    return left


def _sums_in_task(runner: blob.BlobRunner, addr: int, length: int) -> array[int]:
    """Checksums of the pages at [addr, addr + length) of the task, computed by the task,
    its results in the runner's table area (free between tables)."""
    out = runner.base + blob.CODE_AREA
    per_call = (runner.size - blob.CODE_AREA - pagecrc.task_scratch_bytes(0)) // 4
    sums = array("I")
    npages = length // uapi.PAGE_SIZE
    for first in range(0, npages, per_call):
        n = min(per_call, npages - first)
        sums += pagecrc.in_task(runner.pid, runner.mem_fd, runner.base, out,
                                addr + first * uapi.PAGE_SIZE, n,
                                runner.timeout + n * uapi.PAGE_SIZE / MIN_BYTES_PER_S)
    return sums
