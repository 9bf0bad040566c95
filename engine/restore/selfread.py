"""Large page runs read by the restored task itself, straight from the pages file.

The dump writes pages files with O_DIRECT, so a restore reads them cold. Read by the engine,
every byte is read into an engine buffer and copied again into the task. Instead the task,
still stopped in the table runner, opens the file with O_DIRECT and preads each large run
into its own memory: the disk DMAs into the task's pages, the kernel allocates those pages
while earlier parts of one big request are already in flight, and nothing is copied.
Measured on the reference VM for 1 GiB cold: 0.78 s, against 1.45 s for engine-side O_DIRECT
segments plus process_vm_writev.

Whatever the task cannot read this way (the file refuses O_DIRECT, the task may not open it,
e.g. inside a user namespace, or a read comes back short) is returned to the caller, which
writes it the engine's way. The descriptor is closed before the table ends, and a failed
restore kills the task anyway, so no descriptor outlives this step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from engine.images import PagesReader
from engine.kernel import blob, uapi
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
_OPEN_FLAGS = uapi.O_RDONLY | uapi.O_DIRECT | uapi.O_CLOEXEC


@dataclass(frozen=True)
class Run:
    """`length` bytes at `offset` of one pages file, for task address `dst`."""

    reader: PagesReader
    dst: int
    offset: int
    length: int


def runs(chunks: list[Chunk]) -> tuple[list[Run], list[Chunk]]:
    """Split chunks (sorted by address) into long runs contiguous in the task and in one
    pages file (for the task to read) and the rest (for the engine to write)."""
    merged: list[Run] = []
    rest: list[Chunk] = []
    for c in chunks:
        if c.reader is None:
            rest.append(c)
            continue
        last = merged[-1] if merged else None
        if (last is not None and c.reader is last.reader and c.dst == last.dst + last.length
                and c.offset == last.offset + last.length):
            merged[-1] = Run(last.reader, last.dst, last.offset, last.length + c.length)
        else:
            merged.append(Run(c.reader, c.dst, c.offset, c.length))
    long_runs = []
    for r in merged:
        if r.length >= MIN_RUN and r.reader.direct_fd() >= 0:
            long_runs.append(r)
        else:
            rest.append(_chunk(r))
    return long_runs, rest


def _chunk(r: Run) -> Chunk:
    return Chunk(r.dst, r.reader.address + r.offset, r.length, r.reader, r.offset)


def read_in_task(runner: blob.BlobRunner, long_runs: list[Run]) -> list[Chunk]:
    """Have the task read `long_runs` itself; returns, as chunks, what it did not read."""
    left: list[Chunk] = []
    by_file: dict[int, list[Run]] = {}
    for r in long_runs:
        by_file.setdefault(id(r.reader), []).append(r)
    for group in by_file.values():
        path = os.path.abspath(group[0].reader.path)
        room = runner.size - blob.CODE_AREA - len(os.fsencode(path)) - 64
        per_table = max(room // _ENTRY_BYTES - 2, 1)  # minus the open and the close
        for i in range(0, len(group), per_table):
            left += _one_table(runner, path, group[i:i + per_table])
    return left


def _one_table(runner: blob.BlobRunner, path: str, group: list[Run]) -> list[Chunk]:
    """open, one pread per piece of at most MAX_READ, close: every entry may fail and
    stores its result, so the close always runs; then the results are checked."""
    t = blob.Table()
    opened = t.slot()
    t.add(uapi.SYS_openat, uapi.AT_FDCWD, t.cstr(path), _OPEN_FLAGS, save=True,
          may_fail=True, store=opened, what=("open {} in the task", path))
    pieces: list[tuple[Run, blob.DataRef]] = []
    for r in group:
        for off in range(0, r.length, MAX_READ):
            piece = Run(r.reader, r.dst + off, r.offset + off, min(MAX_READ, r.length - off))
            slot = t.slot()
            t.add(uapi.SYS_pread64, 0, piece.dst, piece.length, piece.offset, use_saved=1,
                  may_fail=True, store=slot, what=("read pages at {:#x}", piece.dst))
            pieces.append((piece, slot))
    t.add(uapi.SYS_close, 0, use_saved=1, may_fail=True, what="close the pages file")
    runner.run(t, runner.timeout + sum(r.length for r in group) / MIN_BYTES_PER_S)
    if _signed(runner.read_slot(opened)) < 0:
        return [_chunk(p) for p, _ in pieces]
    left = []
    for piece, slot in pieces:
        got = max(_signed(runner.read_slot(slot)), 0)
        if got < piece.length:
            # A short or failed read: the engine writes the remainder its own way.
            rest = Run(piece.reader, piece.dst + got, piece.offset + got, piece.length - got)
            left.append(_chunk(rest))
    return left


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v
