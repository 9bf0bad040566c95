"""Load a whole image directory and cross-check it.

`load(path)` reads the inventory and every per-task file, then checks what single files
cannot: fds point to existing file records, shmem VMAs to existing shmem objects, every
pagemap run lies inside a VMA (or inside its shmem object), every content file exists
under the name its record implies (both ends of a pipe name one pipe), xstate files have
one sane size, the pages files hold exactly what the pagemaps say (and, with
`verify_pages`, match their checksums: a restore instead checks each page where it reads
it, which costs no second read of the file), and the parent chain of an incremental dump is acyclic and at most
MAX_PARENT_DEPTH long (each parent loaded, once, the same way). Restore and `show` read
images only through this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from engine.images import names
from engine.images.imgdir import PE_PARENT, ImageDir, ImageError, Pagemap
from engine.images.records import (
    PAGE_SIZE,
    FileRecord,
    FilesImage,
    Inventory,
    MmCore,
    ShmemEntry,
    TaskCore,
)

MAX_PARENT_DEPTH = 32
#: bounds of an XSAVE area (legacy 512 + header 64 .. far above AMX's ~11 KiB)
XSTATE_MIN, XSTATE_MAX = 576, 1 << 20


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
    parent_image: DumpImage | None = None

    @property
    def path(self) -> str:
        """The directory."""
        return self.dir.path

    def parent(self) -> DumpImage | None:
        """The parent image of an incremental dump (loaded with this one), or None."""
        return self.parent_image


def load(path: str, trusted: bool = False, verify_pages: bool = True) -> DumpImage:
    """Read and validate every file of the image directory `path` and of its parents.
    Unless `trusted`, every directory and file must belong to the engine's user and be
    writable by nobody else. Without `verify_pages` the data of pages files is not
    checked here: the caller checks every page it uses (PagesReader.verify/check)."""
    return _load(path, trusted, verify_pages, [])


def _load(path: str, trusted: bool, verify_pages: bool, chain: list[tuple[int, int]]
          ) -> DumpImage:
    if not os.path.isdir(path):
        raise ImageError(path, "no such image directory")
    d = ImageDir.open(path, trusted)
    key = d.identity()
    if key in chain or len(chain) >= MAX_PARENT_DEPTH:
        d.close()
        raise ImageError(path, "parent chain loops back to this image" if key in chain
                         else f"parent chain longer than {MAX_PARENT_DEPTH} images")
    chain = [*chain, key]
    inv = d.read_inventory(names.INVENTORY, Inventory)
    where = d.file(names.INVENTORY)
    for name in d.checksums:
        if not d.exists(name):
            raise ImageError(d.file(name), "missing (listed in the checksums)")
    parent = None
    if inv.parent is not None:
        parent_dir = os.path.normpath(os.path.join(path, inv.parent))
        try:
            parent = _load(parent_dir, trusted, verify_pages, chain)
        except ImageError as err:
            raise ImageError(where, f"parent: {err.message}") from None
    files = d.read_json(names.FILES, FilesImage)
    by_id = files.by_id()
    mapped = {(m.dev, m.inode) for m in files.mapped}
    shmem_ids = {s.id for s in inv.shmem}
    for f in files.files:
        _check_file(d, f, shmem_ids)
    shmem: dict[str, ShmemImage] = {}
    for s in inv.shmem:
        shm_pm = d.read_pagemap(s.pagemap)
        _check_pages(d, s.pagemap, s.pages, shm_pm, inv.parent, verify_pages)
        for e in shm_pm.entries:
            if e.end > s.size:
                raise ImageError(d.file(s.pagemap), f"offset {e.addr:#x} beyond object size")
        shmem[s.id] = ShmemImage(s, shm_pm)
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
        if core.cwd_file is not None and not (
                core.cwd_file in by_id and by_id[core.cwd_file].type == "dir"
                and by_id[core.cwd_file].deleted):
            raise ImageError(where, f"cwd_file {core.cwd_file} is not a removed directory "
                                    "of files.json")
        for th in core.threads:
            if th.xstate is not None:
                _check_xstate(d, th.xstate, th.tid, where)
        mm: MmCore | None = None
        pm: Pagemap | None = None
        if t.state != "zombie":
            mm = d.read_json(names.mm(t.pid), MmCore)
            for v in mm.vmas:
                if v.shmem_id is not None and v.shmem_id not in shmem:
                    raise ImageError(d.file(names.mm(t.pid)),
                                     f"vma {v.start:#x}: unknown shmem {v.shmem_id}")
                if v.kind == "file" and v.deleted and (v.dev, v.inode) not in mapped:
                    raise ImageError(d.file(names.mm(t.pid)),
                                     f"vma {v.start:#x}: the unlinked file {v.path} it maps "
                                     "is not in files.json's mapped files")
            pm = d.read_pagemap(mm.pagemap)
            _check_in_vmas(d.file(mm.pagemap), pm, mm)
            _check_pages(d, mm.pagemap, mm.pages, pm, inv.parent, verify_pages)
        tasks[t.pid] = TaskImage(core, mm, pm)
    for f in files.files:
        leader = tasks[f.ctty_of].core if f.ctty_of in tasks else None
        if f.ctty_of and (leader is None or leader.sid != leader.pid or leader.ctty is None):
            raise ImageError(d.file(names.FILES), f"file {f.id}: ctty_of {f.ctty_of} is not "
                                                  "a session leader with a controlling "
                                                  "terminal")
    return DumpImage(d, inv, tasks, files, shmem, parent)


def _check_file(d: ImageDir, f: FileRecord, shmem_ids: set[str]) -> None:
    where = d.file(names.FILES)
    if f.type == "pipe" and f.inode != f.pipe_ino:
        raise ImageError(where, f"file {f.id}: pipe_ino {f.pipe_ino} is not its inode "
                                f"{f.inode}")
    if f.content is not None:
        if f.type in ("pipe", "fifo"):
            expect = names.pipe_content(f.pipe_ino or 0)
        elif f.type == "socket":
            expect = names.socket_queue(f.inode)
        else:
            expect = names.file_content(f.id)
        if f.content != expect:
            raise ImageError(where, f"file {f.id}: content {f.content!r} is not {expect!r}")
        if not d.exists(f.content):
            raise ImageError(where, f"file {f.id}: content {f.content} missing")
        d.verify_file(f.content)
        _check_content_size(d, f)
    if f.shmem_id is not None and f.shmem_id not in shmem_ids:
        raise ImageError(where, f"file {f.id}: unknown shmem {f.shmem_id}")


def _check_content_size(d: ImageDir, f: FileRecord) -> None:
    """The content fits what the record says: a pipe's data its capacity, an unlinked
    file's copy its data extents (or its size)."""
    assert f.content is not None
    size = d.size(f.content)
    if f.type in ("pipe", "fifo") and f.pipe_size is not None and size > f.pipe_size:
        raise ImageError(d.file(f.content), f"holds {size} bytes, more than the pipe's "
                                            f"capacity {f.pipe_size} (files.json file {f.id})")
    # the data extents back to back, holes left out (the whole file without extents)
    want = f.size if f.extents is None else sum(end - start for start, end in f.extents)
    if f.type == "reg" and size != want:
        raise ImageError(d.file(f.content), f"holds {size} bytes, files.json says file "
                                            f"{f.id} had {want} bytes of data")


def _check_xstate(d: ImageDir, name: str, tid: int, where: str) -> None:
    if name != names.xstate(tid):
        raise ImageError(where, f"thread {tid}: xstate file {name!r} is not "
                                f"{names.xstate(tid)!r}")
    if not d.exists(name):
        raise ImageError(where, f"thread {tid}: xstate file {name} missing")
    size = d.size(name)
    d.verify_file(name)
    # Only bounds here: the size is the CPU's (2696 under qemu's emulated CPU, not a
    # multiple of 64); restore compares it with this CPU's own and the kernel checks it.
    if not XSTATE_MIN <= size <= XSTATE_MAX:
        raise ImageError(d.file(name), f"size {size} is not an XSAVE area")


def _check_pages(d: ImageDir, pagemap: str, pages: str, pm: Pagemap,
                 parent: str | None, verify: bool) -> None:
    if parent is None and any(e.flags & PE_PARENT for e in pm.entries):
        raise ImageError(d.file(pagemap), "refers to a parent image but there is none")
    size = d.size(pages) if d.exists(pages) else -1
    if size != pm.pages_stored * PAGE_SIZE:
        raise ImageError(d.file(pages), f"holds {size} bytes, pagemap says "
                                        f"{pm.pages_stored * PAGE_SIZE}")
    if verify:
        d.verify_pages(pages, pm)


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
