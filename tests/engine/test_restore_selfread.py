"""Pages read by the restored task itself (engine/restore/selfread.py), on a throwaway child."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.images import ImageError, PagesReader
from engine.kernel import blob, pagecrc, uapi
from engine.kernel.pagecrc import PageSums
from engine.restore import selfread
from engine.restore.pages import Chunk
from tests.engine.blob_support import REGION

PG = 4096
MIB = 1 << 20
DEST = REGION + (1 << 30)  # where the child's "restored" memory goes


def _pages_file(path: Path, pages: int, damaged: int | None = None,
                cached: bool = False) -> PagesReader:
    """A pages file whose page i is filled with byte (i % 251) + 1, and its checksums;
    with `damaged`, that byte of the file is changed after they were computed. Not in
    the page cache (as a large dump's, written with O_DIRECT) unless `cached`."""
    data = bytearray(b"".join(bytes([i % 251 + 1]) * PG for i in range(pages)))
    algo = pagecrc.write_algo()
    sums = PageSums(algo, pagecrc.sums_of(algo, data))
    if damaged is not None:
        data[damaged] ^= 0x40
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    if not cached:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return PagesReader(str(path), fd, sums)


def _chunk(reader: PagesReader, dst: int, offset: int, length: int) -> Chunk:
    return Chunk(dst, reader.address + offset, length, reader, offset)


def _map_dest(r: blob.BlobRunner, size: int) -> None:
    t = blob.Table()
    t.add(uapi.SYS_mmap, DEST, size, uapi.PROT_READ | uapi.PROT_WRITE,
          uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS | uapi.MAP_FIXED_NOREPLACE, -1, 0,
          what="map the destination")
    r.run(t)


def test_runs_merges_contiguous_chunks_and_leaves_short_ones(tmp_path: Path) -> None:
    reader = _pages_file(tmp_path / "pages.img", 1024)
    try:
        chunks = [_chunk(reader, DEST, 0, MIB // 2),  # these two are one run of 1 MiB
                  _chunk(reader, DEST + MIB // 2, MIB // 2, MIB // 2),
                  _chunk(reader, DEST + 4 * MIB, MIB, MIB // 4),  # too short
                  _chunk(reader, DEST + 8 * MIB, 2 * MIB, MIB),  # file-contiguous, not in task
                  Chunk(DEST + 16 * MIB, 0x1000, 2 * MIB)]  # from no file
        long_runs, rest = selfread.runs(chunks)
        assert [(r.dst, r.offset, r.length) for r in long_runs] == [
            (DEST, 0, MIB), (DEST + 8 * MIB, 2 * MIB, MIB)]
        assert sorted((c.dst, c.length) for c in rest) == [(DEST + 4 * MIB, MIB // 4),
                                                          (DEST + 16 * MIB, 2 * MIB)]
    finally:
        reader.close()


def test_a_cached_file_is_left_to_the_engine(tmp_path: Path) -> None:
    """The task reading its runs saves a copy only from the disk (O_DIRECT): pages
    already in the page cache are copied by the engine from the file's mapping."""
    reader = _pages_file(tmp_path / "pages.img", 512, cached=True)
    try:
        chunks = [_chunk(reader, DEST, 0, 2 * MIB)]
        assert reader.cached()
        assert selfread.runs(chunks) == ([], chunks)
    finally:
        reader.close()


def _fds(pid: int) -> list[str]:
    return sorted(os.listdir(f"/proc/{pid}/fd"))


def test_task_reads_its_pages_and_keeps_no_descriptor(
        runner: blob.BlobRunner, tmp_path: Path) -> None:
    reader = _pages_file(tmp_path / "pages.img", 768)
    fds = _fds(runner.pid)
    try:
        _map_dest(runner, 3 * MIB)
        long_runs, rest = selfread.runs([_chunk(reader, DEST + MIB, PG, 2 * MIB)])
        assert rest == [] and len(long_runs) == 1
        assert selfread.read_in_task(runner, long_runs) == []
        got = runner.read(DEST + MIB, 2 * MIB)
        assert got == bytes(reader.view()[PG:PG + 2 * MIB])
        assert runner.read(DEST, MIB) == bytes(MIB)  # nothing written outside the run
        assert _fds(runner.pid) == fds
    finally:
        reader.close()


def test_a_damaged_page_read_by_the_task_is_refused(
        runner: blob.BlobRunner, tmp_path: Path) -> None:
    """The task sums what it read; one flipped bit in the file's 300th page fails the
    read naming the file and the page."""
    if not pagecrc.native():
        pytest.skip("no SSE4.2 here: the engine reads and checks the pages itself")
    reader = _pages_file(tmp_path / "pages.img", 768, damaged=300 * PG + 5)
    try:
        _map_dest(runner, 3 * MIB)
        long_runs, _ = selfread.runs([_chunk(reader, DEST, 0, 2 * MIB)])
        with pytest.raises(ImageError, match=f"pages.img: checksum mismatch in the page at "
                                             f"byte {300 * PG}: the file is damaged"):
            selfread.read_in_task(runner, long_runs)
    finally:
        reader.close()


def test_a_file_the_task_cannot_open_is_handed_back(
        runner: blob.BlobRunner, tmp_path: Path) -> None:
    reader = _pages_file(tmp_path / "pages.img", 512)
    fds = _fds(runner.pid)
    try:
        _map_dest(runner, 2 * MIB)
        long_runs, _ = selfread.runs([_chunk(reader, DEST, 0, 2 * MIB)])
        os.rename(tmp_path / "pages.img", tmp_path / "moved.img")  # the task's open fails
        left = selfread.read_in_task(runner, long_runs)
        assert [(c.dst, c.offset, c.length) for c in left] == [(DEST, 0, 2 * MIB)]
        assert left[0].reader is reader
        assert runner.read(DEST, PG) == bytes(PG)
        assert _fds(runner.pid) == fds
    finally:
        reader.close()


def test_another_file_at_the_path_is_not_read(
        runner: blob.BlobRunner, tmp_path: Path) -> None:
    """The task must read the engine's file: another file at its path (as a chroot or
    another mount namespace could give) is detected by inode and nothing is read."""
    reader = _pages_file(tmp_path / "pages.img", 512)
    fds = _fds(runner.pid)
    try:
        _map_dest(runner, 2 * MIB)
        long_runs, _ = selfread.runs([_chunk(reader, DEST, 0, 2 * MIB)])
        os.rename(tmp_path / "pages.img", tmp_path / "moved.img")
        (tmp_path / "pages.img").write_bytes(b"\xff" * 2 * MIB)
        left = selfread.read_in_task(runner, long_runs)
        assert [(c.dst, c.offset, c.length) for c in left] == [(DEST, 0, 2 * MIB)]
        assert runner.read(DEST, PG) == bytes(PG)
        assert _fds(runner.pid) == fds
    finally:
        reader.close()


def test_a_short_read_hands_back_the_remainder(
        runner: blob.BlobRunner, tmp_path: Path) -> None:
    reader = _pages_file(tmp_path / "pages.img", 512)  # 2 MiB
    try:
        _map_dest(runner, 2 * MIB)
        # A run that claims 1 MiB from 1.5 MiB: the file ends half way through it.
        run = selfread.Run(reader, DEST, MIB + MIB // 2, MIB)
        left = selfread.read_in_task(runner, [run])
        assert [(c.dst, c.offset, c.length) for c in left] == [
            (DEST + MIB // 2, 2 * MIB, MIB // 2)]
        assert runner.read(DEST, MIB // 2) == bytes(reader.view()[MIB + MIB // 2:])
    finally:
        reader.close()


def test_tables_are_cut_to_fit_the_region(runner: blob.BlobRunner,
                                          tmp_path: Path) -> None:
    reader = _pages_file(tmp_path / "pages.img", 16 * MIB // PG)
    small = blob.BlobRunner(runner.pid, REGION, 2 * PG)  # room for about 100 entries
    try:
        count = 250
        _map_dest(runner, 2 * count * MIB)
        runs = [selfread.Run(reader, DEST + 2 * i * MIB, (i % 16) * MIB, MIB)
                for i in range(count)]
        assert count * (blob.ENTRY_SIZE + 8) > small.size  # needs several tables
        assert selfread.read_in_task(small, runs) == []
        for i in (0, 101, count - 1):
            off = (i % 16) * MIB
            assert small.read(DEST + 2 * i * MIB, PG) == bytes(reader.view()[off:off + PG])
    finally:
        small.close()
        reader.close()
