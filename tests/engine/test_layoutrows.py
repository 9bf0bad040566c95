"""The layout's mmap rows made from VMA table columns: every VMA in exactly one group, each
file group opened the way its mappings need, and rows with the arguments a VMA-by-VMA
reading of the records gives."""

from __future__ import annotations

import random
import struct

import pytest

from engine.images import vmatable
from engine.images.records import PAGE_SIZE, Vma
from engine.kernel import uapi
from engine.restore import layoutrows

PG = PAGE_SIZE
_PATHS = ("/lib/a.so", "/data/f", "/bin/x")
_FLAGS = (["rd", "mr", "mw", "me"], ["rd", "wr", "mr", "mw", "me", "ac"], ["rd", "mr", "me"],
          ["rd", "wr", "nr"], [])


def _vma(pos: int, rnd: random.Random) -> Vma:
    size = rnd.randint(1, 3) * PG
    kind = rnd.choice(("file", "file", "file", "anon", "heap", "stack", "shmem"))
    shared = kind == "shmem" or (kind == "file" and rnd.random() < 0.4)
    flags = (uapi.MAP_SHARED if shared else uapi.MAP_PRIVATE) | (
        uapi.MAP_ANONYMOUS if kind in ("anon", "heap", "stack") else 0) | (
        uapi.MAP_GROWSDOWN if kind == "stack" and rnd.random() < 0.5 else 0) | 0x40000
    return Vma(pos, pos + size, rnd.randint(0, 7), flags, rnd.randint(0, 9) * PG, kind,
               path=rnd.choice(_PATHS) if kind == "file" else None,
               deleted=kind == "file" and rnd.random() < 0.05,
               shmem_id="shmem-1" if kind == "shmem" else None, vmflags=rnd.choice(_FLAGS))


def _table(rnd: random.Random) -> list[Vma]:
    out, pos = [], 0x100000
    for _ in range(rnd.randint(1, 60)):
        out.append(_vma(pos, rnd))
        pos = out[-1].end + rnd.choice((0, PG))
        if rnd.random() < 0.3:  # a run of one mapping's alike neighbours (maps06)
            for _ in range(rnd.randint(1, 5)):
                v = out[-1]
                out.append(Vma(pos, pos + PG, v.prot, v.flags, v.pgoff, v.kind, v.path,
                               deleted=v.deleted, shmem_id=v.shmem_id, vmflags=v.vmflags))
                pos += PG
    return out


def _shared_write(v: Vma) -> bool:
    return bool(v.flags & uapi.MAP_SHARED and (v.prot & uapi.PROT_WRITE or "mw" in v.vmflags))


def _expected_open(v: Vma, vmas: list[Vma]) -> int:
    """How the file of a plain file VMA must be opened, worked out from the records."""
    if _shared_write(v):
        return layoutrows.RDWR
    if v.flags & uapi.MAP_SHARED:
        return layoutrows.RDONLY  # a read-only shared mapping never gets a writable file
    # a private mapping: the kernel ignores the open mode; it shares the writable open
    others = [w for w in vmas if w.kind == "file" and not w.deleted and w.path == v.path]
    return layoutrows.RDWR if any(map(_shared_write, others)) else layoutrows.RDONLY


def _row(v: Vma, fd: int) -> tuple[int, ...]:
    flags = (v.flags & layoutrows.MAP_KEEP) | uapi.MAP_FIXED | (
        uapi.MAP_NORESERVE if "nr" in v.vmflags else 0)
    return (v.start, v.end - v.start, v.prot, flags, fd, v.pgoff)


@pytest.mark.parametrize("seed", range(200))
def test_groups_and_rows_agree_with_the_records(seed: int) -> None:
    """Each VMA is in one group: plain file VMAs in the group of their path and the open
    they need, anonymous ones with the anonymous runs, the VMAs set apart and every other
    kind one by one; the rows of a group are its VMAs' mmap arguments, in order."""
    rnd = random.Random(seed)
    vmas = _table(rnd)
    cols = vmatable.decode(vmatable.encode(vmas)).columns
    apart = {i for i in range(len(vmas)) if rnd.random() < 0.1}
    g = layoutrows.groups(cols, apart)
    args = layoutrows.Args.of(cols)
    placed = list(g.other) + [i for r in g.anon for i in r] + [
        i for runs in g.files.values() for r in runs for i in r]
    assert sorted(placed) == list(range(len(vmas)))
    for (path, oflags), runs in g.files.items():
        for i in (i for r in runs for i in r):
            v = vmas[i]
            assert i not in apart and v.kind == "file" and not v.deleted
            assert (v.path, _expected_open(v, vmas)) == (path, oflags)
        assert _rows(args, runs, 0) == [_row(vmas[i], 0) for r in runs for i in r]
    for i in (i for r in g.anon for i in r):
        assert i not in apart and vmas[i].kind in layoutrows.ANON_KINDS
    assert _rows(args, g.anon, -1) == [_row(vmas[i], -1) for r in g.anon for i in r]
    for i in g.other:
        v = vmas[i]
        assert i in apart or v.deleted or v.kind not in ("file", *layoutrows.ANON_KINDS)


@pytest.mark.parametrize("seed", range(50))
def test_groups_alike_with_a_string_table_too_large_to_pack(seed: int) -> None:
    """A table of more than 65,536 strings (references too wide for the packed keys)
    groups its VMAs exactly as the same table with only the strings it uses."""
    rnd = random.Random(seed)
    cols = vmatable.decode(vmatable.encode(_table(rnd))).columns
    apart = {i for i in range(len(cols.start)) if rnd.random() < 0.1}
    packed = layoutrows.groups(cols, apart)
    cols.strings.extend([None] * (1 << 16))
    assert layoutrows.groups(cols, apart) == packed


def _rows(args: layoutrows.Args, runs: list[range], fd: int) -> list[tuple[int, ...]]:
    raw = layoutrows.rows(args, runs, fd)
    return list(struct.iter_unpack("<6q", raw))


def test_alike_neighbours_are_one_run() -> None:
    """maps06's pattern (two private mappings and a shared writable one of the same file,
    over and over) is one run of one group, opened read-write."""
    vmas = [Vma(0x100000 + i * PG, 0x101000 + i * PG, 3,
                uapi.MAP_SHARED if i % 3 == 2 else uapi.MAP_PRIVATE, (i % 16) * PG, "file",
                path="/tmp/maps.file") for i in range(3000)]
    g = layoutrows.groups(vmatable.decode(vmatable.encode(vmas)).columns, set())
    assert g.files == {("/tmp/maps.file", layoutrows.RDWR): [range(3000)]}
    assert not g.anon and not g.other


def test_vma_of_row_follows_the_runs() -> None:
    """A failed row is named by its VMA."""
    runs = [range(3, 5), range(9, 10), range(12, 15)]
    assert [layoutrows.vma_of_row(runs, r) for r in range(6)] == [3, 4, 9, 12, 13, 14]
    with pytest.raises(IndexError):
        layoutrows.vma_of_row(runs, 6)


def test_indexes_of_starts() -> None:
    """VMA starts map to their indexes; an address no VMA starts at to none."""
    vmas = [Vma(a, a + PG, 3, 0x22, 0, "anon") for a in (0x1000, 0x3000, 0x9000)]
    cols = vmatable.decode(vmatable.encode(vmas)).columns
    assert layoutrows.indexes(cols, {0x3000, 0x9000, 0x4000, 0x10000}) == {1, 2}
