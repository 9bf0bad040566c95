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
from tests.engine.dump_support import run_engine

COUNTER_C = r"""
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
static volatile uint64_t mine;  /* private: its value at the dump is in the image */
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDWR | O_CREAT, 0600);
    if (fd < 0 || ftruncate(fd, 4096))
        return 1;
    volatile uint64_t *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (shared == MAP_FAILED)
        return 1;
    printf("%p\n", (void *)&mine);
    fflush(stdout);
    for (;;) {
        mine++;
        *shared = mine;  /* the file: what the process did, the image: what was dumped */
    }
}
"""


@pytest.fixture(scope="module")
def counter_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("counter")
    (d / "counter.c").write_text(COUNTER_C)
    subprocess.run(["gcc", "-O1", "-o", str(d / "counter"), str(d / "counter.c")],
                   check=True, timeout=60)
    return d / "counter"


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
