"""The "no C/R" driver: the lifecycle starts, checks and stops tests without an engine.

It exercises everything around checkpoint/restore (start protocol, freezing, snapshots,
comparison, leak checks, verdicts, cleanup); the lifecycle takes its two snapshots of the
same frozen tree and never calls dump or restore.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from zdtm.drivers.base import Engine, Features, StepResult

NO_CR = "the nocr driver performs no checkpoint/restore"


class NoCREngine(Engine):
    """No engine at all."""

    name = "nocr"
    performs_cr = False
    can_leave_stopped = True

    def available(self) -> str | None:
        return None

    def check(self) -> Features:
        # Without C/R no engine feature is needed: a test's feature list never skips it.
        return Features()

    def dump(self, root_pid: int, images_dir: Path, *, leave_running: bool,
             parent_images: Path | None, opts: Sequence[str], timeout: float) -> StepResult:
        raise RuntimeError(NO_CR)

    def pre_dump(self, root_pid: int, images_dir: Path, *, parent_images: Path | None,
                 opts: Sequence[str], timeout: float) -> StepResult:
        raise RuntimeError(NO_CR)

    def restore(self, images_dir: Path, *, leave_stopped: bool, opts: Sequence[str],
                timeout: float, lazy: bool) -> int:
        raise RuntimeError(NO_CR)
