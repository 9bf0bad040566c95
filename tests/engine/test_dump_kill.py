"""A dump that kills its tree (no --leave-running): no task of the tree runs any code of
its own once the image is taken. A task let go between the ptrace detach and the SIGKILL
would go on (write files, send messages the restored tree then sends again)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine.images import load
from engine.restore import pages
from tests.engine import cr_support as cr
from tests.engine.dump_support import run_engine

COUNTER_C = Path(__file__).parent / "data" / "counter.c"


@pytest.fixture(scope="module")
def counter_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cr.build_c(COUNTER_C, tmp_path_factory)


def test_the_killed_tree_runs_none_of_its_code_after_the_dump(counter_bin: Path,
                                                              tmp_path: Path) -> None:
    counted = tmp_path / "counted"
    proc = subprocess.Popen([str(counter_bin), str(counted)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        addr = int(proc.stdout.readline(), 16)
        time.sleep(0.1)  # counting
        res = run_engine("dump", "-t", str(proc.pid), "-D", str(tmp_path / "img"))
        assert res.returncode == 0, res.stderr
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    image = load(str(tmp_path / "img"))
    src = pages.task_source(image, proc.pid)
    try:
        dumped = int.from_bytes(src.read(addr, 8), "little")
    finally:
        src.close()
    written = int.from_bytes(counted.read_bytes()[:8], "little")
    # frozen between the two statements of the loop, the file is one behind
    assert dumped > 0 and written in (dumped - 1, dumped), (dumped, written)
