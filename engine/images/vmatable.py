"""vmas-PID.img: the VMAs of one process as packed binary columns (docs/IMAGES.md),
encoded and decoded in bulk.

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

import os
import struct
from array import array

from engine.images.records import VMA_KINDS, RecordError, Vma

MAGIC = b"PYEVMAS\0"
VERSION = 1
_HEADER = struct.Struct("<8sIIQII")
#: (array typecode, bytes) of each column, in file order
_COLUMNS = (("Q", 8),) * 4 + (("I", 4),) * 5 + (("B", 1),) * 3
_VMA_BYTES = sum(size for _, size in _COLUMNS)
_KIND_INDEX = {k: i for i, k in enumerate(VMA_KINDS)}
#: The most strings a table may hold (every VMA with its own path, dev, id and flags).
_MAX_STRINGS_PER_VMA = 4
# Column indexes.
_START, _END, _PGOFF, _INODE, _FLAGS, _PATH, _DEV, _SHMEM, _VMFLAGS, _PROT, _KIND, \
    _DELETED = range(12)


def encode(vmas: list[Vma]) -> bytes:
    """The file's bytes for these VMAs (in their order)."""
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
        [_KIND_INDEX[v.kind] for v in vmas], [int(v.deleted) for v in vmas])
    body = b"".join(array(code, col).tobytes() for (code, _), col in zip(_COLUMNS, cols))
    table = b"".join(os.fsencode(t) + b"\0" for t in strings if t is not None)
    return _HEADER.pack(MAGIC, VERSION, len(strings) - 1, len(vmas), len(table), 0) \
        + body + table


def _refs(values: list[str | None], strings: dict[str | None, int]) -> list[int]:
    """The references of a column's strings, new ones added to the table in order."""
    for text in dict.fromkeys(values):
        if text not in strings:
            strings[text] = len(strings)
    return [strings[t] for t in values]


def decode(raw: bytes) -> list[Vma]:
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
    if not count:
        return []
    cols = _columns(memoryview(raw)[_HEADER.size:body_end], count)
    _check_columns(cols, len(strings))
    return _records(cols, strings)


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


def _check_columns(cols: list[array[int]], nstrings: int) -> None:
    """What the arrays cannot say: references inside the string table, a known kind, a
    bool (one look per column; the VMA is found on error only)."""
    limits = ((_PATH, nstrings - 1, "string reference"),
              (_DEV, nstrings - 1, "string reference"),
              (_SHMEM, nstrings - 1, "string reference"),
              (_VMFLAGS, nstrings - 1, "string reference"),
              (_KIND, len(VMA_KINDS) - 1, "kind"), (_DELETED, 1, "deleted flag"))
    for col, limit, what in limits:
        if max(cols[col]) > limit:
            row = next(i for i, x in enumerate(cols[col]) if x > limit)
            raise RecordError(f"vma {row}: bad {what} {cols[col][row]}")


def _records(cols: list[array[int]], strings: list[str | None]) -> list[Vma]:
    """Vma records of checked columns, each validated, sorted and disjoint."""
    vmflags: dict[int, list[str]] = {0: []}
    for i in set(cols[_VMFLAGS]) - {0}:
        vmflags[i] = str(strings[i]).split()
    vmas: list[Vma] = list(map(
        Vma, cols[_START], cols[_END], cols[_PROT], cols[_FLAGS], cols[_PGOFF],
        [VMA_KINDS[k] for k in cols[_KIND]], [strings[i] for i in cols[_PATH]],
        [strings[i] for i in cols[_DEV]], cols[_INODE], [d == 1 for d in cols[_DELETED]],
        [strings[i] for i in cols[_SHMEM]], [vmflags[i] for i in cols[_VMFLAGS]]))
    for i, v in enumerate(vmas):
        try:
            v.validate()
        except RecordError as e:
            raise RecordError(f"vma {i}: {e}") from None
    ends = cols[_END]
    if any(e > s for e, s in zip(ends, cols[_START][1:])):
        row = next(i for i, (e, s) in enumerate(zip(ends, cols[_START][1:])) if e > s) + 1
        raise RecordError(f"vma {row} at {vmas[row].start:#x} overlaps or is out of order")
    return vmas
