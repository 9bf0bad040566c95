"""Incremental dumps: pre-dump arms userfaultfd write-protect tracking; the next dump
records unwritten pages as in the parent image and copies only what changed, a moved
VMA included. The holder that keeps the tracking between runs goes away afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine.dump import track
from engine.images import PE_PARENT, PE_PRESENT, load
from tests.engine.dump_support import run_engine

PG = 4096

DIRTIER_C = r"""
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#define N 64
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
int main(void) {
    unsigned char *a = mmap(0, N * 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
    unsigned char *c = mmap(0, N * 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
    unsigned char *d = mmap(0, N * 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
    memset(a, 'a', N * 4096); memset(c, 'c', N * 4096); memset(d, 'd', N * 4096);
    signal(SIGUSR1, on_usr1);
    printf("%p %p %p\n", (void *)a, (void *)c, (void *)d);
    fflush(stdout);
    while (!go) pause();
    d[5 * 4096] = 'D';                       /* one page written */
    munmap(c, N * 4096);                     /* a moves to where c was: same address, */
    mremap(a, N * 4096, N * 4096, MREMAP_MAYMOVE | MREMAP_FIXED, c);  /* new content */
    printf("done\n");
    fflush(stdout);
    for (;;) pause();
}
"""


@pytest.fixture(scope="module")
def dirtier_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dirtier binary."""
    d = tmp_path_factory.mktemp("dirtier")
    (d / "dirtier.c").write_text(DIRTIER_C)
    subprocess.run(["gcc", "-O1", "-o", str(d / "dirtier"), str(d / "dirtier.c")],
                   check=True, timeout=60)
    return d / "dirtier"


def _page(img, pid: int, addr: int) -> tuple[int, bytes | None]:
    """(flags of the pagemap entry holding addr, first byte stored here or None)."""
    t = img.tasks[pid]
    for e, off in zip(t.pagemap.entries, t.pagemap.offsets):
        if e.addr <= addr < e.end:
            if e.flags & PE_PRESENT:
                with img.dir.pages_reader(t.mm.pages, t.pagemap) as r:
                    return e.flags, bytes(r.view()[off + addr - e.addr:][:1])
            return e.flags, None
    return 0, None


def test_pre_dump_then_incremental_dump(dirtier_bin: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen([str(dirtier_bin)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        a, c, d = (int(x, 16) for x in proc.stdout.readline().split())
        pre, inc = tmp_path / "pre", tmp_path / "inc"
        res = run_engine("pre-dump", "-t", str(proc.pid), "-D", str(pre))
        assert res.returncode == 0, res.stderr
        assert load(str(pre)).inventory.kind == "pre-dump"
        assert proc.poll() is None  # a pre-dump leaves the task running

        os.kill(proc.pid, signal.SIGUSR1)
        assert proc.stdout.readline().strip() == "done"
        res = run_engine("dump", "-t", str(proc.pid), "-D", str(inc),
                         "--prev-images-dir", "../pre")
        assert res.returncode == 0, res.stderr
        assert proc.wait(timeout=10) == -signal.SIGKILL

        img = load(str(inc))
        assert img.inventory.parent == "../pre"
        assert img.parent() is not None
        pid = proc.pid
        # unwritten pages of d: in the parent; the written one: copied
        assert _page(img, pid, d)[0] == PE_PARENT
        assert _page(img, pid, d + 5 * PG) == (PE_PRESENT, b"D")
        # the VMA moved onto c's old address: copied (its pages were never written, and
        # the parent has different data there)
        for i in (0, 1, N - 1):
            assert _page(img, pid, c + i * PG) == (PE_PRESENT, b"a")
        # no private copies of untouched file mappings (libraries, the binary): uffd-wp
        # markers in their holes must not pass for data
        mm = img.tasks[pid].mm
        assert mm is not None
        untouched = [v for v in mm.vmas if v.kind == "file" and "ac" not in v.vmflags]
        assert len(untouched) > 3  # libc, ld.so, the binary: no anon_vma, no private page
        for v in untouched:
            assert _page(img, pid, v.start)[0] != PE_PRESENT, v
        # a's old range is gone
        assert _page(img, pid, a) == (0, None)
        assert not any(v.start <= a < v.end for v in mm.vmas)
        # nothing to hand over any more: the holder was consumed
        assert track.fetch(str(pre)) == {}
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


N = 64


def test_holder_quits_when_the_task_exits(dirtier_bin: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen([str(dirtier_bin)], stdout=subprocess.PIPE, text=True)
    pid = proc.pid
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        res = run_engine("pre-dump", "-t", str(proc.pid), "-D", str(tmp_path / "pre"))
        assert res.returncode == 0, res.stderr
        holders = _holders(proc.pid)
        assert len(holders) == 1, f"memory-tracking holders of {proc.pid}: {holders}"
    finally:
        proc.kill()
        proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while _holders(pid):
        assert time.monotonic() < deadline, "the holder outlived the tracked task"
        time.sleep(0.02)
    assert track.fetch(str(tmp_path / "pre")) == {}


def _holders(of_pid: int) -> list[int]:
    """Pids of memory-tracking holders (their comm is set for exactly this) that watch
    `of_pid` (they hold a pidfd for it: fdinfo "Pid:" line)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if Path(f"/proc/{name}/comm").read_text().strip() != "engine-memtrack":
                continue
            for fd in os.listdir(f"/proc/{name}/fdinfo"):
                info = Path(f"/proc/{name}/fdinfo/{fd}").read_text()
                if f"Pid:\t{of_pid}\n" in info:
                    out.append(int(name))
                    break
        except OSError:
            continue
    return out


def test_dump_against_an_untracked_parent_copies_everything(dirtier_bin: Path,
                                                            tmp_path: Path) -> None:
    proc = subprocess.Popen([str(dirtier_bin)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        base = tmp_path / "base"
        res = run_engine("dump", "-t", str(proc.pid), "-D", str(base), "--leave-running")
        assert res.returncode == 0, res.stderr
        res = run_engine("dump", "-t", str(proc.pid), "-D", str(tmp_path / "next"),
                         "--prev-images-dir", str(base), "--leave-running")
        assert res.returncode == 0, res.stderr
        img = load(str(tmp_path / "next"))
        flags = {e.flags for e in img.tasks[proc.pid].pagemap.entries}
        assert flags == {PE_PRESENT}
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _tracked_vmas(pid: int) -> int:
    """How many VMAs of pid are registered with a userfaultfd (VmFlags "uw")."""
    text = Path(f"/proc/{pid}/smaps").read_text()
    return sum(" uw" in line for line in text.splitlines() if line.startswith("VmFlags:"))


def test_failed_incremental_dump_drops_tracking(dirtier_bin: Path, tmp_path: Path) -> None:
    """A dump that fails after taking the tracking over must not leave it armed: the pages
    it re-protected would look unchanged to the next dump. The next dump against the same
    parent is then complete, and the task is untouched."""
    proc = subprocess.Popen([str(dirtier_bin)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        pre = tmp_path / "pre"
        res = run_engine("pre-dump", "-t", str(proc.pid), "-D", str(pre))
        assert res.returncode == 0, res.stderr
        assert _tracked_vmas(proc.pid) > 0
        res = run_engine("dump", "-t", str(proc.pid), "-D", str(tmp_path / "bad"),
                         "--prev-images-dir", str(pre), "--leave-running",
                         env={"ENGINE_FAULT": "files"})
        assert res.returncode == 1 and "fault injected" in res.stderr
        assert _tracked_vmas(proc.pid) == 0
        res = run_engine("dump", "-t", str(proc.pid), "-D", str(tmp_path / "next"),
                         "--prev-images-dir", str(pre), "--leave-running")
        assert res.returncode == 0, res.stderr
        img = load(str(tmp_path / "next"))
        pm = img.tasks[proc.pid].pagemap
        assert pm is not None and {e.flags for e in pm.entries} == {PE_PRESENT}
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_failed_pre_dump_arms_nothing(dirtier_bin: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen([str(dirtier_bin)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        res = run_engine("pre-dump", "-t", str(proc.pid), "-D", str(tmp_path / "pre"),
                         env={"ENGINE_FAULT": "write"})
        assert res.returncode == 1 and "fault injected" in res.stderr
        assert _tracked_vmas(proc.pid) == 0 and not _holders(proc.pid)
        assert not (tmp_path / "pre").exists()
    finally:
        proc.kill()
        proc.wait(timeout=10)
