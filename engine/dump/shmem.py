"""Anonymous shared memory (and other objects of the kernel's shmem mount): one image per
object, dumped from the object itself.

Pages of a shmem object can be resident while no task maps them (written through a
mapping that is gone, or filled by a previous restore), so walking the tasks' page
tables is not enough. The object is opened through /proc/PID/map_files/START-END (the
engine is root in the initial user namespace) and its data extents found with
SEEK_DATA/SEEK_HOLE, then read with pread. Where map_files cannot be opened, the pages
mapped in the task are read through /proc/PID/mem instead (what the kernel lets us see).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass

from engine.dump.pages import Run, Staging, write_pages
from engine.errors import EngineError
from engine.images import names
from engine.images.imgdir import ImageDir
from engine.images.records import PAGE_SIZE, ShmemEntry, Vma
from engine.kernel import sys as ksys
from engine.kernel import uapi
from engine.proc import pagemap as procpagemap

_MEMFD = "/memfd:"
_F_GET_SEALS = 1034

@dataclass
class ShmemSource:
    """Where to read one shmem object: a task mapping it (`vma`) or holding an fd to it
    (`fd`, for a memfd nobody maps), and how far the tree's mappings reach into it."""

    pid: int
    vma: Vma | None
    fd: int | None
    extent: int  # largest pgoff + length any VMA of the tree maps
    kind: str
    name: str | None = None


def _kind_of(path: str) -> tuple[str, str | None]:
    if path.startswith(_MEMFD):
        return "memfd", path[len(_MEMFD):]
    return "anon", None


def collect(sources: dict[str, ShmemSource], pid: int, vmas: Sequence[Vma]) -> None:
    """Note the shmem objects mapped by `pid` (first mapper wins; extents grow)."""
    for v in vmas:
        if v.kind != "shmem" or v.shmem_id is None:
            continue
        extent = v.pgoff + (v.end - v.start)
        src = sources.get(v.shmem_id)
        # A shared mapping is the better source: a private one may hold COW copies.
        if src is None or src.vma is None or (src.vma.flags & uapi.MAP_PRIVATE and
                                              v.flags & uapi.MAP_SHARED):
            kind, name = _kind_of(v.path or "")
            sources[v.shmem_id] = ShmemSource(pid, v, None, max(extent, src.extent if src
                                                                 else 0), kind, name)
        else:
            src.extent = max(src.extent, extent)


def collect_fds(sources: dict[str, ShmemSource], pid: int) -> None:
    """Note the memfds `pid` holds open (a memfd may be mapped by nobody)."""
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        try:
            target = os.readlink(f"{base}/{name}")
        except FileNotFoundError:
            continue
        if not target.startswith(_MEMFD):
            continue
        sid = names.shmem_id(os.stat(f"{base}/{name}").st_ino)
        if sid not in sources:
            memfd = target.removesuffix(" (deleted)")[len(_MEMFD):]
            sources[sid] = ShmemSource(pid, None, int(name), 0, "memfd", memfd)


def dump_object(img: ImageDir, sid: str, src: ShmemSource,
                staging: Staging) -> tuple[ShmemEntry, int]:
    """Write the pagemap and pages of one object; return its inventory entry and the
    number of pages stored."""
    pm_name, pages_name = names.shmem_pagemap(sid), names.shmem_pages(sid)
    v = src.vma
    link = (f"/proc/{src.pid}/map_files/{v.start:x}-{v.end:x}" if v is not None
            else f"/proc/{src.pid}/fd/{src.fd}")
    try:
        fd = _open_object(link)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EACCES) or v is None:
            raise EngineError("memory", f"cannot open {link}: {e.strerror}") from None
        return _dump_through_mem(img, sid, src, v, staging)
    try:
        st = os.fstat(fd)
        size = max(_page_up(st.st_size), src.extent, PAGE_SIZE)
        seals = fcntl.fcntl(fd, _F_GET_SEALS) if src.kind == "memfd" else 0
        runs = data_runs(fd, size)
        if st.st_size % PAGE_SIZE:
            stored = _write_through_mapping(img, pm_name, pages_name, runs, fd, st.st_size,
                                            staging)
        else:
            stored = write_pages(img, pm_name, pages_name, runs, 0, fd, staging)
    finally:
        os.close(fd)
    entry = ShmemEntry(sid, size, st.st_ino, pm_name, pages_name, kind=src.kind,
                       name=src.name, file_size=st.st_size, seals=seals)
    if src.kind == "memfd":
        entry.uid, entry.gid = st.st_uid, st.st_gid
        entry.atime_ns, entry.mtime_ns = st.st_atime_ns, st.st_mtime_ns
    return entry, stored


def _write_through_mapping(img: ImageDir, pm_name: str, pages_name: str, runs: list[Run],
                           fd: int, file_size: int, staging: Staging) -> int:
    """Like write_pages from `fd`, for an object whose size is not a page multiple: its
    last page ends past the end of the file, where pread stops short. A mapping of the
    object reads that tail as zeros, as the tasks see it: read it through /proc/self/mem."""
    # Data extents end at the end of the file (SEEK_DATA), so this mapping covers them.
    length = _page_up(file_size)
    addr = ksys.mmap(0, length, uapi.PROT_READ, uapi.MAP_SHARED, fd, 0)
    try:
        mem = os.open("/proc/self/mem", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return write_pages(img, pm_name, pages_name, runs, 0, mem, staging, addr)
        finally:
            os.close(mem)
    finally:
        ksys.munmap(addr, length)


def _open_object(link: str) -> int:
    """Our own read-only description of the object behind a map_files or fd link."""
    return os.open(link, os.O_RDONLY | os.O_CLOEXEC)


def _page_up(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def data_runs(fd: int, size: int) -> list[Run]:
    """Data extents of the shmem object open at fd in [0, size), page aligned (swapped
    out pages count as data)."""
    runs: list[Run] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break  # no data after pos
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        start &= ~(PAGE_SIZE - 1)
        end = _page_up(end)
        runs.append(Run(start, end - start, True))
        pos = end
    return runs


def _dump_through_mem(img: ImageDir, sid: str, src: ShmemSource, v: Vma,
                      staging: Staging) -> tuple[ShmemEntry, int]:
    """Fallback: the present pages of one mapping, read through /proc/PID/mem (pages of
    the object that no VMA of this task maps cannot be reached this way)."""
    if v.flags & uapi.MAP_PRIVATE:
        raise EngineError("memory", f"memfd {src.name!r} (mapped privately at {v.start:#x}, "
                                    f"pid {src.pid}): the object cannot be opened and a "
                                    "private mapping does not show its content")
    fd = procpagemap.open_pagemap(src.pid)
    try:
        regions = ksys.pagemap_scan(fd, v.start, v.end, category_mask=uapi.PAGE_IS_PRESENT,
                                    return_mask=0)
    finally:
        os.close(fd)
    # Runs are object offsets; pread at offset + base reads the mapped address.
    base = v.start - v.pgoff
    runs = [Run(s - base, e - s, True) for s, e, _c in regions]
    mem = os.open(f"/proc/{src.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        pm_name, pages_name = names.shmem_pagemap(sid), names.shmem_pages(sid)
        stored = write_pages(img, pm_name, pages_name, runs, 0, mem, staging, base)
    finally:
        os.close(mem)
    return ShmemEntry(sid, _page_up(src.extent), v.inode, pm_name, pages_name,
                      kind=src.kind, name=src.name), stored
