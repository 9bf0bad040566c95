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
from engine.images.load import MAX_PARENT_DEPTH
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
)
from engine.images.show import show
from engine.kernel import pagecrc
from tests.engine.image_tools import reseal

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
    img.write_bytes(names.xstate(PID), b"\0" * 1024)
    img.write_json(names.core(PID), TaskCore(
        pid=PID, ppid=1, pgid=PID, sid=PID, state="alive", comm="t",
        threads=[ThreadCore(PID, REGS, names.xstate(PID), 0)],
        sigactions=[], creds=Creds([0] * 4, [0] * 4, [], 0, 0, 0, 0, 0), limits=[], cwd="/",
        root="/", umask=0o22, personality=0, fds=[FdEntry(0, 0), FdEntry(3, 1, True)]))
    img.write_json(names.mm(PID), MmCore(
        *([0] * 11), auxv=[6, 4096, 0, 0],
        vmas=[Vma(0x10000, 0x14000, 3, 0x22, 0, "anon"),
              Vma(0x20000, 0x24000, 3, 0x21, 0, "shmem", shmem_id=sid)],
        pagemap=names.pagemap(PID), pages=names.pages(PID)))
    with img.pages_writer(names.pages(PID), 3) as w:
        w.write_at(b"a" * PG + b"b" * PG + b"c" * PG, 0)
    img.write_pagemap(names.pagemap(PID), [PagemapEntry(0x10000, 2, PE_PRESENT),
                                           PagemapEntry(0x13000, 1, PE_PRESENT)], w.sums)
    with img.pages_writer(names.shmem_pages(sid), 1) as w:
        w.write_at(b"s" * PG, 0)
    img.write_pagemap(names.shmem_pagemap(sid), [PagemapEntry(PG, 1, PE_PRESENT)], w.sums)
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


def _pagemap_bytes(edit: Callable[[bytearray], None]) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        raw = bytearray((d / names.pagemap(PID)).read_bytes())
        edit(raw)
        (d / names.pagemap(PID)).write_bytes(bytes(raw))
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
    "missing field": (_edit_json(names.mm(PID), lambda d: d.pop("vmas")), names.mm(PID),
                      "missing field 'vmas'"),
    "register out of range": (_edit_json(names.core(PID), _set(["threads", 0, "regs", "rip"],
                                                               1 << 64)),
                              names.core(PID), "reg rip out of range"),
    "path traversal": (_edit_json(names.core(PID), _set(["threads", 0, "xstate"],
                                                        "../../etc/passwd")),
                       names.core(PID), "bad xstate file name"),
    # A VMA is an array: start end prot flags pgoff kind path dev inode deleted shmem_id
    # vmflags.
    "overlapping vmas": (_edit_json(names.mm(PID), _set(["vmas", 1, 0], 0x12000)),
                         names.mm(PID), "overlaps"),
    "unaligned vma": (_edit_json(names.mm(PID), _set(["vmas", 0, 1], 0x14001)),
                      names.mm(PID), "not page aligned"),
    "vma string for int": (_edit_json(names.mm(PID), _set(["vmas", 1, 2], "3")),
                           names.mm(PID), "vmas[1].prot: expected an integer"),
    "vma bad vmflags": (_edit_json(names.mm(PID), _set(["vmas", 0, 11], ["rd", 7])),
                        names.mm(PID), "vmas[0].vmflags[1]: expected a string"),
    "vma short row": (_edit_json(names.mm(PID), lambda d: d["vmas"][0].pop()),
                      names.mm(PID), "vmas[0]: expected an array of the 12 fields"),
    "vma as object (version 1)": (
        _edit_json(names.mm(PID), _set(["vmas", 0], {"start": 0x10000, "end": 0x14000})),
        names.mm(PID), "vmas[0]: expected an array of the 12 fields start end prot"),
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
    "xstate missing": (_unlink(names.xstate(PID)), names.core(PID), "xstate"),
    "pipe content missing": (_unlink(names.pipe_content(99)), names.FILES, "missing"),
    "pagemap bad magic": (_pagemap_bytes(lambda b: b.__setitem__(0, 0)), names.pagemap(PID),
                          "magic"),
    "pagemap truncated": (_truncate(names.pagemap(PID), -3), names.pagemap(PID),
                          "does not match"),
    "pagemap unsorted": (_pagemap_bytes(_first_entry_at(0x13000)), names.pagemap(PID),
                         "unsorted"),
    "pagemap outside vmas": (_pagemap_bytes(_second_entry_at(0x30000)), names.pagemap(PID),
                             "outside every VMA"),
    "pagemap parent without parent": (_pagemap_bytes(_last_entry_in_parent),
                                      names.pagemap(PID), "parent image but there is none"),
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


def test_vmas_are_written_as_arrays(image: Path) -> None:
    """mm-PID.json holds each VMA as an array of its fields in declaration order."""
    data = json.loads((image / names.mm(PID)).read_text())
    assert data["vmas"][0][:6] == [0x10000, 0x14000, 3, 0x22, 0, "anon"]
    assert all(len(v) == 12 for v in data["vmas"])


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
