"""/proc/PID/maps and the VmFlags of /proc/PID/smaps: the one parser of both formats.

Speed matters (a maps06-sized task has ~30,000 VMAs and a 23 MB smaps): the maps lines
are matched with one compiled regex and only the `VmFlags:` lines are picked out of smaps
with a literal search; both run in C. The dump classifies the raw fields itself
(engine/dump/vmas.py, into the image's Vma record); `MapsLine` here is one maps line as
it is, for the engine's own look at an address space (check, injection, restore layout).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
from dataclasses import dataclass

from engine.kernel import uapi
from engine.kernel.structs import ProcmapQuery
from engine.kernel.sys import ioctl

#: One maps line (also the header line of each VMA in smaps): start, end, perms, offset,
#: "MAJ:MIN", inode, path (with " (deleted)" as the kernel shows it; b"" for none).
MAPS_LINE = re.compile(
    rb"^([0-9a-f]+)-([0-9a-f]+) ([-r][-w][-x][ps]) ([0-9a-f]+) ([0-9a-f]+:[0-9a-f]+) (\d+)"
    rb" *(.*)$", re.MULTILINE)
#: A maps line as start, end, perms, offset and the rest (TAIL: device, inode, path),
#: which most lines of a big task repeat: split once per distinct rest.
_HEAD_LINE = re.compile(rb"^([0-9a-f]+)-([0-9a-f]+) ([-r][-w][-x][ps]) ([0-9a-f]+) (.*)$",
                        re.MULTILINE)
_TAIL = re.compile(rb"([0-9a-f]+:[0-9a-f]+) (\d+) *(.*)")
#: A maps line of an executable file mapping (a path, not "[vdso]"), the same groups.
_EXEC_FILE_LINE = re.compile(
    rb"^([0-9a-f]+)-([0-9a-f]+) ([-r][-w]x[ps]) ([0-9a-f]+) ([0-9a-f]+:[0-9a-f]+) (\d+)"
    rb" +(/.*)$", re.MULTILINE)
#: The address range of each maps line.
_RANGE = re.compile(rb"^([0-9a-f]+)-([0-9a-f]+) ", re.MULTILINE)
#: The VmFlags line of each VMA in smaps (its value the group).
VMFLAGS_LINE = rb"VmFlags: ([^\n]*)"
_VMFLAGS = re.compile(VMFLAGS_LINE)
_NAME_MAX = 4096  # PATH_MAX: the longest path PROCMAP_QUERY returns
_DELETED = " (deleted)"

#: The raw fields of one maps line, as MAPS_LINE captures them.
Fields = tuple[bytes, bytes, bytes, bytes, bytes, bytes, bytes]
#: start, end, perms, offset and the rest of a maps line (see split_tail).
HeadFields = tuple[bytes, bytes, bytes, bytes, bytes]


@dataclass(frozen=True)
class MapsLine:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str  # e.g. "rw-p"
    offset: int
    dev: tuple[int, int]  # (major, minor)
    inode: int
    path: str  # "" for anonymous; "[heap]", "[stack]", "[vdso]", ... ; without " (deleted)"
    deleted: bool = False

    @property
    def size(self) -> int:
        """Length in bytes."""
        return self.end - self.start

    @property
    def writable(self) -> bool:
        """PROT_WRITE."""
        return self.perms[1] == "w"

    @property
    def executable(self) -> bool:
        """PROT_EXEC."""
        return self.perms[2] == "x"

    @property
    def shared(self) -> bool:
        """MAP_SHARED (the "s" in perms)."""
        return self.perms[3] == "s"

    @property
    def is_file(self) -> bool:
        """Backed by a file (including shmem files such as "/dev/zero (deleted)", memfds)."""
        return self.inode != 0

    @property
    def map_files_name(self) -> str:
        """The entry name under /proc/PID/map_files/ for this VMA."""
        return f"{self.start:x}-{self.end:x}"


def read_text(pid: int, name: str = "maps") -> bytes:
    """The raw text of /proc/PID/maps (quick: the layout only) or, with name "smaps",
    of /proc/PID/smaps (slow: the kernel walks every page table of the task to count
    what the rest of it shows, ~50 ms per resident GiB)."""
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read()


def ranges(pid: int) -> list[tuple[int, int]]:
    """(start, end) of each mapping of a task, in address order: the layout without the
    rest of each line (a tenth of parse_maps' cost)."""
    return [(int(a, 16), int(b, 16)) for a, b in _RANGE.findall(read_text(pid))]


def entries(text: bytes) -> list[HeadFields]:
    """The maps lines of a maps text, in address order, their device, inode and path
    left as one field (split_tail): 30,000 lines in 11 ms, not 17."""
    return _HEAD_LINE.findall(text)


def split_tail(tail: bytes) -> tuple[bytes, bytes, bytes]:
    """The device ("MAJ:MIN"), inode and path of the rest of a maps line (entries);
    ValueError when it is not that."""
    m = _TAIL.fullmatch(tail)
    if m is None:
        raise ValueError(f"malformed maps line ending {tail[:80]!r}")
    dev, inode, path = m.groups()
    return dev, inode, path


def vmflags(smaps: bytes) -> list[bytes]:
    """The VmFlags value of each VMA of an smaps text (space-separated mnemonics)."""
    return _VMFLAGS.findall(smaps)


def split_deleted(path: str) -> tuple[str, bool]:
    """A maps path without the kernel's " (deleted)" suffix, and whether it had one."""
    if path.endswith(_DELETED):
        return path[: -len(_DELETED)], True
    return path, False


def parse_maps(text: bytes) -> list[MapsLine]:
    """Parse the whole content of a maps file; ValueError on a malformed line."""
    found = MAPS_LINE.findall(text)
    lines = text.count(b"\n") + (1 if text and not text.endswith(b"\n") else 0)
    if len(found) != lines:
        raise ValueError(f"malformed maps text ({lines} lines, {len(found)} VMAs)")
    return [_line(*fields) for fields in found]


def _line(start_s: bytes, end_s: bytes, perms: bytes, off_s: bytes, dev_b: bytes,
          ino_s: bytes, path_b: bytes) -> MapsLine:
    major, minor = dev_b.split(b":")
    path, deleted = split_deleted(path_b.decode(errors="surrogateescape"))
    return MapsLine(start=int(start_s, 16), end=int(end_s, 16), perms=perms.decode(),
                    offset=int(off_s, 16), dev=(int(major, 16), int(minor, 16)),
                    inode=int(ino_s), path=path, deleted=deleted)


def exec_file_maps(pid: int) -> list[MapsLine]:
    """The executable mappings of files (a path, not "[vdso]") of ``pid``, in address
    order, without a look at the others: the kernel walks to each one (PROCMAP_QUERY,
    6.11+), or, before, only their lines of the maps text are parsed (a maps06-sized
    task has 30,000 other lines)."""
    fd = os.open(f"/proc/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            return _query_exec_files(fd)
        except OSError as e:
            if e.errno not in (errno.ENOTTY, errno.EINVAL):
                raise
        with os.fdopen(os.dup(fd), "rb") as f:
            text = f.read()
    finally:
        os.close(fd)
    return [_line(*fields) for fields in _EXEC_FILE_LINE.findall(text)]


def _query_exec_files(fd: int) -> list[MapsLine]:
    """exec_file_maps by PROCMAP_QUERY on an open maps fd (OSError ENOTTY before 6.11)."""
    name = ctypes.create_string_buffer(_NAME_MAX)
    q = ProcmapQuery()
    out: list[MapsLine] = []
    addr = 0
    while True:
        q.size = ctypes.sizeof(q)
        q.query_flags = (uapi.PROCMAP_QUERY_COVERING_OR_NEXT_VMA
                         | uapi.PROCMAP_QUERY_VMA_EXECUTABLE
                         | uapi.PROCMAP_QUERY_FILE_BACKED_VMA)
        q.query_addr = addr
        q.vma_name_addr, q.vma_name_size = ctypes.addressof(name), _NAME_MAX
        q.build_id_addr = q.build_id_size = 0
        try:
            ioctl(fd, uapi.PROCMAP_QUERY, q)
        except OSError as e:
            if e.errno == errno.ENOENT:  # no such VMA at or after addr
                return out
            raise
        path, deleted = split_deleted(name.value.decode(errors="surrogateescape"))
        if path.startswith("/"):
            out.append(_queried(q, path, deleted))
        addr = q.vma_end


def _queried(q: ProcmapQuery, path: str, deleted: bool) -> MapsLine:
    flags = q.vma_flags
    perms = "".join(c if flags & bit else "-" for c, bit in (
        ("r", uapi.PROCMAP_QUERY_VMA_READABLE), ("w", uapi.PROCMAP_QUERY_VMA_WRITABLE),
        ("x", uapi.PROCMAP_QUERY_VMA_EXECUTABLE)))
    perms += "s" if flags & uapi.PROCMAP_QUERY_VMA_SHARED else "p"
    return MapsLine(start=q.vma_start, end=q.vma_end, perms=perms, offset=q.vma_offset,
                    dev=(q.dev_major, q.dev_minor), inode=q.inode, path=path,
                    deleted=deleted)


def read_maps(pid: int) -> list[MapsLine]:
    """VMAs of ``pid`` from /proc/PID/maps, in address order."""
    return parse_maps(read_text(pid))

