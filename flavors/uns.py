"""Flavour uns: as ns, plus a new user namespace that owns every other namespace of the tree.

Id maps (written by nsinit from outside): uid and gid 0..65535 inside are 100000..165535
outside, so root in the test is an unprivileged id on the host.  The test's work dir (its
root) is chowned to 100000:100000 so "root" inside can create its files there; every
directory above it must be searchable by others (the harness creates its temp dirs 0755),
because nsinit bind-mounts it as that user.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from flavors.base import StartError
from flavors.ns import NsFlavor

UNS_BASE = 100000  # keep in sync with UNS_BASE in nsinit.c


class UserNsFlavor(NsFlavor):
    """ns flavour inside a user namespace with uid/gid maps."""

    name = "uns"
    user_ns = True

    def prepare(self, workdir: Path, deps: Sequence[str] = ()) -> None:
        for d in workdir.resolve().parents:
            mode = d.stat().st_mode
            if not mode & 0o001:
                raise StartError("setup", f"uns: {d} (mode {mode & 0o777:04o}) is not "
                                          f"searchable by others, so uid {UNS_BASE} cannot "
                                          f"reach the work dir {workdir}; use a work root "
                                          "every user can enter")
        super().prepare(workdir, deps)
        os.chown(workdir, UNS_BASE, UNS_BASE)

    def command(self, argv: Sequence[str], workdir: Path, log: Path) -> list[str]:
        if log.parent == workdir:
            os.chown(log, UNS_BASE, UNS_BASE)  # the init reopens it inside as its stdout
        return super().command(argv, workdir, log)
