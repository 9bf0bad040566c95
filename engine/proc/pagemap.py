"""/proc/PID/pagemap: the file PAGEMAP_SCAN is asked through, and its entries (one u64
per page, Documentation/admin-guide/mm/pagemap.rst) where PAGEMAP_SCAN cannot answer."""

from __future__ import annotations

import bisect
import ctypes
import functools
import mmap
import operator
import os
import re
from collections.abc import Iterable

from engine.kernel import uapi

# A pte marker (uffd-wp in a hole of a tracked VMA) is a swap pte of this swap type
# (SWP_PTE_MARKER, the last of the 5-bit types); pagemap shows the type in the low bits
# of a PM_SWAP entry. Real swap files have small types.
_SWP_PTE_MARKER = 31
_SWP_TYPE_MASK = 0x1F


def open_pagemap(pid: int) -> int:
    """Open /proc/PID/pagemap read-only (close it with os.close)."""
    return os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)


def entries(fd: int, start: int, end: int) -> memoryview:
    """The pagemap entries (a memoryview of 'Q') of the pages in [start, end), from an
    open pagemap fd."""
    n = (end - start) // uapi.PAGE_SIZE
    return memoryview(os.pread(fd, n * 8, start // uapi.PAGE_SIZE * 8)).cast("Q")


@functools.cache
def zero_pfn() -> int:
    """The frame of the shared zero page, or 0 when page frames are hidden from us."""
    with mmap.mmap(-1, uapi.PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as m:
        _ = m[0]  # a read of untouched anonymous memory maps the zero page
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        fd = open_pagemap(os.getpid())
        try:
            entry = entries(fd, addr, addr + uapi.PAGE_SIZE)[0]
        finally:
            os.close(fd)
        del addr
    return int(entry) & uapi.PM_PFN_MASK if entry & uapi.PM_PRESENT else 0


def private_runs(fd: int, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(start, end, 0) runs of the pages in `ranges` (sorted VMA ranges) that are present
    or swapped and not file/shared-anon (PM_FILE) nor the zero page: the walk for kernels
    without PAGEMAP_SCAN. (Where page frames are hidden, zero-page pages are included: a
    restore that writes them makes real pages of them, shared copy-on-write with the
    children forked after.)"""
    out: list[tuple[int, int, int]] = []
    page, data, file = uapi.PAGE_SIZE, uapi.PM_PRESENT | uapi.PM_SWAP, uapi.PM_FILE
    zero = (uapi.PM_PRESENT | zero_pfn()) if zero_pfn() else -1
    mask = uapi.PM_PRESENT | uapi.PM_SWAP | uapi.PM_FILE | uapi.PM_PFN_MASK
    for start, end in ranges:
        ents = entries(fd, start, end)
        run_start = -1
        for k in range(len(ents) + 1):
            e = ents[k] if k < len(ents) else 0
            want = bool(e & data) and not e & file and e & mask != zero
            addr = start + k * page
            if want and run_start < 0:
                run_start = addr
            elif not want and run_start >= 0:
                out.append((run_start, addr, 0))
                run_start = -1
    return out


#: The last byte of a pagemap entry (bits 56-63) -> 1 where PM_SWAP (bit 62) is set; its
#: first byte -> 1 where the swap type (its low 5 bits) is not a pte marker's.
_SWAP_BYTE = bytes(int(b & (uapi.PM_SWAP >> 56) != 0) for b in range(256))
_NOT_MARKER_BYTE = bytes(int(b & _SWP_TYPE_MASK != _SWP_PTE_MARKER) for b in range(256))
_ONES = re.compile(rb"\x01+")


def drop_markers(fd: int, regions: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Remove uffd-wp pte markers from the non-present (swapped) regions of a
    PAGEMAP_SCAN answer; present regions are kept as they are, and so are swapped ones
    that say PAGE_IS_WRITTEN (when the scan returned it: a marker never is written). The
    others are read from pagemap, their runs of real swap entries found in C."""
    out: list[tuple[int, int, int]] = []
    page = uapi.PAGE_SIZE
    for start, end, cat in regions:
        if cat & (uapi.PAGE_IS_PRESENT | uapi.PAGE_IS_WRITTEN):
            out.append((start, end, cat))
            continue
        raw = entries(fd, start, end).tobytes()
        real = bytes(map(operator.and_, raw[7::8].translate(_SWAP_BYTE),
                         raw[0::8].translate(_NOT_MARKER_BYTE)))
        out += [(start + m.start() * page, start + m.end() * page, cat)
                for m in _ONES.finditer(real)]
    return out


#: The last byte of a pagemap entry (bits 56-63) -> 1 for a present anonymous page that
#: is not PM_MMAP_EXCLUSIVE (another process maps it too: shared copy-on-write), else 0.
_SHARED_BYTE = bytes(int(b & 0x80 != 0 and b & 0x21 == 0) for b in range(256))
#: Pages of pagemap read at once for ranges next to each other (512 KiB of entries).
_SHARED_WINDOW = 1 << 16


def shared_pages(fd: int, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of `ranges` (sorted, disjoint, page aligned) whose pages are present,
    anonymous (not PM_FILE) and mapped by another process too (not PM_MMAP_EXCLUSIVE),
    as sorted (start, end) ranges. Entries are read for ranges close together at once and
    tested in C, each range on its own only where a window has such pages."""
    out: list[tuple[int, int]] = []
    page = uapi.PAGE_SIZE
    ends = [e for _s, e in ranges]
    i = 0
    while i < len(ranges):
        lo = ranges[i][0]
        j = max(bisect.bisect_right(ends, lo + _SHARED_WINDOW * page, i), i + 1)
        hi = ends[j - 1]
        flags = os.pread(fd, (hi - lo) // page * 8, lo // page * 8)[7::8].translate(
            _SHARED_BYTE)
        if 1 in flags:
            for start, end in ranges[i:j]:
                k, stop = (start - lo) // page, (end - lo) // page
                while (k := flags.find(1, k, stop)) >= 0:
                    last = flags.find(0, k, stop)
                    last = stop if last < 0 else last
                    out.append((lo + k * page, lo + last * page))
                    k = last
        i = j
    return out
