"""The pages of one process still to be copied, as sorted non-overlapping runs."""

from __future__ import annotations

import bisect

from engine.lazy.source import Run


class Pending:
    """Sorted, non-overlapping runs of pages not yet copied into a process."""

    def __init__(self, runs: list[Run]) -> None:
        self.runs = sorted(runs, key=lambda r: r.start)
        self._starts = [r.start for r in self.runs]

    def __bool__(self) -> bool:
        return bool(self.runs)

    def copy(self) -> Pending:
        """An independent copy (the runs of a forked child)."""
        return Pending([Run(r.start, r.end, r.file, r.offset) for r in self.runs])

    def bytes(self) -> int:
        """Bytes still to copy."""
        return sum(r.end - r.start for r in self.runs)

    def _find(self, addr: int) -> int:
        i = bisect.bisect_right(self._starts, addr) - 1
        return i if i >= 0 and addr < self.runs[i].end else -1

    def take(self, addr: int, limit: int) -> Run | None:
        """Remove and return the pages from `addr` on (at most `limit` bytes, within one
        run); None when `addr` is not pending."""
        i = self._find(addr)
        if i < 0:
            return None
        r = self.runs[i]
        end = min(r.end, addr + limit)
        piece = Run(addr, end, r.file, r.offset + (addr - r.start))
        keep = []
        if r.start < addr:
            keep.append(Run(r.start, addr, r.file, r.offset))
        if end < r.end:
            keep.append(r.cut(end)[1])
        self.runs[i:i + 1] = keep
        self._starts[i:i + 1] = [k.start for k in keep]
        return piece

    def take_first(self, limit: int) -> Run | None:
        """Remove and return up to `limit` bytes from the lowest pending address."""
        return self.take(self.runs[0].start, limit) if self.runs else None

    def put(self, run: Run) -> None:
        """Put back a run that could not be copied (it does not overlap pending ones)."""
        i = bisect.bisect_left(self._starts, run.start)
        self.runs.insert(i, run)
        self._starts.insert(i, run.start)

    def remove(self, start: int, end: int) -> list[Run]:
        """Remove and return everything pending inside [start, end)."""
        out: list[Run] = []
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        while i < len(self.runs) and self.runs[i].start < end:
            r = self.runs[i]
            if r.end <= start:
                i += 1
                continue
            piece = self.take(max(r.start, start), min(r.end, end) - max(r.start, start))
            assert piece is not None
            out.append(piece)
            i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        return out

    def move(self, old: int, new: int, length: int) -> None:
        """The process moved [old, old+length) to `new` (mremap)."""
        moved = self.remove(old, old + length)
        self.remove(new, new + length)  # nothing can be pending where the move lands
        for r in moved:
            self.put(Run(r.start - old + new, r.end - old + new, r.file, r.offset))
