"""Driver for the bundled engine, run as ``python -m engine ...`` (docs/ARCHITECTURE.md).

Each step is a fork of an engine server started for the test (zdtm.drivers.engine_client,
engine/serve.py) so that interpreter start-up and imports are paid once, not per step;
ZDTM_ENGINE_SERVER=0 (or ``BundledEngine(server=False)``) runs every step as a subprocess
of its own, as does any step the server cannot take (with a note in the result).
"""

from __future__ import annotations

import compileall
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zdtm import ROOT_DIR
from zdtm.allowances import Allowance
from zdtm.drivers.base import (
    Engine,
    Features,
    Helper,
    Launch,
    StepProcess,
    StepResult,
    TreeInfo,
    popen_launch,
    read_pidfile,
    run_logged,
)
from zdtm.drivers.engine_client import EngineServer, ServerUnavailable

#: About 1 s here; a software-emulated guest at load took more than 60 s. Probed once per
#: run (cli._run_parallel), so a slow probe costs once.
CHECK_TIMEOUT = 300.0
#: "0" turns the engine server off: every step is then a subprocess of its own
SERVER_ENV = "ZDTM_ENGINE_SERVER"


#: What this engine restores differently, declared (zdtm.allowances) until it does not.
ALLOWANCES = (
    Allowance("sharing", "cow-lost-indirect",
              "the bundled engine rebuilds the pages each child shares copy-on-write with "
              "its parent at the same address; pages two processes share otherwise (moved "
              "after the fork, or shared through an ancestor that rewrote its own copy) "
              "come back as separate copies (same content, more memory)"),
)

#: Declared for lazy restores only.
LAZY_ALLOWANCES = (
    Allowance("sharing", "cow-lost",
              "a lazy restore gets private pages from the lazy-pages daemon after the tree "
              "is forked, so pages a parent and its child shared copy-on-write come back as "
              "separate copies (same content, more memory)"),
)


class BundledEngine(Engine):
    """The engine of this repository: each step a fork of its engine server (started at
    attach(), killed at close()), or a subprocess of its own (``server=False``, or
    ZDTM_ENGINE_SERVER=0 when ``server`` is not given)."""

    name = "bundled"

    def __init__(self, server: bool | None = None) -> None:
        self._features: Features | None = None
        self._unavailable: str | None = None
        self._lazy = Helper()
        self._tree = TreeInfo()
        self._lazy_restore = False  # the last restore was a lazy one
        self.use_server = os.environ.get(SERVER_ENV, "1") != "0" if server is None else server
        self._server: EngineServer | None = None
        self._notes: list[str] = []

    def attach(self, tree: TreeInfo) -> None:
        self._tree = tree
        # started now, it imports while the harness freezes and captures the tree
        self._start_server()

    def allowances(self) -> tuple[Allowance, ...]:
        return ALLOWANCES + (LAZY_ALLOWANCES if self._lazy_restore else ())

    def version(self) -> str:
        # the engine is part of this checkout: the results file's harness commit says which
        return "in-tree"

    def command(self, *args: str) -> list[str]:
        """The argv running ``python -m engine ARGS`` (with env() and cwd ROOT_DIR)."""
        # -S: the engine is stdlib only, so site-packages (and its .pth hooks) is skipped:
        # less start-up per step, and nothing installed can change the engine's imports.
        return [sys.executable, "-S", "-m", "engine", *args]

    def env(self) -> dict[str, str]:
        """This environment with the source tree on PYTHONPATH (``-m engine`` resolves
        from any directory)."""
        # The engine is a package of this tree; it never imports zdtm.
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT_DIR),
                                                          env.get("PYTHONPATH")]))
        return env

    def _probe(self) -> None:
        """Run ``engine check --json`` once; remember its features or why it failed."""
        if self._features is not None or self._unavailable is not None:
            return
        # Each step is a fresh interpreter: with PYTHONDONTWRITEBYTECODE set (as on the
        # CI machines) it would compile every engine module again (~30 ms) unless the
        # bytecode is written once here. A read-only checkout just goes without.
        compileall.compile_dir(str(ROOT_DIR / "engine"), quiet=2)
        try:
            proc = subprocess.run(self.command("check", "--json"), env=self.env(),
                                  cwd=ROOT_DIR, stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=CHECK_TIMEOUT,
                                  start_new_session=True, check=False)
        except subprocess.TimeoutExpired:
            self._unavailable = f"'engine check' gave no answer in {CHECK_TIMEOUT:.0f}s"
            return
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            self._unavailable = (f"'python -m engine check' failed (exit {proc.returncode}): "
                                 + (err[-1] if err else "no message"))
            return
        try:
            data = json.loads(proc.stdout)
            feats = {str(k): bool(v) for k, v in data.get("features", {}).items()}
            reasons = {str(k): str(v) for k, v in data.get("reasons", {}).items()}
        except (ValueError, AttributeError) as exc:
            self._unavailable = f"'engine check --json' printed no valid JSON: {exc}"
            return
        self._features = Features(feats, reasons)

    def adopt_probe(self, data: dict[str, Any]) -> None:
        self._unavailable = data.get("unavailable")
        self._features = Features({str(k): bool(v) for k, v in data["features"].items()},
                                  {str(k): str(v) for k, v in data["reasons"].items()})

    def available(self) -> str | None:
        self._probe()
        return self._unavailable

    def check(self) -> Features:
        self._probe()
        return self._features or Features()

    def dump(self, root_pid: int, images_dir: Path, *, leave_running: bool,
             parent_images: Path | None, opts: Sequence[str], timeout: float) -> StepResult:
        args = ["dump", "-t", str(root_pid), "-D", str(images_dir)]
        if leave_running:
            args.append("--leave-running")
        if parent_images is not None:
            args += ["--prev-images-dir", str(parent_images)]
        return self._dump_step("dump", images_dir, [*args, *opts], timeout)

    def snapshot(self, root_pid: int, images_dir: Path, *, parent_images: Path | None,
                 opts: Sequence[str], timeout: float) -> StepResult:
        args = ["dump", "-t", str(root_pid), "-D", str(images_dir), "--leave-running",
                "--track-mem"]
        if parent_images is not None:
            args += ["--prev-images-dir", str(parent_images)]
        return self._dump_step("dump", images_dir, [*args, *opts], timeout)

    def pre_dump(self, root_pid: int, images_dir: Path, *, parent_images: Path | None,
                 opts: Sequence[str], timeout: float) -> StepResult:
        args = ["pre-dump", "-t", str(root_pid), "-D", str(images_dir)]
        if parent_images is not None:
            args += ["--prev-images-dir", str(parent_images)]
        return self._dump_step("pre-dump", images_dir, [*args, *opts], timeout)

    def _dump_step(self, step: str, images_dir: Path, args: list[str], timeout: float
                   ) -> StepResult:
        """Run a dump-like command; its figures come from the image's stats.json."""
        res = run_logged(self.command(*args), step=step,
                         log=images_dir.with_name(images_dir.name + ".log"),
                         timeout=timeout, env=self.env(), cwd=ROOT_DIR,
                         launch=self._launcher(step))
        res.stats = read_stats(images_dir / "stats.json")
        return res

    def restore(self, images_dir: Path, *, leave_stopped: bool, opts: Sequence[str],
                timeout: float, lazy: bool) -> int:
        pidfile = images_dir.with_name(images_dir.name + ".restored.pid")
        args = ["restore", "-D", str(images_dir), "-d", "--pidfile", str(pidfile)]
        self._lazy_restore = lazy
        if self._tree.root is not None:
            args += ["--root", str(self._tree.root)]
        if leave_stopped:
            args.append("--leave-stopped")
        if lazy:
            args.append("--lazy-pages")
            self._lazy.start(self.command("lazy-pages", "-D", str(images_dir)),
                             images_dir.with_name(images_dir.name + ".lazy.log"),
                             env=self.env(), cwd=ROOT_DIR,
                             launch=self._launcher("lazy-pages"))
        run_logged(self.command(*args, *opts), step="restore",
                   log=images_dir.with_name(images_dir.name + ".restore.log"),
                   timeout=timeout, env=self.env(), cwd=ROOT_DIR,
                   launch=self._launcher("restore"))
        return read_pidfile(pidfile, "restore")

    def finish(self, timeout: float) -> None:
        """Wait for the lazy-pages server to exit once every page is in."""
        self._lazy.finish("lazy-pages", timeout)

    def close(self) -> None:
        """Kill the lazy-pages server and the engine server, if they still run."""
        self._lazy.close()
        if self._server is not None:
            self._server.close()
            self._server_note()
            self._server = None

    def take_notes(self) -> list[str]:
        self._server_note()
        notes, self._notes = self._notes, []
        return notes

    # ---- the engine server -------------------------------------------------------------

    def _start_server(self) -> None:
        """Start the engine server unless it is off or already there."""
        if not self.use_server or self._server is not None:
            return
        self._server = EngineServer(self.command(), self.env(), ROOT_DIR)
        try:
            self._server.start()
        except OSError as exc:
            self._server.fail(f"could not be started: {exc}")

    def _launcher(self, step: str) -> Launch:
        """How to start ``step``: through the engine server when there is one."""
        if not self.use_server:
            return popen_launch

        def launch(cmd: Sequence[str], out: int, env: dict[str, str] | None,
                   cwd: Path | None) -> StepProcess:
            return self._launch(step, cmd, out, env, cwd)

        return launch

    def _launch(self, step: str, cmd: Sequence[str], out: int, env: dict[str, str] | None,
                cwd: Path | None) -> StepProcess:
        """``cmd`` as a child of the engine server; a subprocess (with a note in the step's
        log and the result) when the server cannot take it or it is no engine command."""
        self._start_server()
        assert self._server is not None
        prefix = self.command()
        env = dict(os.environ) if env is None else env
        why = self._server.differs(env) if list(cmd[:len(prefix)]) == prefix else (
            "not an engine command")
        if why is None:
            try:
                return self._server.launch(cmd[len(prefix):], out, env, cwd or ROOT_DIR, step)
            except ServerUnavailable as exc:
                why = str(exc)
        os.write(out, f"# engine server: {why}: run as a subprocess\n".encode())
        self._server_note()
        note = f"engine server: {why}: the {step} step ran as a subprocess"
        if self._server.failed is None and note not in self._notes:
            self._notes.append(note)
        return popen_launch(cmd, out, env, cwd)

    def _server_note(self) -> None:
        """Say once, in the result, that the server failed and why."""
        server = self._server
        if server is not None and server.failed is not None:
            note = f"engine server: {server.failed}: any later step ran as a subprocess"
            if note not in self._notes:
                self._notes.append(note)


def read_stats(path: Path) -> dict[str, float]:
    """The frozen time and page counts the engine wrote beside its image (informational:
    an unreadable file gives no figures, never a failure)."""
    try:
        data = json.loads(path.read_text())
        return {k: float(data[k]) for k in ("frozen_s", "pages_frozen", "pages_total")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}

