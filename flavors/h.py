"""Flavour h: the test lives in the harness's own namespaces and keeps its pids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flavors.base import Flavor, Started


class HostFlavor(Flavor):
    """The test tree is a plain child (via the subreaper) of the harness."""

    name = "h"
    uses_ns = False

    def command(self, argv: Sequence[str], workdir: Path, log: Path) -> list[str]:
        return list(argv)

    def locate(self, workdir: Path, ns_pid: int) -> Started:
        # same pid namespace: the pidfile's pid is the host pid and the tree root
        return Started(root_pid=ns_pid, test_pid=ns_pid, ns_pid=ns_pid)
