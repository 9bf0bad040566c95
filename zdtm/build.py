"""Build the C test binaries (and the ns init) a run needs.

make decides what is stale; the harness only serialises the make runs: parallel pytest
workers and parallel runner jobs take one exclusive flock before calling make, so two makes
never write the same object at once.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Self

from zdtm import CHECKOUT_TAG, ROOT_DIR, ZDTM_DIR
from zdtm.desc import TestDesc
from zdtm.plumbing import flock_until

FLAVORS_DIR = ROOT_DIR / "flavors"
NSINIT = FLAVORS_DIR / "nsinit"
BUILD_TIMEOUT = 600.0


class BuildError(RuntimeError):
    """make failed or timed out; the message holds the tail of its output."""


def _lock_path() -> Path:
    # One lock per source tree, outside it so a read-only checkout still builds its binaries.
    return Path(tempfile.gettempdir()) / f"zdtm-build-{CHECKOUT_TAG}.lock"


class _BuildLock:
    """An exclusive flock with a deadline (a stuck holder must not hang us forever)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.fd = -1

    def __enter__(self) -> Self:
        try:
            self.fd = flock_until(_lock_path(), fcntl.LOCK_EX,
                                  time.monotonic() + self.timeout, poll=0.1)
        except TimeoutError:
            raise BuildError(f"build lock {_lock_path()} held for more than "
                             f"{self.timeout:.0f}s") from None
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing the only fd of the open file drops the flock


def _make(directory: Path, targets: list[str], timeout: float) -> None:
    cmd = ["make", "-s", "-C", str(directory), *targets]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise BuildError(f"{' '.join(cmd)}: timed out after {timeout:.0f}s") from None
    except FileNotFoundError:
        raise BuildError("make is not installed") from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.decode(errors="replace").splitlines()[-30:])
        raise BuildError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")


def ensure_built(tests: Iterable[TestDesc], *, with_nsinit: bool = True,
                 timeout: float = BUILD_TIMEOUT) -> None:
    """Build the binaries of ``tests`` (and flavors/nsinit) if stale; raise BuildError.

    External (prebuilt) tests are only checked for existence.
    """
    targets = []
    for t in tests:
        if t.build_target is None:
            if not os.access(t.binary, os.X_OK):
                raise BuildError(f"{t.binary}: prebuilt test binary missing or not executable")
        else:
            targets.append(t.build_target)
    with _BuildLock(timeout):
        if targets:
            _make(ZDTM_DIR, sorted(set(targets)), timeout)
        if with_nsinit:
            _make(FLAVORS_DIR, ["nsinit"], timeout)
