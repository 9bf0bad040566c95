"""The VMAs of one process as packed binary columns (docs/IMAGES.md), encoded and decoded
in bulk; in mm-PID.img after the mm record's JSON line.

A maps06-sized process has 30,000 VMAs. As JSON rows (format version 4) they took about
0.1 s to parse and as much again to type-check and turn into records one by one; here
each field is one array of fixed-size values read in C (array.frombytes), checked a
column at a time, and the strings the VMAs share (paths, devices, VmFlags) are stored
once, in a table after the columns.

    header   magic "PYEVMAS\\0", u32 version, u32 strings, u64 VMAs,
             u32 string table bytes, u32 reserved (0)
    columns  one array per field, VMA after VMA, in this order: u64 start, end, pgoff,
             inode; u32 flags, path, dev, shmem_id, vmflags; u8 prot, kind (index in
             VMA_KINDS), deleted (0/1)
    strings  NUL-terminated, as os.fsencode gives them; string i is referred to as i + 1
             (0: none; for vmflags the empty list), vmflags as space-separated mnemonics

Little endian, as the arrays of this (x86_64) engine are.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import os
import struct
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

from engine.images.records import PAGE_SIZE, USER_ADDR_LIMIT, VMA_KINDS, RecordError, Vma

MAGIC = b"PYEVMAS\0"
VERSION = 1
_HEADER = struct.Struct("<8sIIQII")
#: (array typecode, bytes) of each column, in file order
_COLUMNS = (("Q", 8),) * 4 + (("I", 4),) * 5 + (("B", 1),) * 3
_VMA_BYTES = sum(size for _, size in _COLUMNS)
#: kind name -> its index in VMA_KINDS (the kind column)
KIND_INDEX = {k: i for i, k in enumerate(VMA_KINDS)}
_FEW = 64  # of_kinds: up to this many hits, one find() each
#: The most strings a table may hold (every VMA with its own path, dev, id and flags).
_MAX_STRINGS_PER_VMA = 4
# The columns' names (VmaColumns), in file order.
_NAMES = ("start", "end", "pgoff", "inode", "flags", "path", "dev", "shmem", "vmflags",
          "prot", "kind", "deleted")


@dataclass(frozen=True)
class VmaColumns:
    """The VMAs of a table a field at a time (the file's columns): for bulk work on tens
    of thousands of VMAs without a look at each record. Strings are references into
    `strings` (0: none; for vmflags the empty list); `kind` indexes VMA_KINDS."""

    start: array[int]
    end: array[int]
    pgoff: array[int]
    inode: array[int]
    flags: array[int]
    path: array[int]
    dev: array[int]
    shmem: array[int]
    vmflags: array[int]
    prot: array[int]
    kind: array[int]
    deleted: array[int]
    strings: list[str | None]

    @classmethod
    def of(cls, arrays: list[array[int]], strings: list[str | None]) -> VmaColumns:
        """The columns from their arrays in file order."""
        start, end, pgoff, inode, flags, path, dev, shmem, vmflags, prot, kind, deleted \
            = arrays
        return cls(start, end, pgoff, inode, flags, path, dev, shmem, vmflags, prot, kind,
                   deleted, strings)

    def arrays(self) -> list[array[int]]:
        """The columns in file order."""
        return [getattr(self, name) for name in _NAMES]

    def of_kinds(self, *kinds: str) -> list[int]:
        """Indexes, in order, of the VMAs of these kinds (a few among tens of thousands
        found by memchr, many by a pass in C)."""
        raw = self.kind.tobytes()
        wanted = bytes(KIND_INDEX[k] for k in kinds)
        if sum(raw.count(k) for k in wanted) > _FEW:
            return list(itertools.compress(range(len(raw)), map(wanted.__contains__, raw)))
        out = []
        for k in wanted:
            i = raw.find(k)
            while i >= 0:
                out.append(i)
                i = raw.find(k, i + 1)
        return sorted(out)


class VmaTable(Sequence[Vma]):
    """The VMAs of a decoded table: its columns (`columns`), checked as a whole, and a
    Vma record made only when one is asked for (a restore of maps06's 30,000 VMAs works
    on the columns and looks at a few records)."""

    def __init__(self, cols: VmaColumns) -> None:
        self.columns = cols
        self._made: list[Vma | None] = [None] * len(cols.start)
        self._all = False
        self._vmflags: dict[int, list[str]] = {0: []}  # one list per VmFlags string

    def __len__(self) -> int:
        return len(self._made)

    @overload
    def __getitem__(self, i: int) -> Vma: ...

    @overload
    def __getitem__(self, i: slice) -> list[Vma]: ...

    def __getitem__(self, i: int | slice) -> Vma | list[Vma]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        v = self._made[i]
        if v is None:
            v = self._made[i] = self._record(i)
        return v

    def __iter__(self) -> Iterator[Vma]:
        if not self._all:
            self._make_all()
        return iter(self._made)  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def _flags(self, ref: int) -> list[str]:
        got = self._vmflags.get(ref)
        if got is None:
            got = self._vmflags[ref] = str(self.columns.strings[ref]).split()
        return got

    def _record(self, i: int) -> Vma:
        c, strings = self.columns, self.columns.strings
        return Vma(c.start[i], c.end[i], c.prot[i], c.flags[i], c.pgoff[i],
                   VMA_KINDS[c.kind[i]], strings[c.path[i]], strings[c.dev[i]],
                   c.inode[i], c.deleted[i] == 1, strings[c.shmem[i]],
                   self._flags(c.vmflags[i]))

    def _make_all(self) -> None:
        """Every record, in bulk (the map in C), keeping those made already."""
        c, strings = self.columns, self.columns.strings
        made = map(Vma, c.start, c.end, c.prot, c.flags, c.pgoff,
                   [VMA_KINDS[k] for k in c.kind], [strings[i] for i in c.path],
                   [strings[i] for i in c.dev], c.inode, [d == 1 for d in c.deleted],
                   [strings[i] for i in c.shmem], [self._flags(i) for i in c.vmflags])
        self._made = [old or new for old, new in zip(self._made, made)]
        self._all = True


def columns_of(vmas: Sequence[Vma]) -> VmaColumns:
    """The columns of these VMAs: a decoded table's own, else made from the records."""
    if isinstance(vmas, VmaTable):
        return vmas.columns
    strings: dict[str | None, int] = {None: 0}  # each string's reference, in table order
    # VmFlags lists are shared between records with the same flags: one join per list.
    flag_lists = {id(v.vmflags): v.vmflags for v in vmas}
    flag_text = {k: " ".join(f) if f else None for k, f in flag_lists.items()}
    cols = (
        [v.start for v in vmas], [v.end for v in vmas], [v.pgoff for v in vmas],
        [v.inode for v in vmas], [v.flags for v in vmas],
        _refs([v.path for v in vmas], strings), _refs([v.dev for v in vmas], strings),
        _refs([v.shmem_id for v in vmas], strings),
        _refs([flag_text[id(v.vmflags)] for v in vmas], strings), [v.prot for v in vmas],
        [KIND_INDEX[v.kind] for v in vmas], [int(v.deleted) for v in vmas])
    return VmaColumns.of([array(code, col) for (code, _), col in zip(_COLUMNS, cols)],
                         list(strings))


def encode(vmas: Sequence[Vma]) -> bytes:
    """The file's bytes for these VMAs (in their order)."""
    cols = columns_of(vmas)
    body = b"".join(col.tobytes() for col in cols.arrays())
    table = b"".join(os.fsencode(t or "") + b"\0" for t in cols.strings[1:])
    return _HEADER.pack(MAGIC, VERSION, len(cols.strings) - 1, len(vmas), len(table), 0) \
        + body + table


def _refs(values: list[str | None], strings: dict[str | None, int]) -> list[int]:
    """The references of a column's strings, new ones added to the table in order."""
    for text in dict.fromkeys(values):
        if text not in strings:
            strings[text] = len(strings)
    return [strings[t] for t in values]


def decode(raw: bytes) -> VmaTable:
    """The VMAs of a file's bytes, each checked (types, ranges, references, order);
    RecordError says what is wrong (naming the VMA by its index)."""
    if len(raw) < _HEADER.size:
        raise RecordError("truncated header")
    magic, version, nstrings, count, table_size, reserved = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise RecordError("bad magic (not a VMA table)")
    if version != VERSION or reserved:
        raise RecordError(f"unsupported VMA table version {version}/{reserved}")
    body_end = _HEADER.size + count * _VMA_BYTES
    if len(raw) != body_end + table_size or nstrings > count * _MAX_STRINGS_PER_VMA:
        raise RecordError(f"size {len(raw)} does not match {count} VMAs and a string "
                          f"table of {table_size} bytes")
    strings = _strings(raw[body_end:], nstrings)
    cols = VmaColumns.of(_columns(memoryview(raw)[_HEADER.size:body_end], count), strings)
    if count:
        _check_columns(cols, len(strings))
    table = VmaTable(cols)
    _validate(table)
    return table


def _strings(table: bytes, nstrings: int) -> list[str | None]:
    parts = table.split(b"\0")
    if len(parts) != nstrings + 1 or parts[-1]:
        raise RecordError(f"string table does not hold {nstrings} NUL-terminated strings")
    return [None] + [os.fsdecode(p) for p in parts[:-1]]


def _columns(body: memoryview, count: int) -> list[array[int]]:
    cols = []
    pos = 0
    for code, size in _COLUMNS:
        col = array(code)
        col.frombytes(body[pos:pos + count * size])
        cols.append(col)
        pos += count * size
    return cols


def _check_columns(cols: VmaColumns, nstrings: int) -> None:
    """What the arrays cannot say: references inside the string table, a known kind, a
    bool (one look per column; the VMA is found on error only)."""
    limits = ((cols.path, nstrings - 1, "string reference"),
              (cols.dev, nstrings - 1, "string reference"),
              (cols.shmem, nstrings - 1, "string reference"),
              (cols.vmflags, nstrings - 1, "string reference"),
              (cols.kind, len(VMA_KINDS) - 1, "kind"), (cols.deleted, 1, "deleted flag"))
    for col, limit, what in limits:
        if max(col) > limit:
            row = next(i for i, x in enumerate(col) if x > limit)
            raise RecordError(f"vma {row}: bad {what} {col[row]}")


def _validate(table: VmaTable) -> None:
    """Every VMA as Vma.validate() checks it, sorted and disjoint. Column-wise tests find
    the VMAs validate() might refuse (all of them, perhaps some more); only their records
    are made and validated."""
    cols = table.columns
    starts, ends = cols.start, cols.end
    ordered = not any(map(operator.gt, ends, starts[1:]))
    for i in _suspects(cols, ordered):
        try:
            table[i].validate()
        except RecordError as e:
            raise RecordError(f"vma {i}: {e}") from None
    if not ordered:
        row = next(i for i, (e, s) in enumerate(zip(ends, starts[1:])) if e > s) + 1
        raise RecordError(f"vma {row} at {starts[row]:#x} overlaps or is out of order")


def _suspects(cols: VmaColumns, ordered: bool) -> list[int]:
    """Indexes, in order, of every VMA that Vma.validate() may refuse: a field it checks
    out of range, or a kind whose references it checks (the kind column is known good).
    `ordered`: the VMAs are sorted and disjoint (so are their ends)."""
    starts, ends, kinds = cols.start, cols.end, cols.kind
    n = len(starts)
    found: set[int] = set()
    if not all(map(_page_aligned, (starts, ends, cols.pgoff))) \
            or not all(map(operator.lt, starts, ends)) or max(cols.prot, default=0) > 7:
        found.update(i for i in range(n) if (starts[i] | ends[i] | cols.pgoff[i])
                     & (PAGE_SIZE - 1) or starts[i] >= ends[i] or cols.prot[i] > 7)
    # beyond user space (the vsyscall page, in every image, is checked too)
    found.update(range(bisect.bisect_right(ends, USER_ADDR_LIMIT), n) if ordered else
                 itertools.compress(range(n), map(USER_ADDR_LIMIT.__lt__, ends)))
    # a file without a path, a shmem without an id, any SysV attach
    no_path = {ref for ref, text in enumerate(cols.strings) if not text}
    checks = ((KIND_INDEX["file"], cols.path, no_path), (KIND_INDEX["shmem"], cols.shmem, {0}))
    for kind, col, bad in checks:
        if kind in kinds and not bad.isdisjoint(
                itertools.compress(col, map(kind.__eq__, kinds))):
            found.update(i for i in range(n) if kinds[i] == kind and col[i] in bad)
    found.update(cols.of_kinds("sysv"))
    return sorted(found)


_LOW_NIBBLE = bytes(b & 0x0F for b in range(256))


def _page_aligned(col: array[int]) -> bool:
    """Whether every u64 of the column is a multiple of 4096: the low 12 bits of each
    are its first byte and a half (little endian), looked at with bytes operations."""
    raw = col.tobytes()
    low = raw[0::8] + raw[1::8].translate(_LOW_NIBBLE)
    return low.count(0) == len(low)
