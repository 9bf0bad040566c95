"""Memory dumping details: shmem objects from the object itself or through the fallback,
memfds nobody maps, and the page-run bookkeeping."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from engine.dump import cow, intervals, pages, shmem, tree, vmas
from engine.dump.dumper import dump
from engine.errors import EngineError
from engine.images import load
from engine.images.imgdir import ImageDir
from engine.images.records import Vma
from engine.kernel import pagecrc, uapi
from engine.proc import pagemap as procpagemap
from tests.engine.dump_support import Victim

PG = 4096


def _object_pages(img, sid: str) -> dict[int, bytes]:
    """offset -> first byte of each stored page of a shmem object."""
    sh = img.shmem[sid]
    out = {}
    with img.dir.pages_reader(sh.entry.pages, sh.pagemap) as r:
        view = r.view()
        for e, off in zip(sh.pagemap.entries, sh.pagemap.offsets):
            for i in range(e.nr_pages):
                out[e.addr + i * PG] = bytes(view[off + i * PG:off + i * PG + 1])
    return out


def test_shmem_fallback_when_map_files_is_refused(victim: Victim, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a user namespace: map_files cannot be opened, so the pages the task maps
    are read through /proc/PID/mem (the unmapped upper half is out of reach)."""
    real_open = shmem._open_object

    def refuse(link: str) -> int:
        if "/map_files/" in link:
            raise PermissionError(errno.EPERM, "Operation not permitted", link)
        return real_open(link)

    monkeypatch.setattr(shmem, "_open_object", refuse)
    dump(victim.pid, str(tmp_path / "img"), leave_running=True)
    img = load(str(tmp_path / "img"))
    mm = img.tasks[victim.pid].mm
    assert mm is not None
    vma = next(v for v in mm.vmas if v.start == victim.shmem)
    got = _object_pages(img, vma.shmem_id)
    assert got == {i * PG: bytes([0x80 + i]) for i in range(32)}
    assert victim.is_running() and victim.finish() == (0, "")


def test_shmem_from_the_object_includes_unmapped_pages(victim: Victim,
                                                       tmp_path: Path) -> None:
    dump(victim.pid, str(tmp_path / "img"), leave_running=True)
    img = load(str(tmp_path / "img"))
    mm = img.tasks[victim.pid].mm
    assert mm is not None
    vma = next(v for v in mm.vmas if v.start == victim.shmem)
    got = _object_pages(img, vma.shmem_id)
    assert got == {i * PG: bytes([0x80 + i]) for i in range(64)}
    assert victim.finish() == (0, "")


MEMFD_HOLDER = """
import os, sys, time
fd = os.memfd_create("holder", os.MFD_ALLOW_SEALING)
os.write(fd, b"x" * 5000)
os.pwrite(fd, b"y" * 100, 3 * 4096)
os.ftruncate(fd, 20000)
import fcntl
fcntl.fcntl(fd, 1033, 0x4)  # F_ADD_SEALS, F_SEAL_GROW
print(fd, flush=True)
time.sleep(60)
"""


def test_memfd_held_by_fd_only(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", MEMFD_HOLDER], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        fd = int(proc.stdout.readline())
        dump(proc.pid, str(tmp_path / "img"), leave_running=True)
        img = load(str(tmp_path / "img"))
        core = img.tasks[proc.pid].core
        rec = img.files.by_id()[next(f.file_id for f in core.fds if f.fd == fd)]
        assert rec.path == "/memfd:holder" and rec.deleted and rec.content is None
        sh = img.shmem[rec.shmem_id]
        assert (sh.entry.kind, sh.entry.name, sh.entry.file_size) == ("memfd", "holder", 20000)
        assert sh.entry.seals & 0x4 and sh.entry.size == 5 * PG
        got = _object_pages(img, sh.entry.id)
        assert got == {0: b"x", PG: b"x", 3 * PG: b"y"}
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_interval_operations() -> None:
    a = intervals.normalise([(30, 40), (0, 10), (5, 15), (15, 20), (50, 50)])
    assert a == [(0, 20), (30, 40)]
    b = [(5, 8), (18, 35), (39, 60)]
    assert intervals.intersect(a, b) == [(5, 8), (18, 20), (30, 35), (39, 40)]
    assert intervals.subtract(a, b) == [(0, 5), (8, 18), (35, 39)]
    assert intervals.subtract(a, []) == a and intervals.intersect(a, []) == []


def test_maps_lines_classified_once_per_file_and_a_bad_one_refused() -> None:
    """The dump's maps parser: lines of one file share the classification of their
    device, inode and path; a line whose rest is not that refuses the dump, naming it."""
    text = (b"1000-2000 r--p 00000000 fd:01 77    /tmp/a b\n"
            b"2000-3000 r--p 00001000 fd:01 77    /tmp/a b\n"
            b"3000-4000 rw-p 00000000 00:00 0 \n")
    a, b, anon = vmas.parse(1, text, None)
    assert (a.path, a.dev, a.inode, a.kind) == ("/tmp/a b", "fd:01", 77, "file")
    assert (b.start, b.end, b.pgoff) == (0x2000, 0x3000, 0x1000) and b.path == a.path
    assert anon.kind == "anon" and anon.flags & uapi.MAP_ANONYMOUS and anon.vmflags == []
    with pytest.raises(EngineError, match="maps of 1: malformed maps line ending b'fd:01 x"):
        vmas.parse(1, b"1000-2000 r--p 00000000 fd:01 x /tmp/a\n", None)


def test_runs_are_clipped_to_each_vma() -> None:
    """Regions are cut at every VMA boundary (adjacent VMAs too), and marked for
    /proc/PID/mem in an unreadable VMA."""
    pg = 4096

    def vma(start: int, end: int, prot: int = 3) -> Vma:
        return Vma(start * pg, end * pg, prot, 2, 0, "anon")
    layout = [vma(0, 2), vma(2, 4), vma(4, 6, prot=0), vma(8, 10), vma(10, 12, prot=1)]
    regions = [(1 * pg, 5 * pg, 0), (6 * pg, 9 * pg, 0), (10 * pg, 11 * pg, 0)]
    assert pages.clip_to_vmas(regions, layout) == [
        pages.Run(1 * pg, pg, False), pages.Run(2 * pg, 2 * pg, False),
        pages.Run(4 * pg, pg, True), pages.Run(8 * pg, pg, False),
        pages.Run(10 * pg, pg, False)]


def test_private_runs_tell_file_pages_apart_only_where_needed(tmp_path: Path) -> None:
    """Anonymous VMAs are scanned without the per-page file test, file VMAs with it: a
    COW'ed file page is private, a read file page and a read anonymous hole (zero page)
    are not; past _MAX_SCAN_GROUPS groups, or for small anonymous VMAs
    (_JOIN_ANON_BYTES), one scan does it all, with the same result."""
    path = tmp_path / "f"
    path.write_bytes(b"f" * 4 * PG)
    with open(path, "r+b") as f:
        fmap = mmap.mmap(f.fileno(), 4 * PG, flags=mmap.MAP_PRIVATE)
    amap = mmap.mmap(-1, 4 * PG, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        fmap[0:1] = b"x"  # COW'ed
        assert fmap[PG] == ord("f")  # read: the file's page
        amap[0:1] = b"y"  # anonymous page
        assert amap[PG] == 0  # read: the zero page
        fbase = ctypes.addressof(ctypes.c_char.from_buffer(fmap))
        abase = ctypes.addressof(ctypes.c_char.from_buffer(amap))
        me = os.getpid()
        mine = [v for v in vmas.parse(me, vmas.read_maps(me), vmas.read_smaps(me))
                if v.start <= fbase < v.end or v.start <= abase < v.end]
        assert {v.kind for v in mine} == {"file", "anon"}
        scans: list[int] = []
        real_scan = pages.ksys.pagemap_scan

        def scan(*args: Any, **kwargs: Any) -> list[tuple[int, int, int]]:
            scans.append(args[1])
            return real_scan(*args, **kwargs)

        with mock.patch.object(pages, "_JOIN_ANON_BYTES", 0), \
                mock.patch.object(pages.ksys, "pagemap_scan", scan):
            runs, tracked = pages.private_runs(os.getpid(), mine)
        assert len(scans) == 2  # the two groups apart
        assert tracked == []  # nothing registered for tracking here

        def in_maps(found: list[pages.Run]) -> list[int]:
            """The private pages found in the two maps (a VMA of this live process may
            have merged with a neighbour whose pages change between two scans)."""
            return [a for r in found for a in range(r.addr, r.addr + r.length, PG)
                    if fbase <= a < fbase + 4 * PG or abase <= a < abase + 4 * PG]

        assert in_maps(runs) == sorted([fbase, abase])  # the written pages only
        with mock.patch.object(pages, "_MAX_SCAN_GROUPS", 0):
            assert in_maps(pages.private_runs(os.getpid(), mine)[0]) == in_maps(runs)
        scans.clear()
        with mock.patch.object(pages, "_JOIN_ANON_BYTES", 1 << 40), \
                mock.patch.object(pages.ksys, "pagemap_scan", scan):
            assert in_maps(pages.private_runs(os.getpid(), mine)[0]) == in_maps(runs)
        assert len(scans) == 1
    finally:
        fmap.close()
        amap.close()


def test_staging_before_the_freeze_smaps_while_frozen(victim: Victim,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """What does not need the freeze is done before it (populating the staging buffers);
    smaps, read beside the page copy, is still read while the tree is frozen."""
    events: list[str] = []

    def record(owner: object, name: str) -> None:
        real = getattr(owner, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            events.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    record(pages.Staging, "map")
    record(tree, "freeze")
    record(vmas, "read_smaps")
    record(tree.FrozenTree, "release")
    dump(victim.pid, str(tmp_path / "img"), leave_running=True)
    first = {name: events.index(name) for name in reversed(events)}
    assert first["map"] < first["freeze"] < first["read_smaps"] < first["release"], events
    assert victim.is_running() and victim.finish() == (0, "")


def test_shared_pages_are_those_another_process_maps_too() -> None:
    """After fork, the pages of a private mapping are shared with the child until this
    process writes one; procpagemap.shared_pages finds the rest, within the ranges
    asked."""
    m = mmap.mmap(-1, 8 * PG, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.write(b"x" * 8 * PG)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    fd = procpagemap.open_pagemap(os.getpid())
    try:
        m[2 * PG] = ord("y")  # this process's own copy now
        assert procpagemap.shared_pages(fd, [(base, base + 8 * PG)]) == [
            (base, base + 2 * PG), (base + 3 * PG, base + 8 * PG)]
        assert procpagemap.shared_pages(fd, [(base + PG, base + 3 * PG),
                                             (base + 5 * PG, base + 6 * PG)]) == [
            (base + PG, base + 2 * PG), (base + 5 * PG, base + 6 * PG)]
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        assert procpagemap.shared_pages(fd, [(base, base + 8 * PG)]) == []
    finally:
        os.close(fd)
        try:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        del base
        m.close()


def test_shared_parts_of_runs_are_read_through_proc_mem() -> None:
    runs = [pages.Run(0, 4 * PG, False), pages.Run(8 * PG, PG, True),
            pages.Run(10 * PG, 2 * PG, False)]
    shared = [(PG, 2 * PG), (3 * PG, 4 * PG), (10 * PG, 11 * PG)]
    assert pages._shared_via_mem(runs, shared) == [
        pages.Run(0, PG, False), pages.Run(PG, PG, True), pages.Run(2 * PG, PG, False),
        pages.Run(3 * PG, PG, True), pages.Run(8 * PG, PG, True),
        pages.Run(10 * PG, PG, True), pages.Run(11 * PG, PG, False)]
    assert pages._shared_via_mem(runs, []) == runs


def test_a_dump_leaves_the_tree_its_shared_pages(memtree: list[int], tmp_path: Path) -> None:
    """A tree dumped with --leave-running still shares with its parent every page each
    child shared before (process_vm_readv would have given each reader its own copy), but
    for the stack pages the injection wrote its frame on."""
    zero = procpagemap.zero_pfn()
    if not zero:
        pytest.skip("page frames are hidden here: sharing cannot be seen")

    def off_stack(pid: int, runs: list[list[int]]) -> list[list[int]]:
        stack = next(v for v in vmas.parse(pid, vmas.read_maps(pid), None)
                     if v.kind == "stack")
        return [r for r in runs if not stack.start <= r[0] < stack.end]

    def shared() -> list[list[list[int]]]:
        return [off_stack(c, cow.shared_with_parent(c, memtree[0], zero))
                for c in memtree[1:]]
    before = shared()
    assert all(before)
    dump(memtree[0], str(tmp_path / "img"), leave_running=True)
    assert shared() == before


def test_a_large_smaps_is_read_by_a_process_of_its_own(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """read_vmflags gives the same VmFlags whether it reads smaps here or has its reader
    process do it (forced with SMAPS_APART_VMAS 0); a reader that fails is an error that
    names the task."""
    asleep = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)  # (its interpreter started: its VMAs stay as they are)
        count = vmas.read_maps(asleep.pid).count(b"\n")
        here = vmas.read_vmflags(asleep.pid, count)
        monkeypatch.setattr(vmas, "SMAPS_APART_VMAS", 0)
        assert vmas.read_vmflags(asleep.pid, count) == here and len(here) == count
    finally:
        asleep.kill()
        asleep.wait()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(EngineError, match=f"cannot read smaps of {gone.pid} "
                                          r"\(its reader exited with status 1\)"):
        vmas.read_vmflags(gone.pid, 1)


@pytest.mark.parametrize("general", [False, True])
def test_runs_across_staging_slots_land_in_their_places(tmp_path: Path, general: bool,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Runs of this process's memory through slots of 4 pages, runs crossing slot
    boundaries and one longer than a slot: the pages file holds each run's bytes in order
    and the pagemap their checksums, by the one-call-per-slot path and the general one."""
    if general:
        monkeypatch.setattr(pages, "_all_vm_contiguous", lambda placed: False)
    m = mmap.mmap(-1, 32 * PG, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.write(bytes(i % 251 for i in range(32 * PG)))
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    spans = [(0, 3), (5, 1), (7, 6), (14, 9), (30, 2)]  # (first page, pages)
    runs = [pages.Run(base + s * PG, n * PG, False) for s, n in spans]
    img = ImageDir.create(str(tmp_path / "img"))
    try:
        with pages.Staging(4 * PG) as staging:
            stored = pages.write_pages(img, "pagemap-1.img", "pages-1.img", runs,
                                       os.getpid(), -1, staging)
        want = b"".join(m[s * PG:(s + n) * PG] for s, n in spans)
    finally:
        del base
        m.close()
    assert stored == 21
    assert (tmp_path / "img" / "pages-1.img").read_bytes() == want
    pm = img.read_pagemap("pagemap-1.img")
    assert [(e.addr - runs[0].addr, e.nr_pages) for e in pm.entries] == [
        (s * PG, n) for s, n in spans]
    assert list(pm.sums.values) == list(pagecrc.sums_of(pm.sums.algo, want))


@pytest.mark.parametrize("io", ["direct", "buffered"])
def test_a_task_writes_its_own_pages_only_into_a_direct_file(tmp_path: Path, io: str,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """A process with 80 MiB to copy writes its long runs itself into a pages file
    written with O_DIRECT; into one written through the page cache the engine writes
    everything (64 KiB at a time: the task's long writes got large folios, whose pages
    this VM's host handed back, and took 26-194 ms for 64 MiB)."""
    code = ("import mmap, time\n"
            "m = mmap.mmap(-1, 80 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n"
            "m.write(b'x' * (80 << 20))\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        monkeypatch.setenv("ENGINE_PAGES_IO", io)
        stats = dump(child.pid, str(tmp_path / "img"), leave_running=True)
    finally:
        child.kill()
        child.wait()
    assert stats.pages >= 80 << 8
    assert (stats.task_written >= 80 << 20) == (io == "direct")
