"""/proc/PID/pagemap entries: the fallback of PAGEMAP_SCAN (one u64 per page)."""

from __future__ import annotations

import os
from array import array

from engine.kernel import uapi


def read_entries(fd: int, start: int, end: int) -> array[int]:
    """Pagemap entries (array of 'Q') for [start, end) from an open pagemap fd."""
    first = start >> uapi.PAGE_SHIFT
    count = (end - start) >> uapi.PAGE_SHIFT
    data = os.pread(fd, count * 8, first * 8)
    if len(data) != count * 8:
        raise OSError(f"pagemap: short read at {start:#x} ({len(data)} of {count * 8} bytes)")
    entries = array("Q")
    entries.frombytes(data)
    return entries


def categories(entry: int) -> int:
    """PAGE_IS_* categories of one pagemap entry (the subset pagemap can tell)."""
    cats = 0
    if entry & uapi.PM_PRESENT:
        cats |= uapi.PAGE_IS_PRESENT
    if entry & uapi.PM_SWAP:
        cats |= uapi.PAGE_IS_SWAPPED
    if entry & uapi.PM_FILE:
        cats |= uapi.PAGE_IS_FILE
    if entry & uapi.PM_SOFT_DIRTY:
        cats |= uapi.PAGE_IS_SOFT_DIRTY
    if entry & uapi.PM_GUARD_REGION:
        cats |= uapi.PAGE_IS_GUARD
    if not entry & uapi.PM_UFFD_WP and entry & (uapi.PM_PRESENT | uapi.PM_SWAP):
        # Same meaning as PAGE_IS_WRITTEN under async uffd-wp: not write-protected.
        cats |= uapi.PAGE_IS_WRITTEN
    return cats


def scan(fd: int, start: int, end: int, anyof_mask: int, return_mask: int,
         chunk_pages: int = 65536) -> list[tuple[int, int, int]]:
    """Runs (start, end, categories & return_mask) of pages matching any of ``anyof_mask``,
    like pagemap_scan(category_anyof_mask=..., return_mask=...), read in chunks."""
    runs: list[tuple[int, int, int]] = []
    pos = start
    while pos < end:
        stop = min(end, pos + (chunk_pages << uapi.PAGE_SHIFT))
        entries = read_entries(fd, pos, stop)
        addr = pos
        for entry in entries:
            cats = categories(entry)
            if cats & anyof_mask:
                ret = cats & return_mask
                if runs and runs[-1][1] == addr and runs[-1][2] == ret:
                    runs[-1] = (runs[-1][0], addr + uapi.PAGE_SIZE, ret)
                else:
                    runs.append((addr, addr + uapi.PAGE_SIZE, ret))
            addr += uapi.PAGE_SIZE
        pos = stop
    return runs


def open_pagemap(pid: int) -> int:
    """Open /proc/PID/pagemap read-only (close it with os.close)."""
    return os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
