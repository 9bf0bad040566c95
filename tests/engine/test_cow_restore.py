"""Private pages shared copy-on-write after fork stay shared through dump and restore
(engine/dump/cow.py, engine/restore/premap.py), on static/cow_tree: a parent, a child and a
grandchild sharing a 20 MiB region, each having rewritten a part of it since its fork. The
sharing is measured as the harness does (page frames in /proc/PID/pagemap); images that
claim sharing they cannot have are refused before any task exists."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine import cr_support as cr
from tests.engine.image_tools import edit_mm, mm_parts, reseal
from zdtm import sharing

PART = 4 << 20
PAGES = PART // 4096
PARTS = 5


@pytest.fixture(autouse=True)
def _subreaper() -> None:
    cr.become_subreaper()


def _region(t: cr.ZdtmTest) -> int:
    out = (t.workdir / f"{t.name}.out").read_text()
    found = re.search(r"region (0x[0-9a-f]+)", out)
    assert found, out
    return int(found.group(1), 16)


def _shared_in(root: int, lo: int, hi: int) -> dict[tuple[int, int], int]:
    """Pages of [lo, hi) each pair of the tree shares copy-on-write (same address)."""
    members = [(p, p) for p in cr.tree_of(root)]
    return {pair: sum(1 for a, b in pages if lo <= a < hi and a == b)
            for pair, pages in sharing.cow_pairs(members).items()}


def test_parent_child_and_grandchild_keep_sharing(tmp_path: Path) -> None:
    t = cr.ZdtmTest.start("cow_tree", tmp_path / "work")
    try:
        lo = _region(t)
        hi = lo + PARTS * PART
        parent, child, grandchild = cr.tree_of(t.pid)
        before = _shared_in(t.pid, lo, hi)
        # parts 0, 2 and the read-only one; 0, 1, 3 and RO; 0 and RO
        assert before == {(parent, child): 3 * PAGES, (child, grandchild): 4 * PAGES,
                          (parent, grandchild): 2 * PAGES}, before
        images = tmp_path / "img"
        r = cr.dump_restore(t, images, leave_stopped=True)
        assert r.returncode == 0, r.stderr
        mms = {pid: mm_parts(images / f"mm-{pid}.img")[0] for pid in (parent, child, grandchild)}
        assert mms[parent]["cow"] == [] and mms[child]["cow"] and mms[grandchild]["cow"]
        assert _shared_in(t.pid, lo, hi) == before
        for pid in cr.tree_of(t.pid):
            os.kill(pid, signal.SIGCONT)
        assert "PASS" in t.stop()
    finally:
        t.cleanup()


@pytest.fixture(scope="module")
def dumped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[cr.ZdtmTest, Path]]:
    """cow_tree, dumped and killed: (test, images)."""
    cr.become_subreaper()
    tmp = tmp_path_factory.mktemp("cow")
    t = cr.ZdtmTest.start("cow_tree", tmp / "work")
    images = tmp / "img"
    try:
        tasks = cr.tree_of(t.pid)
        d = cr.engine("dump", "-t", str(t.pid), "-D", str(images))
        assert d.returncode == 0, d.stderr
        for pid in tasks:
            cr.wait_gone(pid)
        yield t, images
    finally:
        t.cleanup()


@pytest.fixture
def image(dumped: tuple[cr.ZdtmTest, Path], tmp_path: Path) -> tuple[cr.ZdtmTest, Path]:
    t, pristine = dumped
    copy = tmp_path / "img"
    shutil.copytree(pristine, copy)
    return t, copy


def _edit_mm(d: Path, pid: int, fn: Any) -> None:
    edit_mm(d / f"mm-{pid}.img", fn)
    reseal(d)


def _refused(d: Path, *words: str) -> None:
    r = cr.engine("restore", "-D", str(d), "-d", timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"


def _pids(t: cr.ZdtmTest, d: Path) -> list[int]:
    inv = json.loads((d / "inventory.json").read_text())
    return [task["pid"] for task in inv["tasks"]]


def test_claimed_page_with_other_content_is_refused(image: tuple[cr.ZdtmTest, Path]) -> None:
    """The child rewrote part 1 after its fork: an image saying that page is still the
    parent's would give the child the parent's bytes."""
    t, d = image
    root, child, _ = _pids(t, d)
    lo = _region(t) + PART

    def claim(mm: Any) -> None:
        mm["cow"] = sorted(mm["cow"] + [[lo, 1]])
    _edit_mm(d, child, claim)
    _refused(d, f"task {child}", f"{lo:#x}", "not dumped alike")
    assert not os.path.exists(f"/proc/{root}")


def test_cow_run_outside_the_vmas_is_refused(image: tuple[cr.ZdtmTest, Path]) -> None:
    t, d = image
    _, child, _ = _pids(t, d)
    _edit_mm(d, child, lambda mm: mm.__setitem__("cow", [[0x1000, 1]]))
    _refused(d, f"mm-{child}.img", "cow run 0x1000-0x2000", "not inside")


def test_root_sharing_with_a_parent_is_refused(image: tuple[cr.ZdtmTest, Path]) -> None:
    t, d = image
    root, _, _ = _pids(t, d)
    _edit_mm(d, root, lambda mm: mm.__setitem__("cow", [[_region(t), 1]]))
    _refused(d, f"mm-{root}.img", "parent that has no memory")


def test_overlapping_cow_runs_are_refused(image: tuple[cr.ZdtmTest, Path]) -> None:
    t, d = image
    _, child, _ = _pids(t, d)
    lo = _region(t)
    _edit_mm(d, child, lambda mm: mm.__setitem__("cow", [[lo, 2], [lo + 4096, 1]]))
    _refused(d, f"mm-{child}.img", "overlapping")


def test_damaged_page_of_premapped_memory_is_refused(image: tuple[cr.ZdtmTest, Path]) -> None:
    """A flipped bit in the parent's shared region (its pages go into the premapped memory
    the children inherit) fails the restore with one line naming the file and the page,
    and leaves no task."""
    t, d = image
    pids = _pids(t, d)
    pages = d / f"pages-{pids[0]}.img"
    raw = bytearray(pages.read_bytes())
    at = len(raw) // 2 // 4096 * 4096  # inside the 20 MiB region, most of the file
    raw[at + 100] ^= 0x01
    pages.write_bytes(bytes(raw))
    _refused(d, str(pages), f"checksum mismatch in the page at byte {at}")
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}")
