"""Record the identity (engine/images/fileid.py) of the files a task needs by path: its
executable and every file it maps. Each file is read through the task's own reference
(/proc/PID/exe, /proc/PID/map_files/...), so it is the file the task really uses even if
its path was replaced since; a path whose file cannot be identified is left out (the
restore then opens it unchecked, as before)."""

from __future__ import annotations

import os

from engine.images.fileid import identify_fd
from engine.images.records import FileIdentity, Vma


def identities(pid: int, exe: str | None, vmas: list[Vma]) -> list[FileIdentity]:
    """One FileIdentity per distinct path: the executable, then mapped files."""
    refs: dict[str, str] = {}
    if exe and not exe.endswith(" (deleted)"):
        refs[exe] = f"/proc/{pid}/exe"
    for v in vmas:
        if v.kind == "file" and v.path and not v.deleted and v.path not in refs:
            refs[v.path] = f"/proc/{pid}/map_files/{v.start:x}-{v.end:x}"
    out = []
    for path, ref in refs.items():
        try:
            fd = os.open(ref, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue  # e.g. map_files needs CAP_SYS_ADMIN: no identity, no check
        try:
            out.append(identify_fd(fd, path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return out
