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
_MM_TABLE = struct.Struct("<Q")  # the VMA table's size, after the record's line
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


def mm_parts(path: Path) -> tuple[Any, bytes, bytes]:
    """An mm-PID.img file's record (parsed JSON), VMA table and pagemap (their bytes)."""
    text, _, rest = path.read_bytes().partition(b"\n")
    (size,) = _MM_TABLE.unpack_from(rest)
    table = rest[_MM_TABLE.size:_MM_TABLE.size + size]
    return json.loads(text), table, rest[_MM_TABLE.size + size:]


def write_mm_parts(path: Path, record: Any, table: bytes, pagemap: bytes) -> None:
    """An mm-PID.img file of these parts (as docs/IMAGES.md gives its layout)."""
    path.write_bytes(json.dumps(record).encode() + b"\n" + _MM_TABLE.pack(len(table))
                     + table + pagemap)


def edit_mm(path: Path, fn: Callable[[Any], None]) -> None:
    """Change the record of an mm-PID.img file in place (its VMA table and pagemap kept
    as they are). Reseal afterwards."""
    record, table, pagemap = mm_parts(path)
    fn(record)
    write_mm_parts(path, record, table, pagemap)


def edit_mm_bytes(path: Path, part: int, fn: Callable[[bytearray], None]) -> None:
    """Change the bytes of an mm-PID.img file's VMA table (part 1) or pagemap (part 2) in
    place. Reseal afterwards."""
    parts = list(mm_parts(path))
    raw = bytearray(parts[part])
    fn(raw)
    parts[part] = bytes(raw)
    write_mm_parts(path, *parts)


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
    follows; the record, the string table and the pagemap are kept as they are). Reseal
    afterwards."""
    record, raw, pagemap = mm_parts(path)
    head = _VMA_HEADER.unpack_from(raw)
    table = raw[_VMA_HEADER.size + head[3] * struct.calcsize("<" + _VMA_COLUMNS):]
    rows = vma_rows(path)
    fn(rows)
    cols = list(zip(*rows)) if rows else [()] * len(_VMA_COLUMNS)
    body = b"".join(struct.pack(f"<{len(rows)}{code}", *col)
                    for code, col in zip(_VMA_COLUMNS, cols))
    write_mm_parts(path, record, _VMA_HEADER.pack(*head[:3], len(rows), *head[4:]) + body
                   + table, pagemap)
