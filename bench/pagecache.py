"""The cold-cache variant: image files pushed out of the page cache before a restore.

Eviction is fsync + posix_fadvise(POSIX_FADV_DONTNEED) per file (dirty pages cannot be
dropped, hence the fsync). The kernel may keep pages it cannot drop (another mapping,
a filesystem that ignores the advice, such as tmpfs), so what is left is measured with
mincore and printed: a "cold" row whose image stayed resident would otherwise lie.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
_PROT_READ = 0x1
_MAP_SHARED = 0x01
_MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t,
                          ctypes.POINTER(ctypes.c_ubyte)]


def evict(paths: list[Path]) -> int:
    """Drop the files' pages from the page cache; returns the bytes still resident."""
    left = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            left += resident_bytes(fd)
        finally:
            os.close(fd)
    return left


def resident_bytes(fd: int) -> int:
    """Bytes of the open file that sit in the page cache (mincore over a mapping of it)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    addr = _libc.mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
    if addr in (None, _MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, f"mmap for mincore: {os.strerror(err)}")
    try:
        pages = (size + PAGE - 1) // PAGE
        vec = (ctypes.c_ubyte * pages)()
        if _libc.mincore(addr, size, vec) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mincore: {os.strerror(err)}")
        return sum(b & 1 for b in vec) * PAGE
    finally:
        _libc.munmap(addr, size)
