"""A task dumped inside an interrupted syscall is restored rewound to it, and the restore
runs nothing of that syscall before the task is resumed: on tests/engine/data/stopped_read.c,
a read() on a pipe stopped by SIGSTOP, whose data arrived while it was stopped (as a signal
and data may arrive together), is still queued after a restore that leaves the task
stopped, and the read returns it once the task runs."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from engine.kernel import uapi
from tests.engine import cr_support as cr

SOURCE = Path(__file__).parent / "data" / "stopped_read.c"
DATA = b"0123456789abcdef"


@pytest.fixture(autouse=True)
def _subreaper() -> None:
    cr.become_subreaper()


@pytest.fixture(scope="module")
def stopped_read(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/engine/data/stopped_read.c, built."""
    return cr.build_c(SOURCE, tmp_path_factory)


def _wait(pid: int, what: str, ok: object) -> None:
    deadline = time.monotonic() + 10
    while not ok():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"task {pid}: {what} within 10 s"
        time.sleep(0.005)


def _in_read(pid: int) -> bool:
    with open(f"/proc/{pid}/syscall", encoding="ascii") as f:
        return f.read().split()[:1] == [str(uapi.SYS_read)] and cr.state(pid) == "S"


def _queued(pid: int) -> int:
    """Bytes queued in the task's pipe (fd 3), seen through a new open of it."""
    fd = os.open(f"/proc/{pid}/fd/3", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4)
        return int(struct.unpack("i", raw)[0])
    finally:
        os.close(fd)


def test_read_with_data_queued_is_not_run_by_the_restore(stopped_read: Path,
                                                          tmp_path: Path) -> None:
    outfile = tmp_path / "read.out"
    proc = subprocess.Popen([str(stopped_read), str(outfile)], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    pid = proc.pid
    try:
        _wait(pid, "blocked in read()", lambda: _in_read(pid))
        os.kill(pid, signal.SIGSTOP)
        _wait(pid, "stopped", lambda: cr.state(pid) == "T")
        fd = os.open(f"/proc/{pid}/fd/4", os.O_WRONLY | os.O_CLOEXEC)
        try:
            assert os.write(fd, DATA) == len(DATA)
        finally:
            os.close(fd)
        images = tmp_path / "img"
        d = cr.engine("dump", "-t", str(pid), "-D", str(images))
        assert d.returncode == 0, d.stderr
        proc.wait(timeout=10)
        r = cr.engine("restore", "-D", str(images), "-d", "--leave-stopped",
                      "--pidfile", str(tmp_path / "restored.pid"))
        assert r.returncode == 0, r.stderr
        assert cr.state(pid) == "T"
        assert _queued(pid) == len(DATA), "the restore ran the interrupted read"
        assert not outfile.exists()
        os.kill(pid, signal.SIGCONT)
        status = cr.wait_gone(pid, 30)
        assert outfile.read_text().splitlines()[-1] == "PASS"
        assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        cr.kill_reap(pid)
