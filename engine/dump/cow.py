"""Private pages a process still shares copy-on-write with its parent.

After fork(), parent and child map the very same physical pages until one of them writes.
The restore can only rebuild that sharing if it knows which pages they were: here, for a
frozen child and its parent, every present anonymous page of a private mapping (anonymous
or file) that is the same page frame in both at the same address (/proc/PID/pagemap; page
frames are visible to CAP_SYS_ADMIN only). The zero page is nobody's.

This must run before anything is injected into the tasks: an injection writes a signal
frame below the stack pointer (and puts the bytes back), which gives the task its own copy
of that stack page.
"""

from __future__ import annotations

import os

from engine.dump import vmas
from engine.dump.intervals import Interval, intersect, normalise
from engine.images.load import cow_ranges
from engine.images.records import Vma
from engine.kernel import uapi
from engine.proc import pagemap

_SHARED_MASK = uapi.PM_PRESENT | uapi.PM_FILE
_CHUNK_PAGES = 1 << 16  # pagemap entries read at once (512 KiB)


def private_ranges(layout: list[Vma]) -> list[Interval]:
    """The ranges of a task's VMAs (vmas.parse) whose pages may be shared copy-on-write."""
    return normalise(cow_ranges(layout))


def shared_with_parent(pid: int, ppid: int, zero: int,
                       known: dict[int, list[Interval]] | None = None) -> list[list[int]]:
    """[address, pages] runs of the pages child `pid` shares copy-on-write with its parent
    `ppid` at the same address (both frozen). `zero`: the zero page's frame (non-zero).
    `known`: each task's private ranges (private_ranges), kept from one call to the next
    (a parent of several children is read once)."""
    known = {} if known is None else known
    for task in (pid, ppid):
        if task not in known:
            known[task] = private_ranges(vmas.layout(task)[1])
    ranges = intersect(known[pid], known[ppid])
    mine, theirs = pagemap.open_pagemap(pid), pagemap.open_pagemap(ppid)
    out: list[list[int]] = []
    try:
        for start, end in ranges:
            for lo in range(start, end, _CHUNK_PAGES * uapi.PAGE_SIZE):
                hi = min(end, lo + _CHUNK_PAGES * uapi.PAGE_SIZE)
                _runs(out, lo, pagemap.entries(mine, lo, hi), pagemap.entries(theirs, lo, hi),
                      zero)
    finally:
        os.close(mine)
        os.close(theirs)
    return out


def _runs(out: list[list[int]], base: int, a: memoryview, b: memoryview, zero: int) -> None:
    """Append the runs of equal shared frames of two pagemap extracts starting at base,
    joining a run that continues the last one."""
    for i, (x, y) in enumerate(zip(a, b)):
        pfn = x & uapi.PM_PFN_MASK
        if (pfn != y & uapi.PM_PFN_MASK or x & _SHARED_MASK != uapi.PM_PRESENT
                or y & _SHARED_MASK != uapi.PM_PRESENT or not pfn or pfn == zero):
            continue
        addr = base + i * uapi.PAGE_SIZE
        if out and out[-1][0] + out[-1][1] * uapi.PAGE_SIZE == addr:
            out[-1][1] += 1
        else:
            out.append([addr, 1])
