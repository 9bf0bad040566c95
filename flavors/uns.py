"""Flavour uns: as ns, plus a new user namespace.

Id maps (written by nsinit from outside): uid and gid 0..65535 inside are 100000..165535
outside, so root in the test is an unprivileged id on the host.  The test's work dir is
chowned to 100000:100000 so "root" inside can create its files there; every directory above
it must be searchable by others (the harness creates its temp dirs 0755).

The test binary and nsinit are run from copies in the work dir: everything the tree maps
from files must be reachable by uid 100000, because a C/R engine acting with the target's
credentials reopens those files by path at restore (a checkout may sit under a 0700 home).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from flavors.base import StartError
from flavors.ns import NSINIT, NsFlavor

UNS_BASE = 100000  # keep in sync with UNS_BASE in nsinit.c
BIN_DIR = ".bin"


class UserNsFlavor(NsFlavor):
    """ns flavour inside a user namespace with uid/gid maps."""

    name = "uns"
    user_ns = True

    def prepare(self, workdir: Path) -> None:
        for d in workdir.resolve().parents:
            mode = d.stat().st_mode
            if not mode & 0o001:
                raise StartError("setup", f"uns: {d} (mode {mode & 0o777:04o}) is not "
                                          f"searchable by others, so uid {UNS_BASE} cannot "
                                          f"reach the work dir {workdir}; use a work root "
                                          "every user can enter")
        os.chown(workdir, UNS_BASE, UNS_BASE)

    def command(self, argv: Sequence[str], workdir: Path) -> list[str]:
        bindir = workdir / BIN_DIR
        bindir.mkdir(exist_ok=True)
        os.chmod(bindir, 0o755)  # the umask may be stricter; uid 100000 must reach them
        test = Path(shutil.copy2(argv[0], bindir / Path(argv[0]).name))
        init = Path(shutil.copy2(NSINIT, bindir / NSINIT.name))
        for path in (test, init):
            os.chmod(path, 0o755)
        return self.init_command(init, [str(test), *argv[1:]], workdir)
