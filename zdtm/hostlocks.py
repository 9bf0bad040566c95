"""Machine-wide locks on host resources that a test in flavour h shares with every other run.

- ``pty``: a pty's number. The host has one devpts, the restore must get the dumped number
  back (the slaves are opened by path), and a pty another run opens between the dump and
  the restore takes it.
- ``rawnet``: link-layer frames and raw IP packets on the host's loopback. A packet or raw
  socket receives every frame of its protocol on it, so the same test running beside it
  queues packets on it, and a dump refuses a socket with packets queued.

Tests flagged with a resource hold its lock in flavour h from start to cleanup; the
namespace flavours have a devpts and a network of their own and need none. The lock file
is the same for every checkout and every run on the machine (flock: released when its
holder dies).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Self

from zdtm import plumbing

#: How long a run waits for another run's test to let the resource go.
WAIT = 1800.0


def lock_dir() -> Path:
    """Where the machine's lock files live: /run/lock, or /tmp without it (not TMPDIR:
    two runs with different TMPDIRs must meet on one file)."""
    run_lock = Path("/run/lock")
    return run_lock if run_lock.is_dir() else Path("/tmp")


#: descriptor flags that name a host resource
RESOURCES = ("pty", "rawnet")


def needed(flags: frozenset[str] | set[str], flavor: str) -> list[str]:
    """The host resources a test with these descriptor flags locks in this flavour."""
    return [r for r in RESOURCES if r in flags] if flavor == "h" else []


class Held:
    """Locks held until close() (or the end of a with block)."""

    def __init__(self, fds: list[int], waited: float) -> None:
        self.fds = fds
        self.waited = waited  # seconds spent waiting for them

    def close(self) -> None:
        """Let the resources go."""
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hold(names: list[str], wait: float = WAIT) -> Held:
    """Take the named locks (in sorted order: two holders cannot deadlock). TimeoutError
    when one is not free within `wait` seconds (none is held then)."""
    start = time.monotonic()
    held = Held([], 0.0)
    try:
        for name in sorted(names):
            held.fds.append(plumbing.flock_until(lock_dir() / f"zdtm-host-{name}.lock",
                                                 fcntl.LOCK_EX, start + wait))
    except BaseException:
        held.close()
        raise
    held.waited = time.monotonic() - start
    return held
