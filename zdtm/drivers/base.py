"""The engine driver interface: how the harness asks any C/R engine to dump and restore.

A driver wraps one engine (the bundled ``python -m engine``, an installed ``criu``, or none
at all for --nocr).  Every call has a deadline; a driver never leaves its own processes
behind.  Failures raise EngineFailure with a kind the report can show:

``crashed``  the engine died from a signal (or an unhandled Python exception)
``error``    it exited non-zero and said why
``timeout``  it did not finish before the deadline and was killed
"""

from __future__ import annotations

import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from zdtm.allowances import Allowance
from zdtm.plumbing import KILL_GRACE, kill_group, read_pid


class EngineFailure(Exception):
    """An engine step failed; ``kind`` is crashed, error or timeout."""

    def __init__(self, kind: str, step: str, message: str, log: str = "") -> None:
        super().__init__(f"{step}: {message}")
        self.kind = kind
        self.step = step
        self.message = message
        self.log = log


@dataclass
class Features:
    """What an engine can do, as its own check reports it."""

    features: dict[str, bool] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def missing(self, wanted: Sequence[str]) -> list[str]:
        """Features from ``wanted`` the engine lacks, each with its reason when known."""
        out = []
        for name in wanted:
            if not self.features.get(name, False):
                why = self.reasons.get(name, "not reported by the engine's check")
                out.append(f"{name} ({why})")
        return out

    def refused(self, wanted: Sequence[str]) -> list[str]:
        """Features from ``wanted`` the engine explicitly reports as absent, with reasons.

        Unlike missing(), a feature the engine does not mention is not counted: engines
        that do not report a step (criu) are assumed to have it.
        """
        return [f"{name} ({self.reasons.get(name, 'no reason given')})"
                for name in wanted if self.features.get(name) is False]


@dataclass(frozen=True)
class TreeInfo:
    """Where the tree to dump lives, as its flavour made it (see Engine.attach)."""

    flavor: str = "h"
    #: the tree's own root directory (host path) when it has one, else None (host "/")
    root: Path | None = None


@dataclass
class StepResult:
    """A finished engine command: how long it took and where its output went."""

    seconds: float
    log: Path
    #: what the engine reported about the step (bundled: frozen_s, pages_frozen,
    #: pages_total); empty when it reports nothing
    stats: dict[str, float] = field(default_factory=dict)


class Engine(ABC):
    """One C/R engine, driven step by step by the harness lifecycle."""

    #: short name shown in reports
    name: str = "?"
    #: False only for the nocr driver: the lifecycle then runs its checks without C/R.
    performs_cr: bool = True
    #: True when restore can leave the restored tree stopped for the S1 snapshot.
    can_leave_stopped: bool = True

    @abstractmethod
    def available(self) -> str | None:
        """None when the engine can run here, else why not (tests then SKIP with it)."""

    @abstractmethod
    def check(self) -> Features:
        """The features the engine found on this machine."""

    def probe_result(self) -> dict[str, Any]:
        """What available() and check() found, as plain data: a parallel run probes once
        and hands it to each worker's driver (adopt_probe) instead of probing per test
        (a second or more each, a minute in a software-emulated guest)."""
        why = self.available()
        feats = self.check()
        return {"unavailable": why, "features": dict(feats.features),
                "reasons": dict(feats.reasons)}

    def adopt_probe(self, data: dict[str, Any]) -> None:
        """Take a probe_result() of the same engine on this machine as this driver's own.
        The default probes nothing itself, so there is nothing to take."""

    @abstractmethod
    def dump(self, root_pid: int, images_dir: Path, *, leave_running: bool,
             parent_images: Path | None, opts: Sequence[str], timeout: float) -> StepResult:
        """Dump the tree rooted at ``root_pid`` into ``images_dir``."""

    @abstractmethod
    def pre_dump(self, root_pid: int, images_dir: Path, *, parent_images: Path | None,
                 opts: Sequence[str], timeout: float) -> StepResult:
        """Incremental memory pre-dump; the tree keeps running."""

    @abstractmethod
    def restore(self, images_dir: Path, *, leave_stopped: bool, opts: Sequence[str],
                timeout: float, lazy: bool) -> int:
        """Restore from ``images_dir``; returns the restored root pid (caller's view)."""

    def version(self) -> str:
        """The engine's version for the results file ("" when it has none of its own)."""
        return ""

    def snapshot(self, root_pid: int, images_dir: Path, *, parent_images: Path | None,
                 opts: Sequence[str], timeout: float) -> StepResult:
        """--snaps: a full dump that leaves the tree running and tracks memory, so that
        the next dump against it copies only what changed; restorable by itself."""
        return self.dump(root_pid, images_dir, leave_running=True,
                         parent_images=parent_images, opts=opts, timeout=timeout)

    def finish(self, timeout: float) -> None:
        """Wait for helper processes of the last restore (e.g. a lazy-pages server)."""
        del timeout

    def attach(self, tree: TreeInfo) -> None:
        """Told once the tree is started: its flavour and root, for the options they need."""
        del tree

    def allowances(self) -> tuple[Allowance, ...]:
        """Differences this engine makes on purpose (zdtm.allowances), each with a reason."""
        return ()

    def close(self) -> None:
        """Kill whatever helper the driver still runs (always called at cleanup)."""

    def take_notes(self) -> list[str]:
        """What the driver has to say in the result since the last call (a fallback it
        made, for instance), each note once; the lifecycle asks after close()."""
        return []

    def missing_features(self, names: Sequence[str]) -> list[str]:
        """Features from ``names`` the engine lacks, each with its reason.

        By default those of check(); an engine that probes features one by one (criu check
        --feature NAME) overrides this to probe names its check() did not cover.
        """
        return self.check().missing(names)


class StepProcess(Protocol):
    """A started engine command: a subprocess, or a child of an engine server."""

    @property
    def pid(self) -> int:
        """Its pid (the leader of its own process group)."""

    def wait(self, timeout: float | None = None) -> int:
        """Its exit status (negative: killed by that signal); subprocess.TimeoutExpired
        when it still runs at the deadline."""

    def kill(self, grace: float) -> None:
        """SIGKILL it, then its process group; reap it, waiting at most ``grace`` s."""


#: starts ``cmd`` in its own session: (cmd, output fd for stdout and stderr, env, cwd)
Launch = Callable[[Sequence[str], int, dict[str, str] | None, Path | None], StepProcess]


class PopenProcess:
    """A StepProcess that is a subprocess of the harness."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @property
    def pid(self) -> int:
        """The subprocess's pid."""
        return self.proc.pid

    def wait(self, timeout: float | None = None) -> int:
        """As Popen.wait."""
        return self.proc.wait(timeout=timeout)

    def kill(self, grace: float) -> None:
        """zdtm.plumbing.kill_group."""
        kill_group(self.proc, grace)


def popen_launch(cmd: Sequence[str], out: int, env: dict[str, str] | None,
                 cwd: Path | None) -> StepProcess:
    """Start ``cmd`` as a subprocess in its own session, stdin /dev/null, stdout and
    stderr to ``out``, no other fd."""
    return PopenProcess(subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env=env, cwd=cwd, close_fds=True))


def run_logged(cmd: Sequence[str], *, step: str, log: Path, timeout: float,
               env: dict[str, str] | None = None, cwd: Path | None = None,
               launch: Launch = popen_launch) -> StepResult:
    """Run an engine command in its own session with its output in ``log``.

    Output goes to a file, not a pipe: a restored task that inherited a pipe by mistake
    would otherwise keep the harness waiting.  Raises EngineFailure on a non-zero exit, a
    signal, or the deadline (the whole process group is killed then).  ``launch`` starts
    the command (by default as a subprocess; the bundled driver may hand it to its engine
    server), after the command line is written to the log.
    """
    start = time.monotonic()
    with open(log, "wb") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        proc = launch(cmd, out.fileno(), env, cwd)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill(KILL_GRACE)
            raise EngineFailure("timeout", step, f"no result after {timeout:.0f}s, killed",
                                _tail(log)) from None
    seconds = time.monotonic() - start
    if rc == 0:
        return StepResult(seconds, log)
    text = _tail(log)
    if rc < 0:
        raise EngineFailure("crashed", step, f"killed by signal {signal.Signals(-rc).name}",
                            text)
    if "Traceback (most recent call last)" in text:
        raise EngineFailure("crashed", step, _last_line(text, "unhandled exception"), text)
    raise EngineFailure("error", step, _error_line(text, rc), text)


def read_pidfile(path: Path, step: str) -> int:
    """The pid an engine wrote; a missing or garbled file is an engine error."""
    try:
        return read_pid(path)
    except (OSError, ValueError) as exc:
        raise EngineFailure("error", step, f"no valid pid in {path}: {exc}") from None


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _last_line(text: str, default: str) -> str:
    rows = [r.strip() for r in text.splitlines() if r.strip()]
    return rows[-1].removeprefix("engine: error: ") if rows else default


def _error_line(text: str, rc: int) -> str:
    """The engine's own ``...: error: ...`` line when it printed one (without the prefix)."""
    for row in reversed(text.splitlines()):
        if "error" in row.lower():
            row = row.strip()
            return row.removeprefix("engine: error: ")
    return f"exit status {rc}: " + _last_line(text, "no message")


class Helper:
    """A background engine process such as a lazy-pages server, with a deadline to end."""

    def __init__(self) -> None:
        self.proc: StepProcess | None = None

    def start(self, cmd: Sequence[str], log: Path, *, env: dict[str, str] | None = None,
              cwd: Path | None = None, launch: Launch = popen_launch) -> None:
        """Start ``cmd`` in its own session with its output in ``log``."""
        with open(log, "wb") as out:
            self.proc = launch(cmd, out.fileno(), env, cwd)

    def finish(self, step: str, timeout: float) -> None:
        """Wait for the helper to exit by itself; EngineFailure when it fails or hangs."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill(KILL_GRACE)
            raise EngineFailure("timeout", step,
                                f"still running after {timeout:.0f}s, killed") from None
        if rc != 0:
            raise EngineFailure("crashed" if rc < 0 else "error", step, f"exited with status {rc}")

    def close(self) -> None:
        """Kill the helper if it still runs."""
        if self.proc is not None:
            self.proc.kill(KILL_GRACE)
            self.proc = None
