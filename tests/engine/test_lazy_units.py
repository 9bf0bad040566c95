"""The lazy-pages daemon's bookkeeping of pages still to copy (engine/lazy/pending.py),
its page checks (engine/lazy/check.py) and its hand-over messages
(engine/lazy/protocol.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from engine.errors import EngineError
from engine.images import PagesReader
from engine.images.imgdir import ImageError
from engine.kernel import pagecrc
from engine.lazy import protocol
from engine.lazy.check import PageChecks
from engine.lazy.pending import Pending
from engine.lazy.source import Run

P = 4096
F = cast(PagesReader, SimpleNamespace(address=1 << 40))  # the bookkeeping never reads it


def _spans(p: Pending) -> list[tuple[int, int, int]]:
    return [(r.start // P, r.end // P, r.offset // P) for r in p.runs]


def test_take_splits_a_run_and_keeps_file_offsets() -> None:
    p = Pending([Run(10 * P, 20 * P, F, 0), Run(30 * P, 32 * P, F, 10 * P)])
    got = p.take(12 * P, 3 * P)
    assert got is not None and (got.start, got.end, got.offset) == (12 * P, 15 * P, 2 * P)
    assert _spans(p) == [(10, 12, 0), (15, 20, 5), (30, 32, 10)]
    assert p.take(25 * P, P) is None  # not pending
    assert p.take(12 * P, P) is None  # taken already
    first = p.take_first(100 * P)
    assert first is not None and (first.start, first.end) == (10 * P, 12 * P)
    assert p.bytes() == 7 * P


def test_remove_drops_overlapping_parts() -> None:
    p = Pending([Run(0, 10 * P, F, 0), Run(20 * P, 30 * P, F, 10 * P)])
    removed = p.remove(5 * P, 25 * P)
    assert [(r.start // P, r.end // P) for r in removed] == [(5, 10), (20, 25)]
    assert _spans(p) == [(0, 5, 0), (25, 30, 15)]


def test_move_follows_mremap() -> None:
    p = Pending([Run(0, 4 * P, F, 0), Run(8 * P, 12 * P, F, 4 * P)])
    p.move(8 * P, 100 * P, 4 * P)
    assert _spans(p) == [(0, 4, 0), (100, 104, 4)]
    child = p.copy()
    child.remove(0, 200 * P)
    assert not child and p.bytes() == 8 * P  # a fork's copy is independent


def test_put_back() -> None:
    p = Pending([Run(0, 8 * P, F, 0)])
    got = p.take_first(2 * P)
    assert got is not None and got.address == F.address
    rest = p.take_first(P)
    assert rest is not None and rest.address == F.address + 2 * P
    p.put(rest)
    p.put(got)
    assert _spans(p) == [(0, 2, 0), (2, 3, 2), (3, 8, 3)]


def test_handover_message_carries_the_fd() -> None:
    a, b = socket.socketpair()
    r, w = os.pipe()
    try:
        protocol.send_task(a, protocol.Handover(7, 1007, [(P, 3 * P)], r))
        protocol.send_done(a)
        msg, fd = protocol.recv_message(b)
        assert msg == {"pid": 7, "real": 1007, "ranges": [[P, 3 * P]]}
        assert fd >= 0 and os.path.sameopenfile(fd, r)
        os.close(fd)
        assert protocol.recv_message(b) == ({"done": True}, -1)
        a.close()
        with pytest.raises(ConnectionError):
            protocol.recv_message(b)
    finally:
        for x in (r, w):
            os.close(x)
        a.close()
        b.close()


def _pages_file(path: str, npages: int, damaged: int | None) -> PagesReader:
    """A pages file of npages pages with their checksums, page `damaged` then changed."""
    data = bytearray(os.urandom(npages * P))
    sums = pagecrc.PageSums(pagecrc.write_algo(), pagecrc.sums_of(pagecrc.write_algo(), data))
    if damaged is not None:
        data[damaged * P + 17] ^= 1
    with open(path, "wb") as f:
        f.write(data)
    return PagesReader(path, os.open(path, os.O_RDONLY), sums)


def test_a_copy_ahead_of_the_thread_checks_its_own_run(tmp_path: Path) -> None:
    """No thread: each run is checked by ensure() itself; a checked run that starts at
    the mark moves it, a damaged page is refused however it is reached."""
    with _pages_file(str(tmp_path / "p"), 64, damaged=40) as f:
        checks = PageChecks([f])
        checks.ensure(f, 0, 8 * P)
        checks.ensure(f, 8 * P, 8 * P)
        checks.ensure(f, 48 * P, 4 * P)  # beyond a gap: checked, the mark stays
        assert checks._marks[id(f)] == 16 * P
        with pytest.raises(ImageError, match=f"page at byte {40 * P}: the file is damaged"):
            checks.ensure(f, 36 * P, 8 * P)
        with pytest.raises(ImageError, match=f"page at byte {40 * P}"):
            checks.ensure(f, 40 * P, P)


def test_the_thread_checks_ahead_and_stops_at_a_damaged_page(tmp_path: Path) -> None:
    with _pages_file(str(tmp_path / "good"), 2048, None) as good, \
            _pages_file(str(tmp_path / "bad"), 16, damaged=3) as bad:
        checks = PageChecks([good, bad])
        checks.start()
        checks._thread.join(timeout=30)
        assert checks._marks[id(good)] == 2048 * P  # all of it, in more than one chunk
        assert checks._marks[id(bad)] == 0
        assert isinstance(checks.error, EngineError)
        assert f"page at byte {3 * P}" in str(checks.error)
        checks.stop()
