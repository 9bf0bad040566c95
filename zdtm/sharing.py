"""What the processes of a tree share with each other.

- Kernel tables (kcmp): the fd table (CLONE_FILES), fs info: cwd, root, umask (CLONE_FS),
  signal handlers (CLONE_SIGHAND) and the address space (CLONE_VM without CLONE_THREAD).
  Processes sharing one table form a class, named after its first member in walk order
  ("files[pid 1]"); a process alone with its table has no entry.
- Private memory still shared copy-on-write since a fork: /proc/PID/pagemap gives, as root,
  the page frame of every present page; an anonymous page of a private mapping whose frame
  another process of the tree maps too is shared copy-on-write. (Not filtered by
  PM_MMAP_EXCLUSIVE: older kernels, 6.1 among them, set it for every page of a PMD-mapped
  huge page by the head page's map count, also for pages another process still maps.) A restore that copies such pages into each process
  doubles the memory the tree uses: the processes see the same bytes, but not the same
  memory. Pages of the zero page are no one's.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from collections.abc import Sequence

from zdtm import proc
from zdtm.plumbing import libc

_SYS_KCMP = 312
KCMP_KINDS = {"vm": 1, "files": 2, "fs": 3, "sighand": 4}
TABLE_NAMES = {"vm": "address space (CLONE_VM)", "files": "fd table (CLONE_FILES)",
               "fs": "fs info (CLONE_FS)", "sighand": "signal handlers (CLONE_SIGHAND)"}
PM_PFN_MASK = (1 << 55) - 1
PM_FILE = 1 << 61  # file page or shared anonymous memory


# A pair of processes -> the (address in the first, address in the second) of every page
# they share copy-on-write. Processes are named by their pid in their own namespace.
CowPairs = dict[tuple[int, int], frozenset[tuple[int, int]]]


def kcmp(pid1: int, pid2: int, kind: int) -> int:
    """kcmp(2) without indices: 0 when the two share the object, 1/2 for an order."""
    res = libc.syscall(ctypes.c_long(_SYS_KCMP), ctypes.c_long(pid1), ctypes.c_long(pid2),
                        ctypes.c_long(kind), ctypes.c_ulong(0), ctypes.c_ulong(0))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"kcmp({pid1}, {pid2}, {kind}): {os.strerror(err)}")
    return int(res)


def table_classes(members: Sequence[tuple[int, int]]) -> dict[int, dict[str, str]]:
    """For (outer pid, inner pid) of live processes in walk order: {outer pid: {kind:
    label}} for every kernel table a process shares with another of them."""
    out: dict[int, dict[str, str]] = {outer: {} for outer, _ in members}
    for kind, code in KCMP_KINDS.items():
        leaders: list[tuple[int, int]] = []  # first member of each class so far
        for outer, inner in members:
            for lead_outer, lead_inner in leaders:
                if kcmp(lead_outer, outer, code) == 0:
                    label = f"{kind}[pid {lead_inner}]"
                    name = TABLE_NAMES[kind]
                    out[lead_outer][name] = out[outer][name] = label
                    break
            else:
                leaders.append((outer, inner))
    return out


def _zero_pfn() -> int:
    """The frame of the shared zero page (what reading untouched anonymous memory maps)."""
    with mmap.mmap(-1, proc.PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as m:
        _ = m[0]  # the read maps the zero page
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            entry = struct.unpack("<Q", os.pread(f.fileno(), 8, addr // proc.PAGE_SIZE * 8))[0]
        del addr
        return int(entry) & PM_PFN_MASK


def _shared_private_pages(pid: int, zero: int) -> dict[int, int]:
    """{frame: address} of the present anonymous pages of private mappings."""
    out: dict[int, int] = {}
    entries = proc.parse_maps(proc.read_text(f"/proc/{pid}/maps"))
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for e in entries:
            if e.shared or e.path in (proc.VSYSCALL,) or e.path.startswith(proc.VVAR_PREFIX):
                continue
            raw = os.pread(fd, e.pages * 8, e.start // proc.PAGE_SIZE * 8)
            for i, entry in enumerate(struct.iter_unpack("<Q", raw)):
                v = entry[0]
                if v & proc.PM_PRESENT and not v & PM_FILE:
                    pfn = v & PM_PFN_MASK
                    if pfn and pfn != zero:
                        out[pfn] = e.start + i * proc.PAGE_SIZE
    finally:
        os.close(fd)
    return out


def cow_pairs(members: Sequence[tuple[int, int]]) -> CowPairs:
    """Pages shared copy-on-write between each pair of the given live processes
    ((outer pid, inner pid) in walk order; two sharing one address space map the same
    pages, not copies: no pair); needs root (page frames)."""
    if len(members) < 2:
        return {}
    zero = _zero_pfn()
    if not zero:
        raise PermissionError("page frames are hidden from the harness (needs CAP_SYS_ADMIN)")
    pages = [(outer, inner, _shared_private_pages(outer, zero)) for outer, inner in members]
    out: dict[tuple[int, int], set[tuple[int, int]]] = {}
    for i, (oa, pa, fa) in enumerate(pages):
        for ob, pb, fb in pages[i + 1:]:
            common = fa.keys() & fb.keys()
            if common and kcmp(oa, ob, KCMP_KINDS["vm"]) == 0:
                continue
            if common:
                out[(pa, pb)] = {(fa[f], fb[f]) for f in common}
    return {k: frozenset(v) for k, v in out.items()}
