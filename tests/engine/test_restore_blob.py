"""The in-target syscall table runner (engine/kernel/blob.py) on a throwaway child."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from array import array
from pathlib import Path

import pytest

from engine.kernel import blob, uapi
from tests.engine.blob_support import REGION, REGION_SIZE


def test_code_matches_source(tmp_path: Path) -> None:
    """CODE is exactly what blob.S assembles to (when the assembler is installed)."""
    if not shutil.which("as") or not shutil.which("objcopy"):
        pytest.skip("binutils (as, objcopy) not installed")
    src = Path(blob.__file__).with_name("blob.S")
    obj, raw = tmp_path / "blob.o", tmp_path / "blob.bin"
    subprocess.run(["as", "-o", str(obj), str(src)], check=True, timeout=30)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(raw)],
                   check=True, timeout=30)
    assert raw.read_bytes() == blob.CODE
    assert len(blob.CODE) <= blob.CODE_AREA
    assert blob.CODE[blob.FAIL_OFFSET] == 0xCC and blob.CODE[blob.DONE_OFFSET] == 0xCC
    assert blob.CODE[blob.SYSCALL_OFFSET:blob.SYSCALL_OFFSET + 2] == b"\x0f\x05"


def test_table_uses_saved_value_and_stores(runner: blob.BlobRunner) -> None:
    """open -> fcntl(saved, F_DUPFD, 700) stored in a slot -> close(saved)."""
    t = blob.Table()
    path = t.cstr("/dev/null")
    slot = t.slot()
    t.add(uapi.SYS_openat, uapi.AT_FDCWD, path, os.O_RDONLY, 0, save=True, what="open")
    t.add(uapi.SYS_fcntl, 0, uapi.F_DUPFD, 700, use_saved=1, store=slot, what="dup")
    t.add(uapi.SYS_close, 0, use_saved=1, what="close")
    opened = set(os.listdir(f"/proc/{runner.pid}/fd"))
    runner.run(t)
    assert runner.read_slot(slot) >= 700
    fd = runner.read_slot(slot)
    assert os.readlink(f"/proc/{runner.pid}/fd/{fd}") == "/dev/null"
    # the temporary fd of the open is gone again
    assert set(os.listdir(f"/proc/{runner.pid}/fd")) == opened | {str(fd)}


def test_first_failure_stops_and_names_entry(runner: blob.BlobRunner) -> None:
    """A failing entry stops the table there; later entries never run."""
    t = blob.Table()
    slot = t.slot()
    t.add(uapi.SYS_getpid, store=slot, what="getpid")
    t.add(uapi.SYS_close, 987654, what="close bogus fd")
    t.add(uapi.SYS_getppid, store=slot, what="getppid")
    with pytest.raises(blob.TableError) as ei:
        runner.run(t)
    assert ei.value.errno == errno.EBADF
    assert ei.value.index == 1
    assert "close bogus fd" in str(ei.value)
    assert runner.read_slot(slot) == runner.pid


def test_may_fail_entry_continues(runner: blob.BlobRunner) -> None:
    """may_fail entries do not stop the table."""
    t = blob.Table()
    slot = t.slot()
    t.add(uapi.SYS_close, 987654, may_fail=True)
    t.add(uapi.SYS_getpid, store=slot)
    runner.run(t)
    assert runner.read_slot(slot) == runner.pid


def test_many_entries_one_run(runner: blob.BlobRunner) -> None:
    """Thousands of mmaps in one run (the maps06 shape) end with every VMA in place."""
    t = blob.Table()
    base = REGION + REGION_SIZE + (1 << 30)
    n = 5000
    for i in range(n):
        # alternate protections so the kernel cannot merge neighbours
        prot = uapi.PROT_READ if i % 2 else uapi.PROT_READ | uapi.PROT_WRITE
        t.add(uapi.SYS_mmap, base + i * 4096, 4096, prot,
              uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS | uapi.MAP_FIXED, -1, 0)
    runner.run(t)
    maps = Path(f"/proc/{runner.pid}/maps").read_text().splitlines()
    starts = {int(line.split("-")[0], 16) for line in maps}
    assert all(base + i * 4096 in starts for i in range(n))


def _mmap_rows(base: int, n: int, fd: int = -1) -> bytes:
    """mmap arguments of n one-page mappings at base, alternating protections so that the
    kernel cannot merge neighbours."""
    rows = array("q")
    for i in range(n):
        prot = uapi.PROT_READ if i % 2 else uapi.PROT_READ | uapi.PROT_WRITE
        rows.extend((base + i * 4096, 4096, prot,
                     uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS | uapi.MAP_FIXED, fd, 0))
    return rows.tobytes()


def test_rows_entry_runs_once_per_row(runner: blob.BlobRunner) -> None:
    """A rows entry maps thousands of VMAs; entries after it run too, the saved value
    stands in for an argument of every row."""
    t = blob.Table()
    base = REGION + REGION_SIZE + (1 << 30)
    n = 5000
    slot = t.slot()
    t.add(uapi.SYS_getpid, save=True)
    t.rows(uapi.SYS_mmap, _mmap_rows(base, n))
    t.rows(uapi.SYS_getppid, bytes(3 * blob.ROW_SIZE), use_saved=1)
    t.add(uapi.SYS_getpid, store=slot)
    runner.run(t)
    assert runner.read_slot(slot) == runner.pid
    maps = Path(f"/proc/{runner.pid}/maps").read_text().splitlines()
    starts = {int(line.split("-")[0], 16) for line in maps}
    assert all(base + i * 4096 in starts for i in range(n))


def _filled(n: int) -> tuple[blob.Table, blob.DataRef, blob.DataRef]:
    """A table with a stray byte (data no longer 8-aligned), then n rows and n structs."""
    t = blob.Table()
    t.cstr(b"")
    structs = t.data(bytes(range(24)) * n)
    rows = t.rows(uapi.SYS_getpid, bytes(blob.ROW_SIZE * n))
    return t, rows, structs


def test_strided_patches_are_the_single_ones() -> None:
    """patch_addresses writes what patch_address of each pointer would, and nothing
    else; misaligned places are refused."""
    n, base = 61, 0x7F0000000000
    one, rows, structs = _filled(n)
    for i in range(n):
        one.patch_address(blob.DataRef(rows.offset + i * blob.ROW_SIZE + 8),
                          blob.DataRef(structs.offset + i * 24))
    many, rows, structs = _filled(n)
    many.patch_addresses(blob.DataRef(rows.offset + 8), n, blob.ROW_SIZE, structs, 24)
    plain, _rows, _structs = _filled(n)
    assert many.encode(base) == one.encode(base) != plain.encode(base)
    row3 = many.encode(base)[len(many) * blob.ENTRY_SIZE + rows.offset + 3 * blob.ROW_SIZE:]
    assert int.from_bytes(row3[8:16], "little") == (
        base + many.data_offset() + structs.offset + 3 * 24)
    with pytest.raises(ValueError, match="aligned"):
        many.patch_addresses(blob.DataRef(rows.offset + 4), n, blob.ROW_SIZE, structs, 24)


def test_a_prepared_table_encodes_as_a_fresh_one() -> None:
    """prepare() encodes ahead; encode() then gives the same bytes as encoding anew,
    set_entry() included; a table grown since, or another base, is encoded anew."""
    base = 0x7F0000000000

    def made() -> blob.Table:
        t = blob.Table()
        t.add(uapi.SYS_getpid)
        slot = t.slot()
        t.add(uapi.SYS_getppid, store=slot)
        t.rows(uapi.SYS_getpid, bytes(2 * blob.ROW_SIZE))
        return t

    t = made()
    t.prepare(base)
    t.set_entry(0, uapi.SYS_rseq, 0x1234, 32, 1, 0x53053053)
    fresh = made()
    fresh.set_entry(0, uapi.SYS_rseq, 0x1234, 32, 1, 0x53053053)
    assert t.encode(base) == fresh.encode(base) != made().encode(base)
    assert t.encode(base + 4096) == fresh.encode(base + 4096)
    t.add(uapi.SYS_gettid)
    fresh.add(uapi.SYS_gettid)
    assert t.encode(base) == fresh.encode(base)


def test_a_copied_table_is_its_own() -> None:
    """A copy encodes as the table it was made from, prepared or not; set_entry() on the
    copy (a task's own rseq entry) leaves the original as it was."""
    base = 0x7F0000000000
    t = blob.Table()
    t.add(uapi.SYS_getpid)
    t.rows(uapi.SYS_getpid, bytes(2 * blob.ROW_SIZE))
    assert t.copy().encode(base) == t.encode(base)
    before = t.encode(base)
    t.prepare(base)
    mine = t.copy()
    mine.set_entry(0, uapi.SYS_rseq, 0x1234, 32, 1, 0x53053053)
    assert t.encode(base) == before != mine.encode(base)
    fresh = blob.Table()
    fresh.add(uapi.SYS_rseq, 0x1234, 32, 1, 0x53053053)
    fresh.rows(uapi.SYS_getpid, bytes(2 * blob.ROW_SIZE))
    assert mine.encode(base) == fresh.encode(base)


def test_failed_row_is_named(runner: blob.BlobRunner) -> None:
    """The row that fails stops the table and is named by its index; may_fail rows go on."""
    base = REGION + REGION_SIZE + (2 << 30)
    rows = bytearray(_mmap_rows(base, 10))
    rows[7 * blob.ROW_SIZE + 8:7 * blob.ROW_SIZE + 16] = bytes(8)  # length 0: EINVAL
    t = blob.Table()
    t.rows(uapi.SYS_mmap, bytes(rows), may_fail=True, what="never".format)
    t.add(uapi.SYS_getpid, what="getpid")
    t.rows(uapi.SYS_mmap, bytes(rows), what=lambda i: f"map row {i}")
    slot = t.slot()
    t.add(uapi.SYS_getpid, store=slot)
    with pytest.raises(blob.TableError) as ei:
        runner.run(t)
    assert ei.value.errno == errno.EINVAL and (ei.value.index, ei.value.row) == (2, 7)
    assert "map row 7" in str(ei.value)
    assert runner.read_slot(slot) == 0  # never ran


def test_table_too_big_is_refused(runner: blob.BlobRunner) -> None:
    """A table that does not fit the mapped region is refused before anything runs."""
    t = blob.Table()
    t.data(bytes(REGION_SIZE))
    t.add(uapi.SYS_getpid)
    with pytest.raises(ValueError):
        runner.run(t)


def test_syscall_exit_stop_single(runner: blob.BlobRunner) -> None:
    """run_one() runs a single syscall to its exit stop, with no trap signal."""
    assert runner.run_one(uapi.SYS_getpid) == runner.pid
    assert runner.run_one(uapi.SYS_close, 987654) == -errno.EBADF
