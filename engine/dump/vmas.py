"""Read a frozen task's VMAs: /proc/PID/maps for the layout, smaps for VmFlags, both
parsed by engine/proc/maps.py, and classified here into the image's Vma records.

Speed matters here (a maps06-sized task has ~30,000 VMAs and a 23 MB smaps): the parser
runs in C (one regex each) and the classification is computed once per distinct
(perms, file, VmFlags) combination. Measured: ~0.2 s for 30,000 VMAs, most of it the
kernel generating smaps.
"""

from __future__ import annotations

import os
import subprocess
import sys

from engine.errors import EngineError
from engine.images import names
from engine.images.records import Vma
from engine.kernel import uapi
from engine.proc import maps as procmaps

# The kernel's internal shmem mount (anonymous shared memory, SysV shm, memfd) is the
# first anonymous device on every kernel we target.
_SHMEM_DEV = "00:01"
_SPECIAL = {"[heap]": "heap", "[stack]": "stack", "[vdso]": "vdso", "[vvar]": "vvar",
            "[vvar_vclock]": "vvar", "[vsyscall]": "vsyscall"}
_MEMFD = "/memfd:"
_SYSV = "/SYSV"  # an attach of a SysV segment: "/SYSV<key in hex>", inode = its id


def read_maps(pid: int) -> bytes:
    """The text of /proc/PID/maps (quick: the layout without VmFlags)."""
    return _read(pid, "maps")


def read_smaps(pid: int) -> bytes:
    """The text of /proc/PID/smaps, for its VmFlags (slow: see procmaps.read_text)."""
    return _read(pid, "smaps")


#: Tasks with at least this many VMAs have their smaps read by a process of its own (its
#: start, ~25 ms, is then hidden behind the engine's own work on the VMAs). In-process,
#: medians of 6-8, dump ms read inline / apart: 10,000 VMAs 89.6 / 115.0, 15,000 116.2 /
#: 128.6, 18,000 144.1 / 135.2, 20,000 159.9 / 151.2.
SMAPS_APART_VMAS = 16_000
#: How long that process may take (seconds; the kernel's page walk is ~50 ms a GiB).
SMAPS_TIMEOUT = 60.0
# The reader: smaps in 64 KiB reads, the VmFlags values out, one a line. Plain Python
# started with -I -S (~25 ms): it imports nothing of the engine.
_SMAPS_READER = """import os, re, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
parts = []
while True:
    part = os.read(fd, 65536)
    if not part:
        break
    parts.append(part)
os.write(1, b"\\n".join(re.findall(sys.argv[2].encode(), b"".join(parts))))
"""


def read_vmflags(pid: int, count: int) -> list[bytes]:
    """The VmFlags value of each of the `count` VMAs of a frozen task, from its smaps.

    The kernel hands smaps out ~4 KiB a read (a task of 30,000 VMAs: 23 MB, 6,000 reads).
    Read in a thread beside the engine's busy one, each read then waits for the GIL: 60 ms
    alone took 130-220 ms in a dump. A large one is read, and its VmFlags picked out, by a
    small process of its own (spawned, not forked: forking the engine mid-dump cost it
    copy-on-write faults on every page it wrote after), which only a thread waits for."""
    if count < SMAPS_APART_VMAS:
        return procmaps.vmflags(read_smaps(pid))
    out = os.memfd_create("vmflags", os.MFD_CLOEXEC)
    try:
        try:
            done = subprocess.run(
                [sys.executable, "-I", "-S", "-c", _SMAPS_READER, f"/proc/{pid}/smaps",
                 procmaps.VMFLAGS_LINE.decode()], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.DEVNULL, timeout=SMAPS_TIMEOUT, check=False, env={})
        except (OSError, subprocess.TimeoutExpired) as e:
            raise EngineError("memory", f"cannot read smaps of {pid}: {e}") from None
        if done.returncode:
            raise EngineError("memory", f"cannot read smaps of {pid} (its reader exited "
                                        f"with status {done.returncode})")
        text = os.pread(out, os.fstat(out).st_size, 0)
    finally:
        os.close(out)
    return text.split(b"\n") if text else []


def _read(pid: int, name: str) -> bytes:
    try:
        return procmaps.read_text(pid, name)
    except OSError as e:
        raise EngineError("memory", f"cannot read {name} of {pid}: {e.strerror}") from None


def layout(pid: int) -> tuple[bytes, list[Vma]]:
    """A task's maps text and the VMAs parsed from it, without their VmFlags (see parse)."""
    maps = read_maps(pid)
    return maps, parse(pid, maps, None)


def parse(pid: int, maps: bytes, smaps: bytes | None) -> list[Vma]:
    """VMAs from the maps text, with the VmFlags of the smaps text read while the task
    was in the same state; without smaps, every VMA's vmflags are empty (the layout only,
    for what depends on nothing else: add_vmflags() completes it)."""
    # Most VMAs of a big process repeat a few (perms, file) combinations, so the
    # classification is computed once per combination (the text past the offset).
    cache: dict[tuple[bytes, bytes], _Fields] = {}
    out: list[Vma] = []
    add = out.append
    none: list[str] = []  # (add_vmflags gives each record its list: never changed)
    for start_s, end_s, perms_b, off_s, tail in procmaps.entries(maps):
        fields = cache.get((perms_b, tail))
        if fields is None:
            fields = cache[perms_b, tail] = _classify(pid, perms_b, tail)
        prot, flags, kind, path, dev, inode, deleted, shmem_id = fields
        add(Vma(int(start_s, 16), int(end_s, 16), prot, flags, int(off_s, 16), kind, path,
                dev, inode, deleted, shmem_id, none))
    if smaps is not None:
        add_vmflags(pid, out, procmaps.vmflags(smaps))
    return out


def add_vmflags(pid: int, vmas: list[Vma], flags: list[bytes]) -> None:
    """Give the VMAs parsed from a maps text (with parse(), no smaps) the VmFlags of its
    smaps (read_vmflags) read while the task was in the same state: `vmflags`, and
    MAP_GROWSDOWN for "gd". Records with the same flags share one list; records are never
    modified after the dump reads them."""
    if len(vmas) != len(flags):
        raise EngineError("memory", f"maps and smaps of {pid} disagree "
                                    f"({len(vmas)} vs {len(flags)} VMAs): task not frozen?")
    lists: dict[bytes, list[str]] = {}
    for v, raw in zip(vmas, flags):
        vf = lists.get(raw)
        if vf is None:
            vf = lists[raw] = raw.decode().split()
        v.vmflags = vf
        if "gd" in vf:
            v.flags |= uapi.MAP_GROWSDOWN


#: prot, flags, kind, path, dev, inode, deleted, shmem_id of a maps line
_Fields = tuple[int, int, str, str | None, str | None, int, bool, str | None]


def _classify(pid: int, perms_b: bytes, tail: bytes) -> _Fields:
    """The Vma fields that depend only on the maps line's text past the addresses and
    offset: prot, flags, kind, path, dev, inode, deleted, shmem_id."""
    try:
        dev_b, ino_s, path_b = procmaps.split_tail(tail)
    except ValueError as e:
        raise EngineError("memory", f"maps of {pid}: {e}") from None
    perms = perms_b.decode()
    dev = dev_b.decode()
    inode = int(ino_s)
    prot = ((uapi.PROT_READ if perms[0] == "r" else 0) | (uapi.PROT_WRITE if perms[1] == "w"
            else 0) | (uapi.PROT_EXEC if perms[2] == "x" else 0))
    shared = perms[3] == "s"
    flags = uapi.MAP_SHARED if shared else uapi.MAP_PRIVATE
    path, deleted = procmaps.split_deleted(path_b.decode(errors="surrogateescape"))
    kind = "file"
    shmem_id = None
    if path in _SPECIAL:
        kind = _SPECIAL[path]
    elif dev == _SHMEM_DEV and shared and path.startswith(_SYSV):
        kind = "sysv"  # before the inode test: segment 0 has inode 0
    elif inode == 0:
        # No backing inode: private anonymous (possibly named "[anon:...]"), or some
        # other kernel-provided special mapping such as "[uprobes]".
        kind = "anon" if not path or path.startswith("[anon:") else "other"
    elif dev == _SHMEM_DEV and (shared or path.startswith(_MEMFD)):
        # A memfd may also be mapped privately: restored from the same object.
        kind = "shmem"
        shmem_id = names.shmem_id(inode)
    anon_shared = path == "/dev/zero" or path.startswith("[anon_shmem:")
    if kind in ("anon", "heap", "stack") or (kind == "shmem" and anon_shared):
        flags |= uapi.MAP_ANONYMOUS
    return (prot, flags, kind, path or None, dev if inode or kind == "sysv" else None, inode,
            deleted, shmem_id)


def refuse_unrestorable(pid: int, vmas: list[Vma]) -> None:
    """Refuse, while the task can still run on, a mapping restore could not rebuild
    (mappings of unlinked files: see engine.dump.files.dump_mapped)."""
    for v in vmas:
        if v.kind == "other":
            raise EngineError("memory", f"task {pid}: vma {v.start:#x}-{v.end:#x} ({v.path}): "
                                        "unsupported mapping kind")


def has_private_pages(v: Vma) -> bool:
    """Whether a VMA can hold pages that live only in this process's memory (anonymous
    or copied-on-write): private, not a kernel special mapping, not VM_IO/VM_PFNMAP."""
    if v.flags & uapi.MAP_SHARED or v.kind in ("vdso", "vvar", "vsyscall"):
        return False
    return "io" not in v.vmflags and "pf" not in v.vmflags
