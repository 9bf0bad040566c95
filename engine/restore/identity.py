"""Before anything is created: every file the image needs by path (executables, mapped
files) must still be the file that was dumped (engine/images/fileid.py)."""

from __future__ import annotations

import sys

from engine.errors import EngineError
from engine.images import DumpImage, names
from engine.images.fileid import difference


def check_files(image: DumpImage, accept_changed: bool, root: str | None = None) -> None:
    """Raise EngineError naming the first changed file; with `accept_changed` print a
    warning per changed file instead and go on. `root`: the tree's own root directory,
    which its paths are relative to (restore --root)."""
    seen: set[str] = set()
    for pid, t in sorted(image.tasks.items()):
        if t.mm is None:
            continue
        for rec in t.mm.files:
            if rec.path in seen:
                continue
            seen.add(rec.path)
            why = difference(rec, root)
            if why is None:
                continue
            what = f"{image.dir.file(names.mm(pid))}: file {rec.path} changed since the dump: {why}"
            if not accept_changed:
                raise EngineError("read", f"{what} (--allow-changed-files to restore anyway)")
            print(f"engine: warning: {what}; restoring anyway (--allow-changed-files)",
                  file=sys.stderr)
