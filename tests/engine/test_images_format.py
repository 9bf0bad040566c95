"""Image format: records round-trip, and every reader refuses truncated, corrupted or
hostile images with an error that names the file."""

from __future__ import annotations

import ctypes
import io
import json
import mmap
import os
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.errors import EngineError
from engine.images import PE_PARENT, PE_PRESENT, ImageDir, ImageError, PagemapEntry, load, names
from engine.images.imgdir import encode_pagemap
from engine.images.load import MAX_PARENT_DEPTH, XSTATE_MIN, _xstate
from engine.images.records import (
    FORMAT_NAME,
    FORMAT_VERSION,
    REG_NAMES,
    Creds,
    FdEntry,
    FileRecord,
    FilesImage,
    Inventory,
    MmCore,
    ShmemEntry,
    TaskCore,
    TaskEntry,
    ThreadCore,
    Vma,
    xstate_text,
)
from engine.images.show import show
from engine.kernel import pagecrc
from tests.engine.image_tools import (
    V_DELETED,
    V_END,
    V_KIND,
    V_PATH,
    V_PROT,
    V_SHMEM,
    V_START,
    V_VMFLAGS,
    edit_mm,
    edit_mm_bytes,
    edit_vma_rows,
    mm_parts,
    reseal,
    vma_rows,
)

PID = 4242
PG = 4096
REGS = {name: 0 for name in REG_NAMES} | {"rip": 0x1000, "rsp": 0x2000, "cs": 0x33,
                                           "ss": 0x2b}


def make_image(path: Path) -> None:
    """A small but complete image: one task, two VMAs, 3 private pages, a shmem object,
    a pipe with data."""
    img = ImageDir.create(str(path))
    sid = names.shmem_id(77)
    img.write_json(names.FILES, FilesImage([
        FileRecord(0, "chr", 2, path="/dev/null"),
        FileRecord(1, "pipe", 0, inode=99, pipe_ino=99, content=names.pipe_content(99)),
        FileRecord(2, "pipe", 1, inode=99, pipe_ino=99, content=names.pipe_content(99)),
    ]))
    img.write_bytes(names.pipe_content(99), b"data")
    img.write_json(names.core(PID), TaskCore(
        pid=PID, ppid=1, pgid=PID, sid=PID, state="alive", comm="t",
        threads=[ThreadCore(PID, REGS, "01", 0, xstate_size=1024)],
        sigactions=[], creds=Creds([0] * 4, [0] * 4, [], 0, 0, 0, 0, 0), limits=[], cwd="/",
        root="/", umask=0o22, personality=0, fds=[FdEntry(0, 0), FdEntry(3, 1, True)]))
    mm = MmCore(
        *([0] * 11), auxv=[6, 4096, 0, 0],
        vmas=[Vma(0x10000, 0x14000, 3, 0x22, 0, "anon", vmflags=["rd", "wr"]),
              Vma(0x20000, 0x24000, 3, 0x21, 0, "shmem", shmem_id=sid)],
        pages=names.pages(PID))
    with img.pages_writer(names.pages(PID), 3) as w:
        w.write_at(b"a" * PG + b"b" * PG + b"c" * PG, 0)
    img.write_mm(names.mm(PID), mm, encode_pagemap([PagemapEntry(0x10000, 2, PE_PRESENT),
                                                    PagemapEntry(0x13000, 1, PE_PRESENT)],
                                                   w.sums))
    with img.pages_writer(names.shmem_pages(sid), 1) as w:
        w.write_at(b"s" * PG, 0)
    img.write_bytes(names.shmem_pagemap(sid), encode_pagemap([PagemapEntry(PG, 1, PE_PRESENT)],
                                                             w.sums))
    img.write_inventory(names.INVENTORY, Inventory(
        FORMAT_NAME, FORMAT_VERSION, "dump", PID, [TaskEntry(PID, 1, PID, PID, "alive", [PID])],
        shmem=[ShmemEntry(sid, 4 * PG, 77, names.shmem_pagemap(sid), names.shmem_pages(sid))]))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A valid image directory."""
    make_image(tmp_path / "img")
    return tmp_path / "img"


def test_round_trip(image: Path) -> None:
    img = load(str(image))
    t = img.tasks[PID]
    assert t.core.fds[1] == FdEntry(3, 1, True)
    assert t.mm is not None and t.mm.vmas[1].shmem_id == "shmem-77"
    assert t.pagemap is not None and t.pagemap.offsets == [0, 2 * PG]
    with img.dir.pages_reader(t.mm.pages, t.pagemap) as r:
        assert bytes(r.view()[2 * PG:2 * PG + 3]) == b"ccc"
        assert r.address != 0
    assert img.shmem["shmem-77"].pagemap.entries[0].addr == PG
    assert oct(image.stat().st_mode & 0o777) == "0o700"
    assert {oct(p.stat().st_mode & 0o777) for p in image.iterdir()} == {"0o600"}


@pytest.mark.parametrize("area", [bytes(XSTATE_MIN), b"\1" + bytes(2695), bytes(1000) + b"\7",
                                  b"\0\5" * 5504, os.urandom(11008)],
                         ids=["zeros", "first byte", "last byte", "alternate", "random"])
def test_xstate_in_the_core_record_comes_back_byte_for_byte(area: bytes) -> None:
    """The dumper's text for an XSAVE area (trailing zeros left out) loads as that very
    area, whatever its last non-zero byte."""
    th = ThreadCore(PID, REGS, xstate_text(area), 0, xstate_size=len(area))
    assert len(th.xstate or "") <= 2 * len(area.rstrip(b"\0"))
    assert _xstate(th, "here") == area


def test_show(image: Path) -> None:
    out = io.StringIO()
    show(str(image), out)
    text = out.getvalue()
    assert f"task {PID}" in text and "2 runs, 3 pages stored" in text
    assert "shmem shmem-77" in text and "pipe:[99]" in text


def _edit_json(name: str, fn: Callable[[Any], None]) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        data = json.loads((d / name).read_text())
        fn(data)
        (d / name).write_text(json.dumps(data))
    return edit


def _truncate(name: str, keep: int) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        raw = (d / name).read_bytes()
        (d / name).write_bytes(raw[:keep])
    return edit


def _set(path: list[Any], value: object) -> Callable[[Any], None]:
    def fn(data: Any) -> None:
        obj = data
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value
    return fn


def _vma_rows(fn: Callable[[list[list[int]]], None]) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        edit_vma_rows(d / names.mm(PID), fn)
    return edit


def _row_set(row: int, field: int, value: int) -> Callable[[list[list[int]]], None]:
    def fn(rows: list[list[int]]) -> None:
        rows[row][field] = value
    return fn


def _vmas_bytes(edit: Callable[[bytearray], None]) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        edit_mm_bytes(d / names.mm(PID), 1, edit)
    return apply


def _unterminate(raw: bytearray) -> None:
    """The string table's last NUL made a byte of a string."""
    raw[-1] = ord("x")


def _pagemap_bytes(edit: Callable[[bytearray], None]) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        edit_mm_bytes(d / names.mm(PID), 2, edit)
    return apply


def _first_entry_at(addr: int) -> Callable[[bytearray], None]:
    def edit(raw: bytearray) -> None:
        raw[36:44] = addr.to_bytes(8, "little")
    return edit


def _second_entry_at(addr: int) -> Callable[[bytearray], None]:
    def edit(raw: bytearray) -> None:
        raw[52:60] = addr.to_bytes(8, "little")
    return edit


def _last_entry_in_parent(raw: bytearray) -> None:
    raw[64] = PE_PARENT  # flags of entry 2 (header 36 + 16 + 12)
    raw[24:32] = (2).to_bytes(8, "little")  # header: 2 pages stored
    del raw[-4:]  # and 2 page checksums


def _edit_mm(fn: Callable[[Any], None]) -> Callable[[Path], None]:
    return lambda d: edit_mm(d / names.mm(PID), fn)


def _truncate_at_newline(name: str) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        (d / name).write_bytes((d / name).read_bytes().split(b"\n")[0])
    return edit


def _table_size(more: int) -> Callable[[Path], None]:
    """The mm file's u64 VMA table size made `more` bytes larger (the bytes after it
    kept)."""
    def edit(d: Path) -> None:
        record, rest = (d / names.mm(PID)).read_bytes().split(b"\n", 1)
        size = int.from_bytes(rest[:8], "little") + more
        (d / names.mm(PID)).write_bytes(record + b"\n" + size.to_bytes(8, "little") + rest[8:])
    return edit


def _unlink(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).unlink()


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (corruption, file named in the error, words in the error)
    "inventory missing": (_unlink(names.INVENTORY), names.INVENTORY, "cannot open"),
    "inventory truncated": (_truncate(names.INVENTORY, 40), names.INVENTORY, "self_crc"),
    "wrong format": (_edit_json(names.INVENTORY, _set(["format"], "criu")), names.INVENTORY,
                     "format"),
    "future version": (_edit_json(names.INVENTORY, _set(["version"], 99)), names.INVENTORY,
                       "unsupported version"),
    "root not listed": (_edit_json(names.INVENTORY, _set(["root_pid"], 1)), names.INVENTORY,
                        "root pid"),
    "string for int": (_edit_json(names.core(PID), _set(["umask"], "18")), names.core(PID),
                       "umask: expected an integer"),
    "bool for int": (_edit_json(names.core(PID), _set(["threads", 0, "sigmask"], True)),
                     names.core(PID), "sigmask: expected an integer"),
    "unknown field": (_edit_json(names.core(PID), _set(["evil"], 1)), names.core(PID),
                      "unknown field"),
    "missing field": (_edit_mm(lambda d: d.pop("auxv")), names.mm(PID),
                      "missing field 'auxv'"),
    "vmas in the JSON (version 4)": (_edit_mm(_set(["vmas"], [])),
                                     names.mm(PID), "unknown field(s) ['vmas']"),
    "register out of range": (_edit_json(names.core(PID), _set(["threads", 0, "regs", "rip"],
                                                               1 << 64)),
                              names.core(PID), "reg rip out of range"),
    "xstate not hex": (_edit_json(names.core(PID), _set(["threads", 0, "xstate"],
                                                        "../../etc/passwd")),
                       names.core(PID), "thread 4242: xstate is not hex"),
    "xstate hex with spaces": (_edit_json(names.core(PID), _set(["threads", 0, "xstate"],
                                                                "01 02")),
                               names.core(PID), "thread 4242: xstate is not hex"),
    "xstate too small": (_edit_json(names.core(PID), _set(["threads", 0, "xstate_size"], 100)),
                         names.core(PID), "xstate size 100 is not an XSAVE area"),
    "xstate longer than its size": (_edit_json(names.core(PID),
                                               _set(["threads", 0, "xstate"], "00" * 1025)),
                                    names.core(PID), "xstate longer than its size 1024"),
    "xstate a number": (_edit_json(names.core(PID), _set(["threads", 0, "xstate"], 7)),
                        names.core(PID), "xstate: expected a string"),
    # The VMA table's rows (tests/engine/image_tools.py V_*).
    "overlapping vmas": (_vma_rows(_row_set(1, V_START, 0x12000)), names.mm(PID),
                         "vma 1 at 0x12000 overlaps"),
    "unaligned vma": (_vma_rows(_row_set(0, V_END, 0x14001)), names.mm(PID),
                      "not page aligned"),
    "vma beyond user space": (_vma_rows(_row_set(0, V_END, 1 << 60)), names.mm(PID),
                              "beyond user space"),
    "vma string reference out of the table": (_vma_rows(_row_set(1, V_PATH, 99)),
                                              names.mm(PID), "vma 1: bad string reference 99"),
    "vma unknown kind": (_vma_rows(_row_set(0, V_KIND, 200)), names.mm(PID),
                         "vma 0: bad kind 200"),
    "vma deleted not a bool": (_vma_rows(_row_set(1, V_DELETED, 2)), names.mm(PID),
                               "vma 1: bad deleted flag 2"),
    "vma table reserved field set": (_vmas_bytes(lambda b: b.__setitem__(28, 1)),
                                     names.mm(PID), "unsupported VMA table version 1/1"),
    "vma bad prot": (_vma_rows(_row_set(0, V_PROT, 9)), names.mm(PID), "bad prot 9"),
    "vma shmem without id": (_vma_rows(_row_set(1, V_SHMEM, 0)), names.mm(PID),
                             "shmem without id"),
    "vma table truncated": (_vmas_bytes(lambda b: b.__delitem__(slice(-3, None))), names.mm(PID),
                            "does not match 2 VMAs"),
    "vma table bad magic": (_vmas_bytes(lambda b: b.__setitem__(0, 0)), names.mm(PID),
                            "bad magic"),
    "vma table of another version": (_vmas_bytes(lambda b: b.__setitem__(8, 9)),
                                     names.mm(PID), "unsupported VMA table version 9/0"),
    "vma string table unterminated": (_vmas_bytes(_unterminate), names.mm(PID),
                                      "NUL-terminated"),
    "mm record without its vma table": (_truncate_at_newline(names.mm(PID)), names.mm(PID),
                                        "no VMA table after the record"),
    "vma table size beyond the mm file": (_table_size(1 << 40), names.mm(PID),
                                          "bytes beyond the end of the file"),
    "vma table size into the pagemap": (_table_size(16), names.mm(PID),
                                        "does not match 2 VMAs"),
    "negative sid": (_edit_json(names.INVENTORY, _set(["tasks", 0, "sid"], -1)),
                     names.INVENTORY, "sid out of range"),
    "pid beyond PID_MAX_LIMIT": (_edit_json(names.INVENTORY, _set(["tasks", 0, "pgid"], 1 << 40)),
                                 names.INVENTORY, "pgid out of range"),
    "fd owner beyond PID_MAX_LIMIT": (_edit_json(names.FILES, _set(["files", 0, "owner_pid"],
                                                                     1 << 33)),
                                      names.FILES, "bad owner 0/8589934592"),
    "version 1 image": (_edit_json(names.INVENTORY, _set(["version"], 1)), names.INVENTORY,
                        "unsupported version 1"),
    "fd to unknown file": (_edit_json(names.core(PID), _set(["fds", 0, "file_id"], 9)),
                           names.core(PID), "unknown file 9"),
    "pipe content missing": (_unlink(names.pipe_content(99)), names.FILES, "missing"),
    "pagemap bad magic": (_pagemap_bytes(lambda b: b.__setitem__(0, 0)), names.mm(PID),
                          "magic"),
    "pagemap truncated": (_truncate(names.mm(PID), -3), names.mm(PID),
                          "does not match"),
    "pagemap unsorted": (_pagemap_bytes(_first_entry_at(0x13000)), names.mm(PID),
                         "unsorted"),
    "pagemap outside vmas": (_pagemap_bytes(_second_entry_at(0x30000)), names.mm(PID),
                             "outside every VMA"),
    "pagemap in a gap between vmas": (_pagemap_bytes(_second_entry_at(0x1c000)),
                                      names.mm(PID), "0x1c000 lie outside every VMA"),
    "pagemap run past its vma": (_vma_rows(_row_set(0, V_END, 0x11000)), names.mm(PID),
                                 "0x10000 run past a VMA end"),
    "pagemap parent without parent": (_pagemap_bytes(_last_entry_in_parent),
                                      names.mm(PID), "parent image but there is none"),
    "pages truncated": (_truncate(names.pages(PID), -100), names.pages(PID),
                        "pagemap says"),
    "shmem offset beyond size": (_edit_json(names.INVENTORY, _set(["shmem", 0, "size"], PG)),
                                 names.shmem_pagemap("shmem-77"), "beyond object size"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupted_image_is_refused_naming_the_file(image: Path, case: str) -> None:
    corrupt, filename, words = CORRUPTIONS[case]
    corrupt(image)
    reseal(image)  # past the checksums: the validators must catch it
    with pytest.raises(ImageError) as info:
        load(str(image))
    err = info.value
    assert isinstance(err, EngineError) and err.phase == "read"
    assert err.message.startswith(str(image / filename)), err.message
    assert words in err.message, err.message


def test_writer_refuses_overwrite_and_checks_page_count(tmp_path: Path) -> None:
    img = ImageDir.create(str(tmp_path / "w"))
    img.write_bytes("x", b"1")
    with pytest.raises(ImageError, match="cannot create"):
        img.write_bytes("x", b"2")
    w = img.pages_writer("p", 2)
    w.write_at(b"\0" * PG, 0)
    with pytest.raises(ImageError, match=r"wrote 4096 bytes \(4096 in the file, 1 pages "
                                         r"summed\), expected 8192"):
        w.close()
    # Bytes claimed as written by the task must really be in the file.
    w = img.pages_writer("q", 2)
    w.write_at(b"\0" * PG, PG)
    w.claim(0, array("I", [7]))
    w.close()  # the task's page 0 is a hole here, but the size matches: accepted
    assert list(w.sums.values) == [7, pagecrc.sums_of(w.sums.algo, bytes(PG))[0]]
    w = img.pages_writer("r", 2)
    w.write_at(b"\0" * PG, 0)
    w.claim(PG, array("I", [7]))
    with pytest.raises(ImageError, match=r"wrote 8192 bytes \(4096 in the file"):
        w.close()
    img.discard()
    assert not (tmp_path / "w").exists()


def test_create_refuses_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("")
    with pytest.raises(ImageError, match="not empty"):
        ImageDir.create(str(tmp_path / "d"))
    assert os.listdir(tmp_path / "d") == ["f"]


def test_vmas_are_a_binary_table(image: Path) -> None:
    """The VMAs are columns of the table after the record in mm-PID.img, as
    docs/IMAGES.md gives them, their strings in the table after the columns; the record's
    JSON has none."""
    assert "vmas" not in mm_parts(image / names.mm(PID))[0]
    rows = vma_rows(image / names.mm(PID))
    assert [r[:V_PATH] for r in rows] == [[0x10000, 0x14000, 0, 0, 0x22],
                                          [0x20000, 0x24000, 0, 0, 0x21]]
    assert [(r[V_PROT], r[V_KIND], r[V_DELETED]) for r in rows] == [
        (3, 0, 0), (3, 2, 0)]  # kinds "anon" and "shmem"
    table = mm_parts(image / names.mm(PID))[1][-len(b"shmem-77\0rd wr\0"):]
    assert table == b"shmem-77\0rd wr\0"
    assert (rows[1][V_SHMEM], rows[0][V_VMFLAGS], rows[0][V_PATH]) == (1, 2, 0)


@pytest.mark.parametrize("misalign", [0, 8])
def test_pages_reader_reads_into_memory(image: Path, misalign: int) -> None:
    """read_into fills engine memory from any page of the file (O_DIRECT where the
    filesystem allows it; memory O_DIRECT refuses is read through the page cache) and
    refuses to read past the end."""
    buf = mmap.mmap(-1, 3 * PG)
    cbuf = ctypes.c_char.from_buffer(buf)
    addr = ctypes.addressof(cbuf) + misalign
    img = load(str(image))
    t = img.tasks[PID]
    assert t.mm is not None and t.pagemap is not None
    with img.dir.pages_reader(t.mm.pages, t.pagemap) as r:
        r.read_into(addr, PG, 2 * PG)
        got = buf[misalign:misalign + 2 * PG]
        assert got == b"b" * PG + b"c" * PG
        with pytest.raises(ImageError, match="ends before"):
            r.read_into(addr, 2 * PG, 2 * PG)
    del cbuf
    buf.close()


def _link_parent(image: Path, parent: str) -> None:
    data = json.loads((image / names.INVENTORY).read_text())
    data["parent"] = parent
    (image / names.INVENTORY).write_text(json.dumps(data))
    reseal(image)


def test_parent_chain_is_loaded_once_and_bounded(tmp_path: Path) -> None:
    """Each image links to the next; a chain of MAX_PARENT_DEPTH loads (every parent
    loaded with it), one more is refused naming the image where the bound was hit."""
    depth = MAX_PARENT_DEPTH
    for i in range(depth + 1):
        make_image(tmp_path / f"i{i}")
        if i:
            _link_parent(tmp_path / f"i{i - 1}", f"../i{i}")
    with pytest.raises(ImageError, match=f"parent chain longer than {depth} images"):
        load(str(tmp_path / "i0"))
    img = load(str(tmp_path / "i1"))
    n = 0
    while img.parent() is not None:
        img, n = img.parent(), n + 1  # type: ignore[assignment]
    assert n == depth - 1


def test_self_crc_guards_the_inventory(image: Path) -> None:
    """Any change to the inventory's text, however valid as JSON, is refused."""
    inv = image / names.INVENTORY
    inv.write_bytes(inv.read_bytes().replace(b'"kind":"dump"', b'"kind": "dump"'))
    with pytest.raises(ImageError, match="self_crc mismatch"):
        load(str(image))


def test_a_file_the_checksums_list_but_the_dir_lacks_is_refused(image: Path) -> None:
    (image / names.mm(PID)).unlink()  # not resealed: the checksums still list it
    with pytest.raises(ImageError) as info:
        load(str(image))
    assert info.value.message == f"{image / names.mm(PID)}: missing (listed in the " \
                                 "checksums)", info.value.message
