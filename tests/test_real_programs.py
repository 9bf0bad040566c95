"""Real programs through the whole harness: each Python program in tests/real (an asyncio
echo server with a client connected across C/R, redis-server with a client connection,
an SQLite exclusive transaction) is started, checkpointed and restored twice with every
check of the runner, then used: its own verdict says whether it still works. In flavour ns
the program lives in a root of its own: the harness installs the Python runtime and the
descriptor's ``deps`` (redis-server) there (flavors/root.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROGRAMS = sorted(p.name for p in (REPO / "tests" / "real").iterdir()
                  if p.is_file() and not p.suffix and p.name != "Makefile")


@pytest.mark.parametrize("flavor", ["h", "ns"])
@pytest.mark.parametrize("program", PROGRAMS)
def test_real_program_survives_checkpoint_restore(program: str, flavor: str) -> None:
    out = subprocess.run([sys.executable, "runner.py", "run", "--tests-dir", "tests/real",
                          "-t", f"ext/{program}", "-f", flavor, "--iters", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    text = out.stdout + out.stderr
    summary = re.search(r"(\d+) passed, (\d+) failed, (\d+) skipped", text)
    assert summary, text
    if summary.groups() == ("0", "0", "1"):
        pytest.skip(re.search(r"SKIP.*", text).group(0) if "SKIP" in text else text[-300:])
    assert out.returncode == 0 and summary.group(1) == "1", text
