"""The mmap rows of a task's plain VMAs, made from its VMA table's columns.

A maps06-scale task has 30,000 VMAs, nearly all mappings of one file. Looked at one by one
in Python they cost a restore ~30 ms. Here each VMA gets its group through a dict of the
few distinct (kind, flags, deleted, path, prot, VmFlags) combinations the table holds,
VMAs of one group next to each other form a run, and a run's rows are slices of argument
columns made once for the whole table (array operations, in C).

A group is one rows entry of the layout table: the anonymous VMAs (fd -1), or the VMAs of
one file opened one way. A private mapping of a file takes the file's read-write open when
the file also has a shared writable mapping: the kernel gives a private mapping the same
flags whatever the open mode (VM_MAYWRITE comes with MAP_PRIVATE), and maps06's private and
shared VMAs of one file are then one run. Everything else (VMAs moved into place, kept
apart, of deleted files, of other kinds) is left to the caller, VMA by VMA.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from array import array
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from engine.images.records import Vma
from engine.images.vmatable import KIND_INDEX, VmaColumns
from engine.kernel import blob, uapi

#: mmap flags kept from the dumped ones
MAP_KEEP = uapi.MAP_SHARED | uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS | uapi.MAP_GROWSDOWN
#: how a file is opened for its private and read-only mappings
RDONLY = uapi.O_RDONLY | uapi.O_CLOEXEC
RDWR = uapi.O_RDWR | uapi.O_CLOEXEC
ANON_KINDS = ("anon", "heap", "stack")
_ANON = frozenset(KIND_INDEX[k] for k in ANON_KINDS)
_FILE = KIND_INDEX["file"]
_OTHER, _ANON_GROUP = 0, 1  # group ids; files from 2 on


def map_flags(v: Vma) -> int:
    """The mmap flags of one VMA: its dumped ones kept by MAP_KEEP, MAP_FIXED, and
    MAP_NORESERVE where its VmFlags say "nr" (Args.of: the same for a whole table)."""
    flags = (v.flags & MAP_KEEP) | uapi.MAP_FIXED
    return flags | uapi.MAP_NORESERVE if "nr" in v.vmflags else flags


def open_flags(flags: int, prot: int, may_write: bool) -> int:
    """How a file is opened for a mapping of it: read-write for a shared mapping that
    writes or may be made to (VmFlags "mw"), else read-only."""
    shared_write = flags & uapi.MAP_SHARED and (prot & uapi.PROT_WRITE or may_write)
    return RDWR if shared_write else RDONLY


@dataclass
class Groups:
    """The VMAs of a table by how they are mapped: runs (ranges of VMA indexes) per file
    open (path, open flags), in order of first use; runs of anonymous memory; the indexes
    of the others."""

    files: dict[tuple[str, int], list[range]] = field(default_factory=dict)
    anon: list[range] = field(default_factory=list)
    other: list[int] = field(default_factory=list)


def groups(cols: VmaColumns, apart: set[int]) -> Groups:
    """Group the VMAs of a table; those at the indexes `apart` are left to the caller."""
    combos, of_combo = _combos(cols)
    ids, names = _group_ids(set(of_combo.values()), cols.strings)
    keys = list(map({c: ids[of_combo[c]] for c in of_combo}.__getitem__, combos))
    for i in apart:
        keys[i] = _OTHER
    out = Groups()
    cuts = [0, *itertools.compress(range(1, len(keys)), map(operator.ne, keys, keys[1:])),
            len(keys)]
    for a, b in itertools.pairwise(cuts):
        key = keys[a]
        if key == _OTHER:
            out.other.extend(range(a, b))
        elif key == _ANON_GROUP:
            out.anon.append(range(a, b))
        else:
            out.files.setdefault(names[key], []).append(range(a, b))
    return out


Combo = tuple[int, int, int, int, int, int]
#: the MAP_SHARED bit of a dumped flags value's low byte (the one bit of flags that
#: decides a group: open_flags)
_SHARED = bytes(b & uapi.MAP_SHARED for b in range(256))


def _combos(cols: VmaColumns) -> tuple[Sequence[Hashable], dict[Hashable, Combo]]:
    """Each VMA's (kind, flags, deleted, path, prot, VmFlags) as one value, and the
    combination of each distinct value (flags as their MAP_SHARED bit). The values are
    u64s made of the columns' bytes (kind, deleted, prot, shared bit, then the string
    references' low two bytes) when the references fit there, tuples otherwise: 30,000
    tuples cost a maps06 restore ~5 ms."""
    if len(cols.strings) > 1 << 16:
        combos = list(zip(cols.kind, cols.flags, cols.deleted, cols.path, cols.prot,
                          cols.vmflags))
        return combos, {c: c for c in set(combos)}
    raw = bytearray(8 * len(cols.kind))
    raw[0::8], raw[1::8], raw[2::8] = (c.tobytes() for c in (cols.kind, cols.deleted,
                                                              cols.prot))
    raw[3::8] = cols.flags.tobytes()[0::4].translate(_SHARED)
    for at, col in ((4, cols.path), (6, cols.vmflags)):
        low = col.tobytes()
        raw[at::8], raw[at + 1::8] = low[0::4], low[1::4]
    packed = array("Q", raw)
    return packed, {k: (k & 0xFF, k >> 24 & 0xFF, k >> 8 & 0xFF, k >> 32 & 0xFFFF,
                        k >> 16 & 0xFF, k >> 48) for k in set(packed)}


def _group_ids(combos: set[Combo], strings: list[str | None]
               ) -> tuple[dict[Combo, int], dict[int, tuple[str, int]]]:
    """The group id of each distinct combination, and the (path, open flags) of each file
    group's id."""
    may_write = {ref for ref, text in enumerate(strings) if text and "mw" in text.split()}
    plain = {c for c in combos if c[0] == _FILE and not c[2]}
    rdwr = {ref for _, flags, _, ref, prot, vref in plain
            if open_flags(flags, prot, vref in may_write) == RDWR}
    ids: dict[Combo, int] = {}
    names: dict[int, tuple[str, int]] = {}
    by_name: dict[tuple[str, int], int] = {}
    for c in combos:
        kind, flags, _, ref, prot, vref = c
        if c in plain:
            oflags = (open_flags(flags, prot, vref in may_write) if flags & uapi.MAP_SHARED
                      else RDWR if ref in rdwr else RDONLY)
            name = (strings[ref] or "", oflags)
            ids[c] = by_name.setdefault(name, len(by_name) + 2)
            names[ids[c]] = name
        else:
            ids[c] = _ANON_GROUP if kind in _ANON else _OTHER
    return ids, names


def indexes(cols: VmaColumns, starts: set[int]) -> set[int]:
    """The indexes of the VMAs that start at these addresses."""
    out = set()
    for s in starts:
        i = bisect.bisect_left(cols.start, s)
        if i < len(cols.start) and cols.start[i] == s:
            out.add(i)
    return out


@dataclass(frozen=True)
class Args:
    """mmap arguments of every VMA of a table, a column each (signed 64-bit values, as
    the runner passes them): start, length, prot, flags (with MAP_FIXED, and
    MAP_NORESERVE for VmFlags "nr"), offset."""

    start: array[int]
    length: array[int]
    prot: array[int]
    flags: array[int]
    pgoff: array[int]

    @classmethod
    def of(cls, cols: VmaColumns) -> Args:
        """The arguments of the table's VMAs."""
        noreserve = {ref for ref, text in enumerate(cols.strings)
                     if text and "nr" in text.split()}
        return cls(array("q", cols.start.tobytes()),
                   array("q", map(operator.sub, cols.end, cols.start)),
                   _from_bytes(cols.prot.tobytes()), _map_flags(cols, noreserve),
                   array("q", cols.pgoff.tobytes()))


def _from_bytes(*low: bytes) -> array[int]:
    """Signed 64-bit values whose low bytes, lowest first, are one byte of each of `low`
    (the others zero), by strided byte copies."""
    out = bytearray(8 * len(low[0]))
    for k, part in enumerate(low):
        out[k::8] = part
    return array("q", out)


# The mmap flags of a dumped flags value are in its two low bytes: MAP_KEEP, MAP_FIXED and
# MAP_NORESERVE all are.
assert (MAP_KEEP | uapi.MAP_FIXED | uapi.MAP_NORESERVE) >> 16 == 0
_LOW = bytes((b & MAP_KEEP & 0xFF) | uapi.MAP_FIXED for b in range(256))
_HIGH = bytes(b & (MAP_KEEP >> 8) for b in range(256))


def _map_flags(cols: VmaColumns, noreserve: set[int]) -> array[int]:
    """map_flags of each VMA of a table (translated a byte at a time where no VmFlags
    say "nr")."""
    raw = cols.flags.tobytes()
    if noreserve.isdisjoint(cols.vmflags):
        return _from_bytes(raw[0::4].translate(_LOW), raw[1::4].translate(_HIGH))
    keep = {f: (f & MAP_KEEP) | uapi.MAP_FIXED for f in set(cols.flags)}
    return array("q", map(operator.or_, map(keep.__getitem__, cols.flags),
                          (uapi.MAP_NORESERVE if ref in noreserve else 0
                           for ref in cols.vmflags)))


def rows(args: Args, runs: list[range], fd: int) -> bytes:
    """The rows of the VMAs of these runs, in order: fd -1 for anonymous memory, else
    replaced by the table's saved value."""
    n = sum(map(len, runs))
    out = array("q", bytes(blob.ROW_SIZE * n))
    pos = 0
    for r in runs:
        lo, hi = 6 * pos, 6 * (pos + len(r))
        out[lo:hi:6] = args.start[r.start:r.stop]
        out[lo + 1:hi:6] = args.length[r.start:r.stop]
        out[lo + 2:hi:6] = args.prot[r.start:r.stop]
        out[lo + 3:hi:6] = args.flags[r.start:r.stop]
        out[lo + 5:hi:6] = args.pgoff[r.start:r.stop]
        pos += len(r)
    out[4::6] = array("q", [fd]) * n
    return out.tobytes()


def vma_of_row(runs: list[range], row: int) -> int:
    """The VMA index of a row of rows(runs) (for a failed row's message)."""
    for r in runs:
        if row < len(r):
            return r.start + row
        row -= len(r)
    raise IndexError(row)
