"""The VMA table's column-wise checks refuse exactly what checking each record would, and
its records are made only when asked for."""

from __future__ import annotations

import random
from array import array

import pytest

from engine.images import vmatable
from engine.images.records import PAGE_SIZE, USER_ADDR_LIMIT, VMA_KINDS, RecordError, Vma

PG = PAGE_SIZE


def _table(n: int, rnd: random.Random) -> list[Vma]:
    """n valid VMAs of every restorable kind, sorted and disjoint, the vsyscall page last."""
    out, pos = [], 0x10000
    for i in range(n):
        size = rnd.randint(1, 4) * PG
        kind = rnd.choice(("anon", "file", "file", "shmem", "heap", "stack"))
        out.append(Vma(pos, pos + size, rnd.randint(0, 7), 0x21 if kind == "shmem" else 0x22,
                       rnd.randint(0, 8) * PG if kind != "anon" else 0, kind,
                       path=f"/lib/f{i % 3}" if kind == "file" else None,
                       shmem_id="shmem-1" if kind == "shmem" else None,
                       vmflags=rnd.choice([[], ["rd", "mr"], ["rd", "wr", "nr"]])))
        pos += size + rnd.choice((0, PG))
    out.append(Vma(0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000, 4, 0x22, 0, "vsyscall"))
    return out


def _reference(vmas: list[Vma]) -> str | None:
    """The error of checking each record, then the order, as records; None: accepted."""
    for i, v in enumerate(vmas):
        try:
            v.validate()
        except RecordError as e:
            return f"vma {i}: {e}"
    for i in range(1, len(vmas)):
        if vmas[i - 1].end > vmas[i].start:
            return f"vma {i} at {vmas[i].start:#x} overlaps or is out of order"
    return None


_FIELDS = ("start", "end", "pgoff", "prot", "path", "shmem_id", "kind", "flags")


def _spoil(vmas: list[Vma], rnd: random.Random) -> None:
    """One field of one VMA set to a value some check may refuse."""
    v = rnd.choice(vmas)
    field = rnd.choice(_FIELDS)
    value = {
        "start": rnd.choice((v.start + 1, v.end, 0, v.start - 5 * PG, USER_ADDR_LIMIT)),
        "end": rnd.choice((v.end - 1, v.start, v.end + 9 * PG, 1 << 60, USER_ADDR_LIMIT)),
        "pgoff": rnd.choice((3, PG + 1, 1 << 63)),
        "prot": rnd.choice((8, 255)),
        "path": rnd.choice((None, "", "/x")),
        "shmem_id": rnd.choice((None, "shmem-1")),
        "kind": rnd.choice(VMA_KINDS),
        "flags": rnd.choice((0x21, 0x22, 0x01)),
    }[field]
    setattr(v, field, value)


@pytest.mark.parametrize("seed", range(300))
def test_column_checks_refuse_what_record_checks_refuse(seed: int) -> None:
    """A table with one spoilt field (or none) is refused by decode with the very error
    of checking each record (Vma.validate, then the order), or accepted by both."""
    rnd = random.Random(seed)
    vmas = _table(rnd.randint(1, 40), rnd)
    if seed % 10:
        for _ in range(rnd.randint(1, 2)):
            _spoil(vmas, rnd)
    want = _reference(vmas)
    raw = vmatable.encode(vmas)
    if want is None:
        assert list(vmatable.decode(raw)) == vmas
    else:
        with pytest.raises(RecordError) as e:
            vmatable.decode(raw)
        assert str(e.value) == want


def test_records_are_made_when_asked_for() -> None:
    """decode makes no record of a plain VMA; indexing makes one, iterating all of them,
    each equal to the VMA encoded (a VmFlags list shared by the VMAs that have it)."""
    vmas = _table(50, random.Random(1))
    table = vmatable.decode(vmatable.encode(vmas))
    made = [i for i, v in enumerate(table._made) if v is not None]
    assert made == [len(vmas) - 1]  # the vsyscall page: beyond user space, so checked
    assert table[3] == vmas[3] and table[3] is table[3]
    assert table[-2] == vmas[-2]
    assert table[1:4] == vmas[1:4]
    assert list(table) == vmas and table == vmas
    flagged = [v for v in table if v.vmflags == ["rd", "mr"]]
    assert len(flagged) > 1 and all(v.vmflags is flagged[0].vmflags for v in flagged)


def test_of_kinds_finds_few_and_many() -> None:
    """of_kinds gives the indexes of the VMAs of the kinds asked, in order."""
    vmas = _table(300, random.Random(2))
    cols = vmatable.decode(vmatable.encode(vmas)).columns
    for kinds in (("vsyscall",), ("file",), ("anon", "heap", "stack"), ("sysv",)):
        assert cols.of_kinds(*kinds) == [i for i, v in enumerate(vmas) if v.kind in kinds]


@pytest.mark.parametrize("values, aligned", [
    ([0, PG, 5 * PG, (1 << 63) + PG], True),
    ([0, PG, 5 * PG + 1], False),
    ([0x800], False),
    ([PG - 1], False),
    ([1 << 12 | 1 << 11], False),
    ([], True),
])
def test_page_aligned(values: list[int], aligned: bool) -> None:
    """The bytes-wise alignment test agrees with the arithmetic one."""
    assert vmatable._page_aligned(array("Q", values)) is aligned


@pytest.mark.parametrize("seed", range(50))
def test_cow_ranges_of_a_table_are_its_records(seed: int) -> None:
    """load.cow_ranges of a decoded table (from its columns) is what the records give:
    private anonymous and file mappings (a shared one among them is left out)."""
    from engine.images.load import cow_ranges

    rnd = random.Random(seed)
    vmas = _table(rnd.randint(1, 60), rnd)
    for v in rnd.sample(vmas, min(3, len(vmas))):
        if v.kind in ("file", "anon"):
            v.flags = 0x01  # MAP_SHARED
    table = vmatable.decode(vmatable.encode(vmas))
    assert cow_ranges(table) == cow_ranges(list(table)) == cow_ranges(vmas)
    assert cow_ranges(vmas) == [(v.start, v.end) for v in vmas
                                if v.kind in ("anon", "heap", "stack", "file")
                                and not v.flags & 0x01]
