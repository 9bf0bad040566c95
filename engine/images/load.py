"""Load a whole image directory and cross-check it.

`load(path)` reads the inventory and every per-task file, then checks what single files
cannot: fds point to existing file records, shmem VMAs to existing shmem objects, every
pagemap run lies inside a VMA (or inside its shmem object), every content file exists, and
the pages files hold exactly what the pagemaps say. Restore and `show` read images only
through this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from engine.images import names
from engine.images.imgdir import PE_PARENT, ImageDir, ImageError, Pagemap
from engine.images.records import (
    PAGE_SIZE,
    FilesImage,
    Inventory,
    MmCore,
    ShmemEntry,
    TaskCore,
)


@dataclass
class TaskImage:
    """Everything about one task: core, mm (None for zombies) and its pagemap."""

    core: TaskCore
    mm: MmCore | None
    pagemap: Pagemap | None


@dataclass
class ShmemImage:
    """One shared memory object and its pagemap (addresses are object offsets)."""

    entry: ShmemEntry
    pagemap: Pagemap


@dataclass
class DumpImage:
    """A loaded and cross-checked image directory."""

    dir: ImageDir
    inventory: Inventory
    tasks: dict[int, TaskImage]
    files: FilesImage
    shmem: dict[str, ShmemImage] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The directory."""
        return self.dir.path

    def parent(self) -> DumpImage | None:
        """The parent image of an incremental dump, loaded, or None."""
        if self.inventory.parent is None:
            return None
        return load(os.path.normpath(os.path.join(self.path, self.inventory.parent)))


def load(path: str) -> DumpImage:
    """Read and validate every file of the image directory `path`."""
    if not os.path.isdir(path):
        raise ImageError(path, "no such image directory")
    d = ImageDir(path)
    inv = d.read_json(names.INVENTORY, Inventory)
    files = d.read_json(names.FILES, FilesImage)
    by_id = files.by_id()
    shmem_ids = {s.id for s in inv.shmem}
    for f in files.files:
        if f.content is not None and not d.exists(f.content):
            raise ImageError(d.file(names.FILES), f"file {f.id}: content {f.content} missing")
        if f.shmem_id is not None and f.shmem_id not in shmem_ids:
            raise ImageError(d.file(names.FILES), f"file {f.id}: unknown shmem {f.shmem_id}")
    shmem: dict[str, ShmemImage] = {}
    for s in inv.shmem:
        pm = d.read_pagemap(s.pagemap)
        _check_pages(d, s.pagemap, s.pages, pm, inv.parent)
        for e in pm.entries:
            if e.end > s.size:
                raise ImageError(d.file(s.pagemap), f"offset {e.addr:#x} beyond object size")
        shmem[s.id] = ShmemImage(s, pm)
    tasks: dict[int, TaskImage] = {}
    for t in inv.tasks:
        core = d.read_json(names.core(t.pid), TaskCore)
        where = d.file(names.core(t.pid))
        if (core.pid, core.ppid, core.pgid, core.sid) != (t.pid, t.ppid, t.pgid, t.sid):
            raise ImageError(where, "ids disagree with the inventory")
        if sorted(th.tid for th in core.threads) != sorted(t.threads):
            raise ImageError(where, "threads disagree with the inventory")
        for fde in core.fds:
            if fde.file_id not in by_id:
                raise ImageError(where, f"fd {fde.fd} refers to unknown file {fde.file_id}")
        for th in core.threads:
            if th.xstate is not None and not d.exists(th.xstate):
                raise ImageError(where, f"thread {th.tid}: xstate file {th.xstate} missing")
        mm = pm = None
        if t.state != "zombie":
            mm = d.read_json(names.mm(t.pid), MmCore)
            for v in mm.vmas:
                if v.shmem_id is not None and v.shmem_id not in shmem:
                    raise ImageError(d.file(names.mm(t.pid)),
                                     f"vma {v.start:#x}: unknown shmem {v.shmem_id}")
            pm = d.read_pagemap(mm.pagemap)
            _check_in_vmas(d.file(mm.pagemap), pm, mm)
            _check_pages(d, mm.pagemap, mm.pages, pm, inv.parent)
        tasks[t.pid] = TaskImage(core, mm, pm)
    return DumpImage(d, inv, tasks, files, shmem)


def _check_pages(d: ImageDir, pagemap: str, pages: str, pm: Pagemap,
                 parent: str | None) -> None:
    if parent is None and any(e.flags & PE_PARENT for e in pm.entries):
        raise ImageError(d.file(pagemap), "refers to a parent image but there is none")
    size = os.stat(d.file(pages)).st_size if d.exists(pages) else -1
    if size != pm.pages_stored * PAGE_SIZE:
        raise ImageError(d.file(pages), f"holds {size} bytes, pagemap says "
                                        f"{pm.pages_stored * PAGE_SIZE}")


def _check_in_vmas(path: str, pm: Pagemap, mm: MmCore) -> None:
    # Both lists are sorted: one merge pass, no per-page work.
    vmas = mm.vmas
    i = 0
    for e in pm.entries:
        while i < len(vmas) and vmas[i].end <= e.addr:
            i += 1
        if i == len(vmas) or vmas[i].start > e.addr:
            raise ImageError(path, f"pages at {e.addr:#x} lie outside every VMA")
        # A run may span adjacent VMAs; walk while they are contiguous.
        j = i
        while vmas[j].end < e.end:
            if j + 1 == len(vmas) or vmas[j + 1].start != vmas[j].end:
                raise ImageError(path, f"pages at {e.addr:#x} run past a VMA end")
            j += 1
