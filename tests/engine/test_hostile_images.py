"""Hostile images (issue 10's repros): each is refused by restore (and show) with one
`engine: error:` line naming the file and what is wrong, before any task exists, and
nothing hangs. Edits that a checksum would catch are resealed (image_tools.reseal) so the
validator behind the checksums is what refuses them; raw damage is left unsealed."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine import cr_support as cr
from tests.engine.image_tools import reseal

NOBODY = 65534


@pytest.fixture(autouse=True)
def _subreaper() -> None:
    cr.become_subreaper()


@pytest.fixture(scope="module")
def dumped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[cr.ZdtmTest, Path]]:
    """pipe_data (a pipe holding data, an open file), dumped and killed: (test, images)."""
    cr.become_subreaper()
    tmp = tmp_path_factory.mktemp("hostile")
    t = cr.ZdtmTest.start("pipe_data", tmp / "work")
    images = tmp / "img"
    try:
        d = cr.engine("dump", "-t", str(t.pid), "-D", str(images))
        assert d.returncode == 0, d.stderr
        cr.wait_gone(t.pid)
        yield t, images
    finally:
        t.cleanup()


@pytest.fixture
def image(dumped: tuple[cr.ZdtmTest, Path], tmp_path: Path) -> tuple[cr.ZdtmTest, Path]:
    """A private copy of the dumped image (modes kept: dir 0700, files 0600)."""
    t, pristine = dumped
    copy = tmp_path / "img"
    shutil.copytree(pristine, copy)
    return t, copy


def _edit(path: Path, fn: Callable[[Any], None]) -> None:
    data = json.loads(path.read_bytes())
    fn(data)
    path.write_text(json.dumps(data))


def _refused(t: cr.ZdtmTest, images: Path, *words: str, show: bool = True) -> str:
    """restore (and show) fail with one error line holding every word; no task left."""
    for cmd in (["restore", "-D", str(images), "-d"], ["show", str(images)])[:2 if show else 1]:
        r = cr.engine(*cmd, timeout=30)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1, r.stderr
        assert len(lines) == 1 and lines[0].startswith("engine: error: "), r.stderr
        for w in words:
            assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    assert not os.path.exists(f"/proc/{t.pid}"), "a task was left behind"
    print(lines[0], file=sys.stderr)
    return lines[0]


def _pipe_ends(data: Any) -> list[Any]:
    return [f for f in data["files"] if f["type"] == "pipe"]


def test_parent_link_to_itself(image: tuple[cr.ZdtmTest, Path]) -> None:
    t, d = image
    _edit(d / "inventory.json", lambda inv: inv.__setitem__("parent", "./"))
    reseal(d)
    _refused(t, d, "inventory.json", "parent link './' is this image")


def test_parent_cycle_through_another_dir(image: tuple[cr.ZdtmTest, Path]) -> None:
    """A -> B -> A: the chain is followed until it loops, then refused."""
    t, d = image
    other = d.parent / "other"
    shutil.copytree(d, other)
    _edit(d / "inventory.json", lambda inv: inv.__setitem__("parent", "../other"))
    _edit(other / "inventory.json", lambda inv: inv.__setitem__("parent", "../img"))
    reseal(d)
    reseal(other)
    _refused(t, d, "loops back")


def test_xstate_of_another_size(image: tuple[cr.ZdtmTest, Path]) -> None:
    t, d = image
    def grow(core: Any) -> None:
        core["threads"][0]["xstate_size"] += 64
    _edit(d / f"core-{t.pid}.json", grow)
    reseal(d)
    _refused(t, d, f"core-{t.pid}.json: thread {t.pid}: xstate of", "this CPU's xstate is",
             show=False)


def test_xstate_of_impossible_size(image: tuple[cr.ZdtmTest, Path]) -> None:
    t, d = image
    _edit(d / f"core-{t.pid}.json", lambda c: c["threads"][0].__setitem__("xstate_size", 100))
    reseal(d)
    _refused(t, d, f"core-{t.pid}.json", "xstate size 100 is not an XSAVE area")


def test_missing_register(image: tuple[cr.ZdtmTest, Path]) -> None:
    t, d = image
    _edit(d / f"core-{t.pid}.json", lambda c: c["threads"][0]["regs"].pop("rip"))
    reseal(d)
    _refused(t, d, f"core-{t.pid}.json", "regs missing ['rip']")


def test_unknown_membarrier_registration(image: tuple[cr.ZdtmTest, Path]) -> None:
    """A bit that is no REGISTER_* command would be run as another membarrier command."""
    t, d = image
    _edit(d / f"core-{t.pid}.json", lambda c: c.__setitem__("membarrier", 1 << 3))
    reseal(d)
    _refused(t, d, f"core-{t.pid}.json", "bad membarrier registrations 0x8")


@pytest.mark.parametrize("reg,value", [("cs", 0x10033), ("ss", 0), ("fs", 0x10),
                                       ("gs_base", 1 << 63)])
def test_register_the_kernel_refuses(image: tuple[cr.ZdtmTest, Path], reg: str,
                                     value: int) -> None:
    t, d = image
    _edit(d / f"core-{t.pid}.json", lambda c: c["threads"][0]["regs"].__setitem__(reg, value))
    reseal(d)
    _refused(t, d, f"core-{t.pid}.json", f"reg {reg} {value:#x}")


@pytest.mark.parametrize("name", ["inventory.json", "files.json", "PAGES"])
def test_fifo_instead_of_an_image_file(image: tuple[cr.ZdtmTest, Path], name: str) -> None:
    """Opening never blocks: a FIFO is refused at once (a hang would hit the timeout)."""
    t, d = image
    name = name.replace("PAGES", f"pages-{t.pid}.img")
    (d / name).unlink()
    os.mkfifo(d / name, 0o600)
    _refused(t, d, str(d / name), "not a regular file")


def test_pipe_data_symlinked_out_of_the_image(image: tuple[cr.ZdtmTest, Path]) -> None:
    t, d = image
    (data,) = d.glob("pipe-*.data")
    data.unlink()
    data.symlink_to("/etc/passwd")
    _refused(t, d, str(data), "is a symbolic link")
    reseal(d)  # even with the checksums made to agree
    _refused(t, d, str(data), "symbolic link")


def test_pipe_data_hard_linked_from_outside(image: tuple[cr.ZdtmTest, Path]) -> None:
    t, d = image
    (data,) = d.glob("pipe-*.data")
    outside = d.parent / "outside"
    outside.write_bytes(data.read_bytes())
    data.unlink()
    os.link(outside, data)
    _refused(t, d, str(data), "has 2 links")


def test_pipe_ends_with_different_inodes(image: tuple[cr.ZdtmTest, Path]) -> None:
    t, d = image
    _edit(d / "files.json", lambda f: _pipe_ends(f)[1].__setitem__("pipe_ino", 12345))
    reseal(d)
    _refused(t, d, "files.json", "pipe_ino 12345 is not its inode")


def test_file_flags_bit_31(image: tuple[cr.ZdtmTest, Path]) -> None:
    t, d = image
    _edit(d / "files.json", lambda f: f["files"][1].__setitem__("flags",
                                                                  f["files"][1]["flags"] | 1 << 31))
    reseal(d)
    _refused(t, d, "files.json", "bad flags")


@pytest.mark.parametrize("name", ["PAGES", "pipe", "files.json", "inventory.json"])
def test_damaged_data_fails_its_checksum(image: tuple[cr.ZdtmTest, Path], name: str) -> None:
    t, d = image
    path = {"PAGES": d / f"pages-{t.pid}.img", "pipe": next(d.glob("pipe-*.data"))}.get(
        name, d / name)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x20
    path.write_bytes(bytes(raw))
    _refused(t, d, str(path), "mismatch")


def test_executable_replaced_after_the_dump(image: tuple[cr.ZdtmTest, Path]) -> None:
    """A different file at the executable's path is refused; --allow-changed-files
    restores anyway and says which file it accepted."""
    t, d = image
    exe = t.workdir / t.name
    saved, st = exe.read_bytes(), exe.stat()
    try:
        with open(exe, "ab") as f:
            f.write(b"\0")
        _refused(t, d, f"mm-{t.pid}.img", f"file {exe} changed since the dump", show=False)
        r = cr.engine("restore", "-D", str(d), "-d", "--allow-changed-files")
        assert r.returncode == 0, r.stderr
        assert f"engine: warning: {d}/mm-{t.pid}.img: file {exe} changed" in r.stderr
        assert "PASS" in t.stop()
    finally:
        exe.write_bytes(saved)
        os.utime(exe, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_world_writable_dir_owned_by_nobody(image: tuple[cr.ZdtmTest, Path]) -> None:
    """Images anyone could have written are refused unless --trust-images says so."""
    if os.geteuid() != 0:
        pytest.skip("chown to nobody needs root")
    t, d = image
    os.chown(d, NOBODY, NOBODY)
    os.chmod(d, 0o777)
    _refused(t, d, str(d), "owned by uid 65534")
    os.chown(d, 0, 0)
    _refused(t, d, str(d), "mode 0777 is writable by others")
    os.chmod(d, 0o700)
    os.chmod(d / "files.json", 0o666)
    _refused(t, d, str(d / "files.json"), "mode 0666")
    r = cr.engine("restore", "-D", str(d), "-d", "--trust-images")
    assert r.returncode == 0, r.stderr
    assert "PASS" in t.stop()


def test_pristine_copy_still_restores(image: tuple[cr.ZdtmTest, Path]) -> None:
    """The image the repros start from is fine: every refusal above is the edit's."""
    t, d = image
    r = cr.engine("restore", "-D", str(d), "-d")
    assert r.returncode == 0, r.stderr
    assert "PASS" in t.stop()


def test_damaged_page_read_by_the_task_is_refused(tmp_path: Path) -> None:
    """mem_anon's 12 MiB are long runs: read and summed by the task at restore (a process
    this small is written by the engine at dump: selfwrite.MIN_TOTAL). One flipped bit in
    their middle fails the restore with one line naming the file and the page, and leaves
    no task."""
    t = cr.ZdtmTest.start("mem_anon", tmp_path / "work")
    images = tmp_path / "img"
    try:
        d = cr.engine("dump", "-t", str(t.pid), "-D", str(images))
        assert d.returncode == 0, d.stderr
        cr.wait_gone(t.pid)
        pages = images / f"pages-{t.pid}.img"
        raw = bytearray(pages.read_bytes())
        at = len(raw) // 2 // 4096 * 4096
        raw[at + 100] ^= 0x01
        pages.write_bytes(bytes(raw))
        _refused(t, images, str(pages), f"checksum mismatch in the page at byte {at}")
    finally:
        t.cleanup()


@pytest.fixture(scope="module")
def dumped_shared(tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[cr.ZdtmTest, Path]]:
    """shared_tables (a child sharing the fd table and fs info, one sharing the address
    space and signal handlers), dumped and killed: (test, images)."""
    cr.become_subreaper()
    tmp = tmp_path_factory.mktemp("hostile-shared")
    t = cr.ZdtmTest.start("shared_tables", tmp / "work")
    images = tmp / "img"
    try:
        kids = [int(p) for p in
                Path(f"/proc/{t.pid}/task/{t.pid}/children").read_text().split()]
        d = cr.engine("dump", "-t", str(t.pid), "-D", str(images))
        assert d.returncode == 0, d.stderr
        for pid in [t.pid, *kids]:
            cr.wait_gone(pid)
        yield t, images
    finally:
        t.cleanup()


@pytest.fixture
def shared_image(dumped_shared: tuple[cr.ZdtmTest, Path], tmp_path: Path
                 ) -> tuple[cr.ZdtmTest, Path]:
    """A private copy of the dumped shared_tables image."""
    t, pristine = dumped_shared
    copy = tmp_path / "img"
    shutil.copytree(pristine, copy)
    return t, copy


def _sharer(inv: Any, table: str) -> Any:
    """The inventory entry of the task sharing `table` with its parent."""
    return next(e for e in inv["tasks"] if table in e.get("shared", []))


@pytest.mark.parametrize(("edit", "words"), [
    (lambda inv: _sharer(inv, "files")["shared"].append("net"), "bad shared tables"),
    (lambda inv: _sharer(inv, "vm")["shared"].remove("vm"),
     "shares the signal handlers without the address space"),
    (lambda inv: next(e for e in inv["tasks"] if e["pid"] == inv["root_pid"])
     .__setitem__("shared", ["files"]), "shares tables with a parent that is not a live task"),
    (lambda inv: _sharer(inv, "files").__setitem__("ppid", _sharer(inv, "vm")["pid"]),
     "shares its parent's address space and has children"),
], ids=["unknown table", "sighand without vm", "root shares", "vm child with a child"])
def test_shared_tables_forged_in_the_inventory(shared_image: tuple[cr.ZdtmTest, Path],
                                              edit: Callable[[Any], None], words: str) -> None:
    t, d = shared_image
    _edit(d / "inventory.json", edit)
    reseal(d)
    _refused(t, d, "inventory.json", words)


def test_task_sharing_an_fd_table_with_other_fds(shared_image: tuple[cr.ZdtmTest, Path]) -> None:
    """One fd table, two fd lists: refused, naming the task's core file."""
    t, d = shared_image
    pid = _sharer(json.loads((d / "inventory.json").read_bytes()), "files")["pid"]
    _edit(d / f"core-{pid}.json", lambda core: core["fds"].pop())
    reseal(d)
    _refused(t, d, f"core-{pid}.json", f"shares the files table of its parent {t.pid} but "
                                       "holds other values")


def test_task_no_longer_sharing_an_address_space_has_no_memory(
        shared_image: tuple[cr.ZdtmTest, Path]) -> None:
    """A task the image says has an address space of its own needs its memory records."""
    t, d = shared_image
    pid = _sharer(json.loads((d / "inventory.json").read_bytes()), "vm")["pid"]
    _edit(d / "inventory.json", lambda inv: _sharer(inv, "vm").__setitem__("shared", []))
    reseal(d)
    _refused(t, d, f"mm-{pid}.img")


def test_pristine_shared_copy_still_restores(shared_image: tuple[cr.ZdtmTest, Path]) -> None:
    """The shared_tables image is fine (and `show` says who shares what)."""
    t, d = shared_image
    shown = cr.engine("show", str(d))
    assert shown.returncode == 0, shown.stderr
    assert "shares files, fs with its parent" in shown.stdout
    assert "shares vm, sighand with its parent" in shown.stdout
    r = cr.engine("restore", "-D", str(d), "-d")
    assert r.returncode == 0, r.stderr
    assert "PASS" in t.stop()


@pytest.fixture(scope="module")
def mapped_dump(tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[cr.ZdtmTest, Path]]:
    """mmap_deleted (mappings of unlinked files, with and without an fd), dumped."""
    cr.become_subreaper()
    tmp = tmp_path_factory.mktemp("hostile-mapped")
    t = cr.ZdtmTest.start("mmap_deleted", tmp / "work")
    images = tmp / "img"
    try:
        d = cr.engine("dump", "-t", str(t.pid), "-D", str(images))
        assert d.returncode == 0, d.stderr
        for pid in cr.tree_of(t.pid) + [t.pid]:
            cr.wait_gone(pid)
        yield t, images
    finally:
        t.cleanup()


@pytest.fixture
def mapped_image(mapped_dump: tuple[cr.ZdtmTest, Path], tmp_path: Path
                 ) -> tuple[cr.ZdtmTest, Path]:
    t, pristine = mapped_dump
    copy = tmp_path / "img"
    shutil.copytree(pristine, copy)
    return t, copy


def test_mapping_of_an_unlinked_file_not_saved(mapped_image: tuple[cr.ZdtmTest, Path]
                                               ) -> None:
    t, d = mapped_image
    _edit(d / "files.json", lambda f: f.__setitem__("mapped", []))
    reseal(d)
    _refused(t, d, f"mm-{t.pid}.img", "is not in files.json's mapped files")


def test_mapped_file_that_is_no_unlinked_file(mapped_image: tuple[cr.ZdtmTest, Path]) -> None:
    t, d = mapped_image

    def to_dev_null(f: Any) -> None:
        null = next(r for r in f["files"] if r["path"] == "/dev/null")
        f["mapped"][0]["file_id"] = null["id"]
    _edit(d / "files.json", to_dev_null)
    reseal(d)
    _refused(t, d, "files.json", "is not an unlinked file with saved content")


def test_cwd_file_that_is_no_removed_directory(mapped_image: tuple[cr.ZdtmTest, Path]
                                               ) -> None:
    t, d = mapped_image
    _edit(d / f"core-{t.pid}.json", lambda c: c.__setitem__("cwd_file", 0))
    reseal(d)
    _refused(t, d, f"core-{t.pid}.json", "cwd_file 0 is not a removed directory")


def test_ctty_of_a_task_without_a_terminal(mapped_image: tuple[cr.ZdtmTest, Path]) -> None:
    t, d = mapped_image

    def to_test(f: Any) -> None:
        null = next(r for r in f["files"] if r["path"] == "/dev/null")
        null["ctty_of"] = t.pid
    _edit(d / "files.json", to_test)
    reseal(d)
    _refused(t, d, "files.json", f"ctty_of {t.pid} is not a session leader with a "
                                 "controlling terminal")
