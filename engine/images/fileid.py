"""Identity of a file an image needs (the executable, every mapped file): size, mtime
and, for ELF files, the GNU build-id. The dump records it; the restore compares the file
it finds at the same path, so a binary replaced after the dump is a clear error instead
of a process that dies at its next instruction in the changed code."""

from __future__ import annotations

import os
import struct

from engine.images.records import FileIdentity

_EHDR = struct.Struct("<4sB11xHHIQQQIHHHHHH")  # ELF64 header, little endian
_PHDR = struct.Struct("<IIQQQQQQ")  # ELF64 program header
_NHDR = struct.Struct("<III")
_PT_NOTE = 4
_NT_GNU_BUILD_ID = 3
_MAX_PHNUM = 128
_MAX_NOTES = 1 << 16


def identify_fd(fd: int, path: str) -> FileIdentity:
    """The identity of the open file `fd`, recorded under `path`."""
    st = os.fstat(fd)
    return FileIdentity(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns,
                        build_id=build_id(fd))


def build_id(fd: int) -> str:
    """The GNU build-id note of an ELF64 file as hex, "" when it has none (or is no ELF64
    file). Reads at most a few pages; any malformed header just means no build-id."""
    head = os.pread(fd, _EHDR.size, 0)
    if len(head) < _EHDR.size:
        return ""
    magic, cls, _t, _m, _v, _e, phoff, _sh, _f, _eh, phentsize, phnum, *_ = _EHDR.unpack(head)
    if magic != b"\x7fELF" or cls != 2 or phentsize != _PHDR.size or phnum > _MAX_PHNUM:
        return ""
    table = os.pread(fd, phentsize * phnum, phoff)
    for i in range(len(table) // _PHDR.size):
        p_type, _fl, offset, _va, _pa, filesz, _mem, _al = _PHDR.unpack_from(table, i * _PHDR.size)
        if p_type == _PT_NOTE:
            found = _gnu_build_id(os.pread(fd, min(filesz, _MAX_NOTES), offset))
            if found:
                return found
    return ""


def _gnu_build_id(notes: bytes) -> str:
    pos = 0
    while pos + _NHDR.size <= len(notes):
        namesz, descsz, ntype = _NHDR.unpack_from(notes, pos)
        name_at = pos + _NHDR.size
        desc_at = name_at + (namesz + 3) // 4 * 4
        end = desc_at + (descsz + 3) // 4 * 4
        if end > len(notes):
            return ""
        if ntype == _NT_GNU_BUILD_ID and notes[name_at:name_at + namesz] == b"GNU\0":
            return notes[desc_at:desc_at + descsz].hex()
        pos = end
    return ""


def difference(rec: FileIdentity, root: str | None = None) -> str | None:
    """What differs between the recorded file and the one now at its path (None: same);
    `root`: the directory the tree's paths are relative to (restore --root)."""
    path = os.path.join(root, rec.path.lstrip("/")) if root else rec.path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        return f"cannot be opened: {e.strerror}"
    try:
        now = identify_fd(fd, rec.path)
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    finally:
        os.close(fd)
    for what, then, later in (("build-id", rec.build_id, now.build_id),
                              ("size", rec.size, now.size),
                              ("mtime_ns", rec.mtime_ns, now.mtime_ns)):
        if then != later:
            return f"{what} {then or '(none)'} at the dump, {later or '(none)'} now"
    return None
