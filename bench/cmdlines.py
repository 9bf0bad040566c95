"""Command lines of the engines under test: the bundled one and an installed criu.

Both speak the CRIU-style CLI of docs/ARCHITECTURE.md, so an engine here is only a
way to spell argv; the benchmark times the engine process itself. Whether an engine is
there, and what it reports, is asked through the harness's own drivers (zdtm.drivers).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.procs import DeadlineExceeded, Procs, Timed, argv_short
from zdtm.drivers.bundled import BundledEngine
from zdtm.drivers.criu import CriuEngine
from zdtm.drivers.engine_client import EngineServer, ServedProcess

REPO = Path(__file__).resolve().parent.parent
KILL_GRACE_S = 5.0


@dataclass
class Started:
    """A step started by Engine.start: its pid, how to wait for its end (Timed, wall
    time from its start; DeadlineExceeded after `timeout` seconds, then killed) and how
    to end it at once when the caller gives up on it (nothing once it ended)."""

    pid: int
    finish: Callable[[float], Timed]
    end: Callable[[], None]


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

    def run(self, procs: Procs, argv: list[str], timeout: float) -> Timed:
        """Run one step built here, timed from its start to its exit (see start())."""
        return self.start(procs, argv).finish(timeout)

    def start(self, procs: Procs, argv: list[str]) -> Started:
        """Start one step (also one that runs alongside others: the lazy-pages daemon):
        a process of its own; Started.finish() waits for it."""
        t0 = time.monotonic()
        proc, log = procs.spawn(argv, cwd=REPO, env=self.env())
        # (ended by procs.cleanup(), with every process group it started)
        return Started(proc.pid, lambda timeout: procs.finish(proc, log, timeout, t0),
                       lambda: None)

    def close(self) -> None:
        """Release what the engine holds between steps (nothing by default)."""

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


def _served_end(proc: ServedProcess, argv: list[str], log: Path, t0: float,
                timeout: float) -> Timed:
    """Wait for a served step: its status, wall time from t0, CPU and peak RSS."""
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill(KILL_GRACE_S)
        raise DeadlineExceeded(f"{' '.join(argv_short(argv))}: no exit within "
                               f"{timeout:.0f} s (killed)") from None
    wall = time.monotonic() - t0
    output = log.read_text(errors="replace")[-4000:]
    log.unlink(missing_ok=True)
    return Timed(argv, rc, wall, proc.maxrss_kib or 0, proc.cpu_s or 0.0, output)


class Bundled(Engine):
    """The project's engine, spelled and probed by the harness's driver
    (zdtm.drivers.bundled): the same argv, environment and `check --json`.

    By default each step is a process of its own, interpreter start-up and imports
    included. `served`: each step is forked from one engine server, as the harness runs
    them (zdtm.drivers.engine_client), the lazy-pages daemon too."""

    name = "bundled"

    def __init__(self, served: bool = False) -> None:
        super().__init__()
        self._driver = BundledEngine(server=False)
        self.server: EngineServer | None = None
        if served:
            self.server = EngineServer(self._driver.command(), self._driver.env(), REPO)
            self.server.start()

    def start(self, procs: Procs, argv: list[str]) -> Started:
        """Start one step: a process of its own, or (served) a fork of the server, timed
        from the request to the exit status, CPU and peak RSS as the server's wait4 saw
        them."""
        if self.server is None:
            return super().start(procs, argv)
        if self.server.proc is not None:
            procs.spare(self.server.proc.pid)
        args = argv[len(self.base()):]
        log = procs.new_log()
        t0 = time.monotonic()
        with open(log, "wb") as out:
            proc = self.server.launch(args, out.fileno(), self.env(), REPO, args[0])
        return Started(proc.pid, lambda timeout: _served_end(proc, argv, log, t0, timeout),
                       lambda: proc.kill(KILL_GRACE_S))

    def close(self) -> None:
        """Stop the engine server, if there is one."""
        if self.server is not None:
            self.server.close()
            self.server = None

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
