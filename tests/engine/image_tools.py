"""Forging images for tests: after a test edits an image file on purpose, `reseal`
recomputes the inventory's checksums (and its self-CRC) so that the edit reaches the
validators behind the checksums, as a hostile image written by hand would."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from engine.images import names
from engine.images.imgdir import chunk_crcs

_SUFFIX = b',"self_crc":'


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
