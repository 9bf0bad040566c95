"""Checksums of page data: one CRC32C per 4 KiB page of a pages file.

Pages are summed where they already are, never read again for it: in the engine's staging
and read buffers by the engine, and in the task's own memory by the task for the long runs
it writes at dump or reads at restore itself (engine/dump/selfwrite.py,
engine/restore/selfread.py). Both run the same routine (blob.S `page_crcs`), which uses
SSE4.2's crc32 instruction on three pages at once (memory speed: 4-8 GB/s on the reference
VM, against 1 GB/s for zlib.crc32). The engine calls it through ctypes from a small
executable mapping of its own.

Without SSE4.2 (or where the engine may not map code executable) a dump records zlib's
CRC32 of each page instead (ALGO_CRC32, the image says which), and a CRC32C image is
verified by a pure-Python CRC32C (slow, but correct).
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import time
import zlib
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from engine.kernel import blob, uapi

PAGE = uapi.PAGE_SIZE
ALGO_CRC32C = 1
ALGO_CRC32 = 2
ALGO_NAMES = {ALGO_CRC32C: "crc32c", ALGO_CRC32: "crc32"}

_lock = threading.Lock()
_seconds = 0.0


@dataclass(frozen=True)
class PageSums:
    """The checksum of each page of a pages file, in file order, and their algorithm."""

    algo: int
    values: array[int]  # of 'I'


@contextmanager
def timed() -> Iterator[None]:
    """Count the time spent inside as checksum work (ENGINE_VERBOSE `checksums=`)."""
    global _seconds
    start = time.monotonic()
    try:
        yield
    finally:
        with _lock:
            _seconds += time.monotonic() - start


def seconds() -> float:
    """Seconds this process spent computing and verifying checksums (any thread)."""
    return _seconds


@functools.cache
def _native() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """page_crcs mapped executable in the engine, or None without SSE4.2 (or exec maps)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "").split()
    except OSError:
        return None
    if "sse4_2" not in flags:
        return None
    addr = blob.local_code()
    if addr is None:
        return None
    proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64)
    return proto(addr + blob.PAGE_CRCS_OFFSET)


def native() -> bool:
    """Whether CRC32C runs at hardware speed here (in the engine and in its tasks)."""
    return _native() is not None


def prepare() -> None:
    """Load now whatever checking pages needs later (the hardware routine, the table), for
    a forked copy of the engine that may no longer see the files it is loaded from."""
    _native()
    _table()


def write_algo() -> int:
    """The algorithm a dump on this machine records."""
    return ALGO_CRC32C if native() else ALGO_CRC32


def sums_at(algo: int, addr: int, length: int) -> array[int]:
    """Checksums of the `length // PAGE` pages of engine memory at `addr` (length is a
    multiple of PAGE). Releases the GIL for the hardware routine."""
    n = length // PAGE
    out = array("I", bytes(4 * n))
    if not n:
        return out
    with timed():
        fn = _native()
        if algo == ALGO_CRC32C and fn is not None:
            fn(out.buffer_info()[0], addr, n)
            return out
        view = memoryview((ctypes.c_char * length).from_address(addr)).cast("B")
        one = zlib.crc32 if algo == ALGO_CRC32 else _crc32c_py
        for i in range(n):
            out[i] = one(view[i * PAGE:(i + 1) * PAGE])
    return out


def sums_of(algo: int, data: bytes | bytearray | memoryview) -> array[int]:
    """sums_at() of a buffer (its length a multiple of PAGE)."""
    view = memoryview(data).cast("B")
    if view.readonly:
        view = memoryview(bytearray(view))
    buf = (ctypes.c_char * len(view)).from_buffer(view)
    return sums_at(algo, ctypes.addressof(buf), len(view))


@functools.cache
def _table() -> list[int]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        out.append(c)
    return out


def _crc32c_py(data: memoryview) -> int:
    """CRC32C in Python, for a CPU without SSE4.2 reading a CRC32C image."""
    t = _table()
    c = 0xFFFFFFFF
    for b in data.tobytes():
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def task_scratch_bytes(npages: int) -> int:
    """Bytes in_task() needs at `out` for npages: the results, then its 16-byte stack."""
    return ((4 * npages + 15) & ~15) + 16


def in_task(pid: int, mem_fd: int, code: int, out: int, addr: int, npages: int,
            timeout: float, frame: int = 0, home: dict[str, int] | None = None) -> array[int]:
    """CRC32C of the `npages` pages at `addr` of a ptrace-stopped task, computed by the
    task: it runs page_crcs from `code` (a task address holding blob.CODE, executable)
    and writes the results to `out` (task_scratch_bytes(npages) writable bytes). The
    routine returns to blob.S crc_return, whose first syscall stops the task (and is
    skipped); the task is left in that syscall-exit-stop with other registers (the
    caller puts its own back). With an injector's `frame` address and `home` registers
    (Injector.go_home to crc_return), a task whose tracer died goes back to its own
    state from there. Signals must be blocked in the task. Raises OSError on any other
    stop."""
    with timed():
        stack = frame - 8 if frame else out + task_scratch_bytes(npages) - 16
        blob.call(pid, mem_fd, code, blob.PAGE_CRCS_OFFSET, (out, addr, npages), stack,
                  timeout, home)
    raw = os.pread(mem_fd, 4 * npages, out)
    if len(raw) != 4 * npages:
        raise OSError(f"task {pid}: short read of page checksums at {out:#x}")
    return array("I", raw)
