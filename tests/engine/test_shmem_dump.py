"""A shared memory object's pages as the dump writes them (engine/dump/shmem.py): from a
mapping of the object, or with pread where it cannot be mapped; holes stay holes, a last
page past the end of the file reads as zeros, and both ways give the same image."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.dump import shmem
from engine.dump.pages import Staging
from engine.images.imgdir import ImageDir
from engine.kernel import sys as ksys

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
    with Staging(1 << 20) as staging:
        entry = shmem.dump_object(img, "s1", src, staging)
    img.checksum_written()
    pm = img.read_pagemap(entry.pagemap)
    pages = (tmp / entry.pages).read_bytes()
    out, pos = {}, 0
    for e in pm.entries:
        for i in range(e.nr_pages):
            out[e.addr + i * PAGE] = pages[pos:pos + PAGE]
            pos += PAGE
    return out


@pytest.mark.parametrize("size", [8 * PAGE, 5 * PAGE + 100])
def test_mapped_and_read_give_the_same_pages(tmp_path: Path, size: int,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    last = min(PAGE, size - 5 * PAGE)  # the whole page 5, or the 100 bytes the file has
    data = {0: b"a" * PAGE, 3 * PAGE: b"b" * 10, 5 * PAGE: b"c" * last}
    fd = _object(size, data)
    try:
        mapped = _dump(tmp_path / "mapped", fd, size)
        # pages 1, 2, 4 and 6 on were never written: holes, not stored
        assert sorted(mapped) == [0, 3 * PAGE, 5 * PAGE]
        assert mapped[3 * PAGE] == b"b" * 10 + bytes(PAGE - 10)
        assert mapped[5 * PAGE] == (b"c" * last).ljust(PAGE, b"\0")
        if size % PAGE:
            return  # pread stops at the end of the file: only a mapping reads that page
        real_mmap = ksys.mmap

        def refuse_shared(addr: int, length: int, prot: int, flags: int, fd: int = -1,
                          offset: int = 0) -> int:
            if fd >= 0:
                raise OSError(22, "Invalid argument")  # as hugetlbfs for a small length
            return real_mmap(addr, length, prot, flags, fd, offset)
        monkeypatch.setattr(shmem.ksys, "mmap", refuse_shared)
        assert _dump(tmp_path / "read", fd, size) == mapped
    finally:
        os.close(fd)
