"""/proc/PID/auxv: the ELF auxiliary vector (pairs of unsigned longs up to AT_NULL)."""

from __future__ import annotations

import struct

from engine.kernel import uapi


def parse_auxv(data: bytes, with_null: bool = False) -> list[tuple[int, int]]:
    """(type, value) pairs up to the terminating AT_NULL, which is included when
    `with_null` (as PR_SET_MM_MAP wants the vector); ValueError on odd sizes."""
    if len(data) % 16:
        raise ValueError(f"auxv: size {len(data)} is not a multiple of 16")
    pairs: list[tuple[int, int]] = []
    for a_type, a_val in struct.iter_unpack("<QQ", data):
        if a_type == uapi.AT_NULL:
            if with_null:
                pairs.append((a_type, a_val))
            break
        pairs.append((a_type, a_val))
    return pairs


def read_auxv_raw(pid: int) -> bytes:
    """The raw auxv bytes (what PR_SET_MM_MAP's auxv field wants, AT_NULL included)."""
    with open(f"/proc/{pid}/auxv", "rb") as f:
        return f.read()


def read_auxv(pid: int, with_null: bool = False) -> list[tuple[int, int]]:
    """Parsed auxv of ``pid`` (see parse_auxv)."""
    return parse_auxv(read_auxv_raw(pid), with_null)
