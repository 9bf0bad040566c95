"""Where the stored pages of a process are: runs of (address range, pages file, offset),
resolved through parent images for incremental dumps (PE_PARENT)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from engine.errors import EngineError
from engine.images import PE_PARENT, PE_PRESENT, DumpImage, PagesReader


@dataclass
class Run:
    """Pages [start, end) of a process, stored in `file` from byte `offset` on."""

    start: int
    end: int
    file: PagesReader  # mapped read-only: the run's bytes are at file.address + offset
    offset: int

    @property
    def address(self) -> int:
        """Where the run's bytes are in the daemon's memory."""
        return self.file.address + self.offset

    def cut(self, at: int) -> tuple[Run, Run]:
        """Split at address `at` (start < at < end)."""
        return (Run(self.start, at, self.file, self.offset),
                Run(at, self.end, self.file, self.offset + (at - self.start)))


class Sources:
    """Opens pages files once and loads parent images once."""

    def __init__(self) -> None:
        self._files: dict[str, PagesReader] = {}
        self._parents: dict[str, DumpImage | None] = {}
        self._starts: dict[int, list[int]] = {}  # id(pagemap) -> entry addresses

    def file(self, image: DumpImage, pid: int) -> PagesReader:
        """The mapped pages file of task `pid` in image (opened beneath its directory)."""
        t = image.tasks[pid]
        assert t.mm is not None and t.pagemap is not None
        path = image.dir.file(t.mm.pages)
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = image.dir.pages_reader(t.mm.pages, t.pagemap)
        return f

    def parent(self, image: DumpImage) -> DumpImage | None:
        """The (cached) parent image."""
        if image.path not in self._parents:
            self._parents[image.path] = image.parent()
        return self._parents[image.path]

    def runs(self, image: DumpImage, pid: int, start: int, end: int) -> list[Run]:
        """Stored pages of task `pid` inside [start, end), in address order."""
        t = image.tasks.get(pid)
        if t is None or t.mm is None or t.pagemap is None:
            raise EngineError("lazy-pages", f"{image.path}: no memory image of task {pid}")
        pm = t.pagemap
        entries = pm.entries
        out: list[Run] = []
        starts = self._starts.get(id(pm))
        if starts is None:
            starts = self._starts[id(pm)] = [e.addr for e in entries]
        i = max(bisect.bisect_right(starts, start) - 1, 0)
        while i < len(entries) and entries[i].addr < end:
            e = entries[i]
            lo, hi = max(e.addr, start), min(e.end, end)
            if lo < hi:
                if e.flags & PE_PRESENT:
                    f = self.file(image, pid)
                    out.append(Run(lo, hi, f, pm.offsets[i] + (lo - e.addr)))
                elif e.flags & PE_PARENT:
                    parent = self.parent(image)
                    got = self.runs(parent, pid, lo, hi) if parent is not None else []
                    if sum(r.end - r.start for r in got) != hi - lo:
                        raise EngineError("lazy-pages", f"{image.path}: pages of task {pid} "
                                                        f"at {lo:#x} missing in the parent")
                    out.extend(got)
            i += 1
        return out

    def files(self) -> list[PagesReader]:
        """The pages files opened so far, in the order they were first needed."""
        return list(self._files.values())

    def close(self) -> None:
        """Close every pages file."""
        for f in self._files.values():
            f.close()
        self._files.clear()
