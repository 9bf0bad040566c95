"""Forging images for tests: after a test edits an image file on purpose, `reseal`
recomputes the inventory's checksums (and its self-CRC) so that the edit reaches the
validators behind the checksums, as a hostile image written by hand would."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.images import names
from engine.images.imgdir import chunk_crcs

_SUFFIX = b',"self_crc":'
# The VMA table of mm-PID.img as docs/IMAGES.md gives it (independent of
# engine/images/vmatable.py)
_VMA_HEADER = struct.Struct("<8sIIQII")
_VMA_COLUMNS = "QQQQIIIIIBBB"
#: field indexes of a VMA (its columns, in file order)
V_START, V_END, V_PGOFF, V_INODE, V_FLAGS, V_PATH, V_DEV, V_SHMEM, V_VMFLAGS, V_PROT, \
    V_KIND, V_DELETED = range(12)

def reseal(image: Path) -> bool:
    """Rewrite the inventory's checksums to match every regular file now in `image`;
    False (nothing written) when the inventory is missing or no longer parses."""
    inv = image / names.INVENTORY
    if not inv.is_file() or inv.is_symlink():
        return False
    try:
        data = json.loads(inv.read_bytes())
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    data.pop("self_crc", None)
    data["checksums"] = {
        p.name: chunk_crcs(memoryview(p.read_bytes()))
        for p in sorted(image.iterdir())
        if p.name != names.INVENTORY and p.is_file() and not p.is_symlink()
        and not p.name.endswith(".log")}
    text = json.dumps(data, separators=(",", ":")).encode()
    inv.write_bytes(text[:-1] + _SUFFIX + b"%d}\n" % zlib.crc32(text))
    return True


def mm_parts(path: Path) -> tuple[Any, bytes]:
    """An mm-PID.img file's record (parsed JSON) and its VMA table's bytes."""
    text, _, table = path.read_bytes().partition(b"\n")
    return json.loads(text), table


def edit_mm(path: Path, fn: Callable[[Any], None]) -> None:
    """Change the record of an mm-PID.img file in place (its VMA table kept as it is).
    Reseal afterwards."""
    record, table = mm_parts(path)
    fn(record)
    path.write_bytes(json.dumps(record).encode() + b"\n" + table)


def vma_rows(path: Path) -> list[list[int]]:
    """The VMAs of an mm-PID.img file's VMA table, each a list of its 12 fields (V_*)."""
    raw = mm_parts(path)[1]
    count = _VMA_HEADER.unpack_from(raw)[3]
    pos = _VMA_HEADER.size
    cols = []
    for code in _VMA_COLUMNS:
        size = struct.calcsize(code)
        cols.append(struct.unpack_from(f"<{count}{code}", raw, pos))
        pos += count * size
    return [list(vma) for vma in zip(*cols)]


def edit_vma_rows(path: Path, fn: Callable[[list[list[int]]], None]) -> None:
    """Change the VMAs of an mm-PID.img file's VMA table in place (the header's count
    follows; the record and the string table are kept as they are). Reseal afterwards."""
    record, raw = path.read_bytes().split(b"\n", 1)
    head = _VMA_HEADER.unpack_from(raw)
    table = raw[_VMA_HEADER.size + head[3] * struct.calcsize("<" + _VMA_COLUMNS):]
    rows = vma_rows(path)
    fn(rows)
    cols = list(zip(*rows)) if rows else [()] * len(_VMA_COLUMNS)
    body = b"".join(struct.pack(f"<{len(rows)}{code}", *col)
                    for code, col in zip(_VMA_COLUMNS, cols))
    path.write_bytes(record + b"\n" + _VMA_HEADER.pack(*head[:3], len(rows), *head[4:])
                     + body + table)
