"""Helpers for tests that drive the harness end to end with small zdtm-protocol programs:
tests/data/fake_zdtm.c built with one behaviour each (PASS, FAIL, HANG, ...), a --tests-dir
of them, and ./runner.py run as a subprocess that must leave nothing behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from zdtm import plumbing

ROOT = Path(__file__).resolve().parent.parent
FAKE_SRC = ROOT / "tests" / "data" / "fake_zdtm.c"
BUILD_TIMEOUT = 120


def build_fake(behaviour: str, out: Path) -> None:
    """Compile fake_zdtm.c with ``-DBEHAVE_<behaviour>`` into ``out``."""
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", f"-DBEHAVE_{behaviour}", "-o", str(out),
                    str(FAKE_SRC)], check=True, timeout=BUILD_TIMEOUT)


@contextlib.contextmanager
def open_workroot(prefix: str) -> Iterator[Path]:
    """A harness work root below a fresh temp dir others can enter (the uns flavour's uid
    100000 must; pytest's own tmp dirs are 0700); removed afterwards with whatever a
    failed run kept in it for its logs."""
    top = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        os.chmod(top, 0o755)
        yield top / "work"
    finally:
        shutil.rmtree(top, ignore_errors=True)


@contextlib.contextmanager
def fake_suite(tests: Mapping[str, tuple[str, str]], prefix: str) -> Iterator[Path]:
    """A --tests-dir holding, for each ``name: (behaviour, desc)``, the fake built with that
    behaviour and ``name.desc``; removed afterwards.

    Made with mkdtemp directly under the temp dir and opened to others (0755): the ns
    flavour's init and the uns flavour's uid 100000 must reach the binaries."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        os.chmod(d, 0o755)
        for name, (behaviour, desc) in tests.items():
            build_fake(behaviour, d / name)
            (d / f"{name}.desc").write_text(desc + "\n")
        yield d
    finally:
        shutil.rmtree(d)


def runner(*args: str, timeout: float = 180, nice: int = 0) -> subprocess.CompletedProcess[str]:
    """./runner.py ``args`` from the checkout, at least at niceness ``nice``; stdout and stderr
    together in .stdout. Nothing the run started may survive it; a `run` gets a work root
    of its own, removed after it with what a failed test kept there."""
    before = set(plumbing.descendants(os.getpid()))
    with open_workroot("zdtm-runner-") as root:
        extra = ["--work-root", str(root)] if args[:1] == ("run",) else []
        proc = subprocess.run(["nice", "-n", str(max(0, nice - os.nice(0))), sys.executable,
                               str(ROOT / "runner.py"), *args, *extra], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, check=False)
    assert set(plumbing.descendants(os.getpid())) <= before
    return proc
