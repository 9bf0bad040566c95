"""Flavour ns: the test tree lives under a pid-1 init in new pid, mount, net, uts and ipc
namespaces, in a root of its own.

The init is flavors/nsinit (nsinit.c): it pivots into the work directory (filled by
flavors.root: test binary, nsinit and libraries copied in, /proc, /dev nodes), mounts a
private /proc, sets the hostname ``zdtm-ns``, brings lo up and reaps the test tree.  The
engine dumps the tree from that init down, so the whole namespace is checkpointed; after a
restore the test daemon is found again by its pid inside the namespace (NSpid).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from flavors.base import Flavor, Started, StartError
from flavors.root import install, install_at, install_test, make_root
from zdtm.plumbing import host_pid_in_ns, read_pid

NSINIT = Path(__file__).resolve().parent / "nsinit"
HOSTNAME = "zdtm-ns"
ROOTPID_FILE = "nsinit.pid"
LOCATE_TIMEOUT = 5.0


class NsFlavor(Flavor):
    """New pid, mount, net, uts and ipc namespaces under a tiny init."""

    name = "ns"
    uses_ns = True
    #: add a user namespace (flavour uns)
    user_ns = False

    def prepare(self, workdir: Path, deps: Sequence[str] = ()) -> None:
        make_root(workdir)
        for dep in deps:
            # CRIU's convention: "a|b" names one program found at either path
            found = next((p for p in dep.split("|") if Path(p).is_file()), None)
            if found is not None:
                install_at(workdir, Path(found))

    def tree_root(self, workdir: Path) -> Path | None:
        """The work dir is the tree's "/"."""
        return workdir

    def command(self, argv: Sequence[str], workdir: Path, log: Path) -> list[str]:
        init = install(workdir, NSINIT)
        test = install_test(workdir, Path(argv[0]))
        opts = ["-u"] if self.user_ns else []
        if log.parent == workdir:
            opts += ["-l", f"/{log.name}"]
        return [str(workdir / init.lstrip("/")), *opts, "-H", HOSTNAME, "-R", str(workdir),
                "-i", init, "-r", str(workdir / ROOTPID_FILE), "--", *test, *argv[1:]]

    def locate(self, workdir: Path, ns_pid: int) -> Started:
        try:
            root = read_pid(workdir / ROOTPID_FILE)
        except (OSError, ValueError) as exc:
            raise StartError("failed", f"nsinit wrote no root pid: {exc}") from None
        return Started(root_pid=root, test_pid=self.test_pid_after_restore(root, ns_pid),
                       ns_pid=ns_pid)

    def test_pid_after_restore(self, root_pid: int, ns_pid: int) -> int:
        deadline = time.monotonic() + LOCATE_TIMEOUT
        while True:
            pid = host_pid_in_ns(root_pid, ns_pid)
            if pid is not None:
                return pid
            if time.monotonic() > deadline:
                raise StartError("failed", f"no task with pid {ns_pid} in the pid namespace "
                                           f"of {root_pid}")
            time.sleep(0.05)
