"""Which criu binary the benchmark compares against.

In order: `--criu-bin`; `criu` in PATH; the CRIU 4.2 that `shared/peers/criu/build.sh`
builds (or finds already built) when `shared/` sits beside the checkout, looked for at
`$ROOT/../shared` and `$ROOT/../../shared` as .ci/run does. build.sh prints the binary's
path on its last line of output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BUILD_SCRIPT = Path("peers") / "criu" / "build.sh"
# Building CRIU (apt-get + make on 2 cores) takes minutes; an already built one answers
# at once.
BUILD_TIMEOUT_S = 1800.0


@dataclass
class CriuLookup:
    """The criu binary found (None: none), where it came from, or why there is none."""

    binary: str | None
    source: str  # "--criu-bin", "PATH" or the build script's path
    error: str = ""


def build_scripts(root: Path) -> list[Path]:
    """Where shared/peers/criu/build.sh may sit for the checkout at root, in order."""
    return [root.parent / "shared" / BUILD_SCRIPT, root.parent.parent / "shared" / BUILD_SCRIPT]


def find_criu(explicit: str | None, root: Path,
              which: Callable[[str], str | None] = shutil.which,
              timeout: float = BUILD_TIMEOUT_S) -> CriuLookup:
    """The criu to measure: --criu-bin, else from PATH, else the output of build.sh."""
    if explicit:
        return CriuLookup(which(explicit) or explicit, "--criu-bin")
    found = which("criu")
    if found:
        return CriuLookup(found, "PATH")
    script = next((s for s in build_scripts(root) if s.is_file()), None)
    if script is None:
        places = " or ".join(str(s) for s in build_scripts(root))
        return CriuLookup(None, "", f"no --criu-bin, no criu in PATH, and no {places}")
    return run_build_script(script, timeout)


def run_build_script(script: Path, timeout: float) -> CriuLookup:
    """Run build.sh; its last line of output is the binary, which must be executable."""
    try:
        res = subprocess.run(["bash", str(script)], check=False, capture_output=True,
                             text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return CriuLookup(None, str(script), f"{script}: no result within {timeout:.0f} s")
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        why = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        return CriuLookup(None, str(script), f"{script}: exit {res.returncode}: {why}")
    binary = lines[-1].strip()
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        return CriuLookup(None, str(script),
                          f"{script}: printed {binary!r}, which is not an executable file")
    return CriuLookup(binary, str(script))
