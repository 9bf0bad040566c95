"""The flavour interface: start a zdtm test and say which pids the harness deals with.

A flavour decides where the test's process tree lives.  It starts the test starter in the
test's work directory, waits for the zdtm "ready" signal (the starter exited 0 and the
pidfile exists) within a deadline, and reports

* ``root_pid``: the root of the tree the engine dumps (host pid namespace view),
* ``test_pid``: the test daemon that gets SIGTERM at the end (host view),
* ``ns_pid``:   the pid the test wrote to its pidfile (its own pid namespace view).

This package sits below the harness core and imports nothing from it but the process
plumbing (zdtm.plumbing, stdlib only).
"""

from __future__ import annotations

import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zdtm.plumbing import kill_group, read_pid

#: a zdtm starter exits with this when the test skipped itself at setup
EXIT_SKIP = 77


class StartError(Exception):
    """The test did not become ready; ``kind`` is "timeout", "failed", "skip" or "setup"
    (the flavour cannot run a test in the given place: a harness problem)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Started:
    """Pids of a started test (see the module docstring)."""

    root_pid: int
    test_pid: int
    ns_pid: int


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Flavor(ABC):
    """How and where a test's process tree is started."""

    name: str = "?"
    #: the tree lives in its own namespaces (the snapshot then records them too)
    uses_ns: bool = False

    def prepare(self, workdir: Path, deps: Sequence[str] = ()) -> None:
        """Make ``workdir`` usable by the test (created by the caller); ``deps``: the
        programs it runs (desc ``deps``), for a flavour whose tree has a root of its own."""
        del workdir, deps

    def tree_root(self, workdir: Path) -> Path | None:
        """The tree's own root directory (host path), or None when it shares the host's."""
        del workdir
        return None

    @abstractmethod
    def command(self, argv: Sequence[str], workdir: Path, log: Path) -> list[str]:
        """The command that starts the test starter ``argv`` in this flavour (output: log)."""

    @abstractmethod
    def locate(self, workdir: Path, ns_pid: int) -> Started:
        """After the starter succeeded: the pids, given the pid the test wrote."""

    def test_pid_after_restore(self, root_pid: int, ns_pid: int) -> int:
        """The host pid of the test daemon in a restored tree rooted at ``root_pid``."""
        del root_pid
        return ns_pid

    def start(self, argv: Sequence[str], workdir: Path, pidfile: str, timeout: float,
              log: Path) -> Started:
        """Start the test and wait until it is ready; raise StartError otherwise.

        On failure the starter's process group is killed; anything that escaped it (a
        daemon in its own session) is left for the caller's cleanup of its descendants.
        """
        with open(log, "wb") as out:
            proc = subprocess.Popen(self.command(argv, workdir, log), cwd=workdir,
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    close_fds=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise StartError("timeout", f"not ready after {timeout:.0f}s: "
                                        f"{_tail(log) or 'no output'}") from None
        if rc == EXIT_SKIP:
            raise StartError("skip", "the test skipped itself at setup")
        if rc != 0:
            raise StartError("failed", f"starter exited with status {rc}: "
                                       f"{_tail(log) or 'no output'}")
        # the pidfile is renamed into place before the starter exits; allow a short grace
        deadline = time.monotonic() + 2.0
        path = workdir / pidfile
        while True:
            try:
                ns_pid = read_pid(path)
                break
            except (OSError, ValueError) as exc:
                if time.monotonic() > deadline:
                    raise StartError("failed", f"starter exited 0 but {exc}") from None
                time.sleep(0.05)
        return self.locate(workdir, ns_pid)

