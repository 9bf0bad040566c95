"""Command lines of the engines under test: the bundled one and an installed criu.

Both speak the CRIU-style CLI of docs/ARCHITECTURE.md, so an engine here is only a
way to spell argv; the benchmark times the engine process itself. Whether an engine is
there, and what it reports, is asked through the harness's own drivers (zdtm.drivers).
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from pathlib import Path

from zdtm.drivers.bundled import BundledEngine
from zdtm.drivers.criu import CriuEngine

REPO = Path(__file__).resolve().parent.parent


class Engine(ABC):
    """Base: argv builders for dump, pre-dump, restore and lazy-pages."""

    name = "?"

    def __init__(self) -> None:
        self.available = False
        self.message = "not probed"
        self.features: dict[str, bool] = {}
        self.reasons: dict[str, str] = {}  # why a feature is false, in the engine's words

    @abstractmethod
    def base(self) -> list[str]:
        """argv prefix that runs the engine."""

    def env(self) -> dict[str, str] | None:
        """Environment for the engine process (None: inherit)."""
        return None

    @abstractmethod
    def probe(self) -> None:
        """Run `check`; sets available, message and features."""

    def dump(self, pid: int, images: Path, prev: Path | None = None,
             leave_running: bool = False) -> list[str]:
        """Dump the tree of pid into images (kills it unless leave_running)."""
        argv = self.base() + ["dump", "-t", str(pid), "-D", str(images)]
        if leave_running:
            argv.append("--leave-running")
        if prev is not None:
            argv += ["--prev-images-dir", self.prev_arg(images, prev), "--track-mem"]
        return argv + self.log_args(images, "dump")

    def pre_dump(self, pid: int, images: Path, prev: Path | None = None) -> list[str]:
        """Pre-dump pid into images, leaving it running."""
        argv = self.base() + ["pre-dump", "-t", str(pid), "-D", str(images)]
        if prev is not None:
            argv += ["--prev-images-dir", self.prev_arg(images, prev)]
        return argv + self.log_args(images, "pre-dump")

    def restore(self, images: Path, pidfile: Path, lazy: bool = False) -> list[str]:
        """Restore detached (-d); the root pid goes to pidfile."""
        argv = self.base() + ["restore", "-D", str(images), "-d", "--pidfile", str(pidfile)]
        if lazy:
            argv.append("--lazy-pages")
        return argv + self.log_args(images, "restore")

    def lazy_pages(self, images: Path) -> list[str]:
        """The lazy-pages daemon serving the pages of images."""
        return self.base() + ["lazy-pages", "-D", str(images)] + self.log_args(images, "lazy")

    def prev_arg(self, images: Path, prev: Path) -> str:
        """How this engine wants --prev-images-dir spelled."""
        return str(prev)

    def log_args(self, images: Path, action: str) -> list[str]:
        """Extra options to keep a log (none by default)."""
        return []


class Bundled(Engine):
    """The project's engine, spelled and probed by the harness's driver
    (zdtm.drivers.bundled): the same argv, environment and `check --json`."""

    name = "bundled"

    def __init__(self) -> None:
        super().__init__()
        # the benchmark times the engine process itself, start-up included: no server
        self._driver = BundledEngine(server=False)

    def base(self) -> list[str]:
        """`python -S -m engine` with this interpreter (stdlib only: site is skipped)."""
        return self._driver.command()

    def env(self) -> dict[str, str]:
        """PYTHONPATH points at the repository so `-m engine` resolves anywhere."""
        return self._driver.env()

    def probe(self) -> None:
        """`python -m engine check --json` through the driver: available when it answers."""
        why = self._driver.available()
        if why is not None:
            self.message = why
            return
        found = self._driver.check()
        self.features, self.reasons = dict(found.features), dict(found.reasons)
        self.available, self.message = True, "ok"


class Criu(Engine):
    """An installed criu binary, probed by the harness's driver (zdtm.drivers.criu): used
    only when `criu check` passes."""

    name = "criu"

    def __init__(self, binary: str) -> None:
        super().__init__()
        self.binary = shutil.which(binary) or binary
        self.found_by = ""  # --criu-bin, PATH or the build script (bench/criubin.py)

    def base(self) -> list[str]:
        """The criu binary."""
        return [self.binary]

    def probe(self) -> None:
        """`criu check` through the driver; when it fails, the message has criu's words."""
        why = CriuEngine(self.binary).available()
        if why is not None:
            self.message = why
            return
        self.available, self.message = True, "ok"

    def prev_arg(self, images: Path, prev: Path) -> str:
        """criu resolves --prev-images-dir relative to the images directory."""
        return os.path.relpath(prev, images)

    def log_args(self, images: Path, action: str) -> list[str]:
        """criu's own log in the images dir (it says why a step failed)."""
        return ["-o", f"{action}.log"]
