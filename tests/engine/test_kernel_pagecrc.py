"""Page checksums (engine/kernel/pagecrc.py): the algorithms and the in-task routine."""

from __future__ import annotations

import os
import zlib

import pytest

from engine.kernel import blob, pagecrc
from tests.engine.blob_support import REGION

PG = 4096


def test_crc32c_matches_the_standard_check_value() -> None:
    """CRC32C("123456789") is 0xE3069283 (RFC 3720); the hardware routine agrees with
    the pure-Python one on random pages (three at a time and the rest)."""
    assert pagecrc._crc32c_py(memoryview(b"123456789")) == 0xE3069283
    data = os.urandom(7 * PG)
    want = [pagecrc._crc32c_py(memoryview(data)[i * PG:(i + 1) * PG]) for i in range(7)]
    if pagecrc.native():
        assert list(pagecrc.sums_of(pagecrc.ALGO_CRC32C, data)) == want
    assert list(pagecrc.sums_of(pagecrc.ALGO_CRC32, data)) == [
        zlib.crc32(data[i * PG:(i + 1) * PG]) for i in range(7)]


def test_a_task_sums_its_own_pages(runner: blob.BlobRunner) -> None:
    """in_task: the task runs page_crcs from the runner's code area and stops at the
    getpid after it; results as the engine computes them."""
    if not pagecrc.native():
        pytest.skip("no SSE4.2 here: tasks never sum their pages")
    data = os.urandom(5 * PG)
    at = REGION + (512 << 10)
    runner.write(at, data)
    out = REGION + blob.CODE_AREA
    got = pagecrc.in_task(runner.pid, runner.mem_fd, runner.base, out, at, 5, 5.0)
    assert got == pagecrc.sums_of(pagecrc.ALGO_CRC32C, data)
