"""A shared memory object's pages as the dump writes them (engine/dump/shmem.py): data
extents read with pread (a mapping could fault with SIGBUS if another process truncated
the object meanwhile), holes not stored, a last page past the end of the file as zeros."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.dump import pages, shmem
from engine.dump.pages import Staging
from engine.images.imgdir import ImageDir

PAGE = 4096


def _object(size: int, data: dict[int, bytes]) -> int:
    fd = os.memfd_create("shmem-dump-test")
    os.ftruncate(fd, size)
    for off, chunk in data.items():
        os.pwrite(fd, chunk, off)
    return fd


def _dump(tmp: Path, fd: int, extent: int) -> dict[int, bytes]:
    """Dump the object behind fd; its stored pages by object offset, read back."""
    img = ImageDir.create(str(tmp))
    src = shmem.ShmemSource(os.getpid(), None, fd, extent, "memfd", "shmem-dump-test")
    with Staging(pages.SHMEM_STAGING) as staging:
        entry, stored = shmem.dump_object(img, "s1", src, staging)
    img.checksum_written()
    pm = img.read_pagemap(entry.pagemap)
    assert stored == pm.pages_stored  # the count the dump's stats take
    raw = (tmp / entry.pages).read_bytes()
    out, pos = {}, 0
    for e in pm.entries:
        for i in range(e.nr_pages):
            out[e.addr + i * PAGE] = raw[pos:pos + PAGE]
            pos += PAGE
    return out


@pytest.mark.parametrize("size", [800 * PAGE, 5 * PAGE + 100])
def test_data_extents_are_stored_holes_are_not(tmp_path: Path, size: int) -> None:
    last = min(PAGE, size - 5 * PAGE)  # the whole page 5, or the 100 bytes the file has
    data = {0: b"a" * PAGE, 3 * PAGE: b"b" * 10, 5 * PAGE: b"c" * last}
    if size > 700 * PAGE:  # more than a staging slot (SHMEM_STAGING) in one extent
        data[100 * PAGE] = bytes(range(256)) * (600 * PAGE // 256)
    fd = _object(size, data)
    try:
        got = _dump(tmp_path / "img", fd, size)
    finally:
        os.close(fd)
    want = {0: b"a" * PAGE, 3 * PAGE: b"b" * 10 + bytes(PAGE - 10),
            5 * PAGE: (b"c" * last).ljust(PAGE, b"\0")}
    for off in range(100 * PAGE, 700 * PAGE, PAGE) if size > 700 * PAGE else ():
        want[off] = data[100 * PAGE][off - 100 * PAGE:off - 99 * PAGE]
    assert got == want


def test_a_slot_fits_the_largest_task_private_memory_and_shared_objects_get_a_small_one(
) -> None:
    mib = 1 << 20
    assert pages.staging_size(pages.Resident(0, 0, 0)) == pages.MIN_STAGING
    assert pages.staging_size(pages.Resident(3 * mib + 1, 0, 3 * mib + 1)) == 4 * mib
    assert pages.staging_size(pages.Resident(1 << 30, 0, 1 << 30)) == pages.STAGING_BYTES
    assert pages.staging_size(pages.Resident(mib // 2, 128 * mib, 0)) == pages.SHMEM_STAGING
    assert pages.staging_size(pages.Resident(64 * mib, 128 * mib, 64 * mib)) \
        == pages.STAGING_BYTES
    # 50 tasks of 256 KiB: one task's pages at a time, not the tree's 12.5 MiB
    assert pages.staging_size(pages.Resident(50 * mib // 4, 0, mib // 4)) == pages.MIN_STAGING


def test_the_largest_task_is_counted_apart_from_the_tree() -> None:
    """resident_bytes of this process (a tree of one): its own RssAnon both ways."""
    got = pages.resident_bytes(os.getpid(), 1 << 40)
    assert got.largest_anon == got.anon > 0
