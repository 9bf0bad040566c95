"""How pages files are written and read: through the page cache for a small tree (a
restore then reads them where they are), with O_DIRECT for a large one (ENGINE_PAGES_IO
forces either), and a restore reads with O_DIRECT whatever is not in the cache."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.dump import pages
from engine.errors import EngineError
from engine.images import load
from engine.images.directio import open_direct_read
from engine.proc import writeback
from engine.restore import pages as rpages
from tests.engine import cr_support as cr


@pytest.fixture
def running(tmp_path: Path) -> Iterator[cr.ZdtmTest]:
    cr.become_subreaper()  # the dumped test's orphans come to us
    t = cr.ZdtmTest.start("mem_anon", tmp_path / "work")
    try:
        yield t
    finally:
        t.cleanup()


def _dump(t: cr.ZdtmTest, images: Path, how: str) -> None:
    tasks = cr.tree_of(t.pid)
    d = cr.engine("dump", "-t", str(t.pid), "-D", str(images), env={"ENGINE_PAGES_IO": how})
    assert d.returncode == 0, d.stderr
    for pid in tasks:
        cr.wait_gone(pid)


def _cached(images: Path) -> list[bool]:
    """Whether each task's pages file is in the page cache."""
    image = load(str(images), verify_pages=False)
    out = []
    for t in image.tasks.values():
        assert t.mm is not None and t.pagemap is not None
        with image.dir.pages_reader(t.mm.pages, t.pagemap) as reader:
            out.append(reader.cached())
    return out


def _evict(images: Path) -> None:
    for f in images.glob("pages-*.img"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _takes_o_direct(path: Path) -> bool:
    fd = open_direct_read(str(path))
    if fd >= 0:
        os.close(fd)
    return fd >= 0


def _restore(t: cr.ZdtmTest, images: Path) -> None:
    pidfile = images.parent / "restored.pid"
    r = cr.engine("restore", "-D", str(images), "-d", "--pidfile", str(pidfile))
    assert r.returncode == 0, r.stderr
    assert int(pidfile.read_text()) == t.pid
    assert t.stop() == "PASS"


@pytest.mark.parametrize("how, cached, evict", [
    ("", True, False),  # a small tree: buffered, and read back from the cache
    ("buffered", True, True),  # evicted before restore: read ahead at its start
    ("direct", False, False),
])
def test_pages_files_written_and_read_both_ways(running: cr.ZdtmTest, tmp_path: Path,
                                                how: str, cached: bool, evict: bool) -> None:
    images = tmp_path / "img"
    _dump(running, images, how)
    assert _cached(images) == [cached]
    if evict:
        _evict(images)
        assert _cached(images) == [False]
    _restore(running, images)


def test_a_small_evicted_image_is_read_ahead_and_a_large_one_is_not(
        running: cr.ZdtmTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = tmp_path / "img"
    _dump(running, images, "buffered")
    image = load(str(images), verify_pages=False)
    (task,) = image.tasks.values()
    assert task.mm is not None and task.pagemap is not None
    with image.dir.pages_reader(task.mm.pages, task.pagemap) as reader:
        monkeypatch.setattr(rpages, "PREFETCH_MAX", 0)  # "large": left to O_DIRECT
        _evict(images)
        assert not rpages.prefetch_files([reader])
        time.sleep(0.2)
        assert not reader.cached()
        # not in the cache and not read ahead: read with O_DIRECT, where the filesystem can
        assert (reader.direct_fd() >= 0) == _takes_o_direct(images / task.mm.pages)
        monkeypatch.undo()
        assert rpages.prefetch_files([reader])
        # read through the cache the read-ahead fills, not with O_DIRECT from the disk
        assert reader.direct_fd() == -1
        deadline = time.monotonic() + 10
        while not reader.cached():  # the reads were started, not waited for
            assert time.monotonic() < deadline, "read ahead did not bring the file in"
            time.sleep(0.01)


def test_the_choice_follows_the_tree_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENGINE_PAGES_IO", raising=False)
    assert pages.write_buffered(64 << 20, 64 << 20)
    assert not pages.write_buffered((64 << 20) + 1, 64 << 20)
    monkeypatch.setenv("ENGINE_PAGES_IO", "direct")
    assert not pages.write_buffered(0, 64 << 20)
    monkeypatch.setenv("ENGINE_PAGES_IO", "buffered")
    assert pages.write_buffered(1 << 40, 0)
    monkeypatch.setenv("ENGINE_PAGES_IO", "sometimes")
    with pytest.raises(EngineError, match="ENGINE_PAGES_IO='sometimes'"):
        pages.write_buffered(0, 0)


GIB = 1 << 30


def _machine(monkeypatch: pytest.MonkeyPatch, sysctl: dict[str, int], dirty: int) -> None:
    """A machine with 10 GiB free, 2 GiB of file pages and `dirty` bytes dirty."""
    info = {"MemFree": 10 * GIB, "Active(file)": GIB, "Inactive(file)": GIB,
            "Dirty": dirty, "Writeback": 0}
    monkeypatch.setattr(writeback, "_meminfo", lambda: info)
    monkeypatch.setattr(writeback, "_sysctl", lambda name: sysctl[name])


@pytest.mark.parametrize(("sysctl", "dirty", "room"), [
    # the defaults: 20% and 10% of 12 GiB, ceiling halfway between them
    ({"dirty_bytes": 0, "dirty_ratio": 20, "dirty_background_bytes": 0,
      "dirty_background_ratio": 10}, 0, 12 * GIB * 15 // 100),
    ({"dirty_bytes": 0, "dirty_ratio": 20, "dirty_background_bytes": 0,
      "dirty_background_ratio": 10}, GIB, 12 * GIB * 15 // 100 - GIB),
    # fixed bytes win over ratios
    ({"dirty_bytes": 4 * GIB, "dirty_ratio": 20, "dirty_background_bytes": 2 * GIB,
      "dirty_background_ratio": 10}, 0, 3 * GIB),
    # a background threshold at or above the foreground one counts as half of it
    ({"dirty_bytes": 0, "dirty_ratio": 10, "dirty_background_bytes": 0,
      "dirty_background_ratio": 50}, 0, 12 * GIB * 10 // 100 * 3 // 4),
    # more dirty than the ceiling: no room
    ({"dirty_bytes": GIB, "dirty_ratio": 0, "dirty_background_bytes": 0,
      "dirty_background_ratio": 0}, 2 * GIB, 0),
])
def test_free_run_room(monkeypatch: pytest.MonkeyPatch, sysctl: dict[str, int], dirty: int,
                       room: int) -> None:
    _machine(monkeypatch, sysctl, dirty)
    assert abs(writeback.free_run_room() - room) <= 2


def test_free_run_room_unknown_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> int:
        raise FileNotFoundError(name)

    _machine(monkeypatch, {}, 0)
    monkeypatch.setattr(writeback, "_sysctl", missing)
    assert writeback.free_run_room() == 0
    monkeypatch.undo()
    assert writeback.free_run_room() >= 0  # this machine's, read for real


def test_buffered_limit_is_a_share_of_the_room(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writeback, "free_run_room", lambda: 3 * GIB)
    assert pages.buffered_limit() == int(3 * GIB * pages.CACHE_ROOM_SHARE)
