"""Flavour uns: as ns, plus a new user namespace.

Id maps (written by nsinit from outside): uid and gid 0..65535 inside are 100000..165535
outside, so root in the test is an unprivileged id on the host.  The test's work dir is
chowned to 100000:100000 so "root" inside can create its files there; every directory above
it must be searchable by others (the harness creates its temp dirs 0755).
"""

from __future__ import annotations

import os
from pathlib import Path

from flavors.ns import NsFlavor

UNS_BASE = 100000  # keep in sync with UNS_BASE in nsinit.c


class UserNsFlavor(NsFlavor):
    """ns flavour inside a user namespace with uid/gid maps."""

    name = "uns"
    user_ns = True

    def prepare(self, workdir: Path) -> None:
        os.chown(workdir, UNS_BASE, UNS_BASE)
