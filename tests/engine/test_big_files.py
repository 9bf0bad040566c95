"""Unlinked files whose saved data is bigger than 1 GiB, and the streamed copy of saved
data into the file the restore makes again (each MiB checked as it is read)."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from engine.errors import EngineError
from engine.images.imgdir import CRC_CHUNK
from engine.restore.files import SavedData, _write_extents
from tests.engine import cr_support as cr

MiB = 1 << 20


@pytest.fixture(autouse=True)
def _subreaper() -> None:
    cr.become_subreaper()


def test_unlinked_file_with_more_than_a_gib_of_data(tmp_path: Path) -> None:
    """static/unlinked_huge with 1025 MiB of data besides its sparse pieces: the image
    holds more than 1 GiB of the file's data (once read whole into memory, now streamed),
    and the restored program finds every byte, its holes and its offset again."""
    t = cr.ZdtmTest.start("unlinked_huge", tmp_path / "work", ["--dense_mib=1025"])
    try:
        images = tmp_path / "img"
        r = cr.dump_restore(t, images)
        assert r.returncode == 0, r.stderr
        (data,) = images.glob("file-*.data")
        assert data.stat().st_size > 1025 * MiB
        assert t.stop() == "PASS"
    finally:
        t.cleanup()


def _saved(tmp_path: Path, data: bytes) -> SavedData:
    path = tmp_path / "file-0.data"
    path.write_bytes(data)
    sums = [zlib.crc32(data[i:i + CRC_CHUNK]) for i in range(0, len(data), CRC_CHUNK)] or [0]
    return SavedData(os.open(path, os.O_RDONLY), str(path), sums)


def _extents(fd: int, size: int) -> list[tuple[int, int]]:
    out, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        pos = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, pos))
    return out


def test_saved_data_goes_to_its_extents(tmp_path: Path) -> None:
    """Pieces of the saved data that straddle the MiB pieces of the image file land at
    their extents; the holes between stay holes."""
    data = bytes(range(256)) * (10 * MiB // 256 + 7)  # 10 MiB and 1792 bytes
    extents = [[0, 3 * MiB + 4096], [8 * MiB, 8 * MiB + 4096],
               [64 * MiB, 64 * MiB + len(data) - 3 * MiB - 8192]]
    saved = _saved(tmp_path, data)
    out = os.open(tmp_path / "new", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(out, 80 * MiB)
        _write_extents(out, saved, extents)
        pos = 0
        for start, end in extents:
            assert os.pread(out, end - start, start) == data[pos:pos + end - start]
            pos += end - start
        assert _extents(out, 80 * MiB)[1] == (8 * MiB, 8 * MiB + 4096)
    finally:
        os.close(out)
        os.close(saved.fd)


def test_damaged_saved_data_is_refused(tmp_path: Path) -> None:
    """A MiB of the image file that no longer matches its checksum fails the copy,
    naming the file and where."""
    data = os.urandom(3 * MiB)
    saved = _saved(tmp_path, data)
    with open(saved.path, "r+b") as f:
        f.seek(CRC_CHUNK + 5)
        f.write(b"\xff" if data[CRC_CHUNK + 5] != 0xff else b"\0")
    out = os.open(tmp_path / "new", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(EngineError, match=f"{saved.path}: checksum mismatch in the MiB "
                                              f"at byte {CRC_CHUNK}"):
            _write_extents(out, saved, [[0, len(data)]])
    finally:
        os.close(out)
        os.close(saved.fd)


def test_saved_data_shorter_than_its_extents_is_refused(tmp_path: Path) -> None:
    saved = _saved(tmp_path, b"x" * 4096)
    out = os.open(tmp_path / "new", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(EngineError, match="the data ends before its extent 4096-8192"):
            _write_extents(out, saved, [[0, 8192]])
    finally:
        os.close(out)
        os.close(saved.fd)
