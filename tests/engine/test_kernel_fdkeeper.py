"""engine/kernel/fdkeeper.py: userfaultfd tracking that survives the engine process, and
a keeper that never outlives what it watches."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_kernel_target import Target, spawner

from engine.kernel import fdkeeper, ptrace, uapi, uffd
from engine.kernel.inject import Injector
from engine.proc.maps import read_smaps

PAGE = uapi.PAGE_SIZE


@pytest.fixture
def spawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Target]]:
    """Start ktargets; all are killed at teardown."""
    yield from spawner(tmp_path_factory)


@pytest.fixture
def keepers() -> Iterator[list[int]]:
    """Pids of keepers a test started: reaped (killed if still alive) at teardown."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        _reap(pid, kill=True)


def _reap(pid: int, kill: bool = False, timeout: float = 10.0) -> int | None:
    if kill:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return status
        time.sleep(0.01)
    raise AssertionError(f"keeper {pid} did not exit")


def _vmflags(pid: int, addr: int) -> frozenset[str]:
    return next(v for v in read_smaps(pid) if v.start <= addr < v.end).vmflags


def test_tracking_survives_our_fd_and_ends_with_stop(spawn, keepers, tmp_path: Path) -> None:
    t = spawn("pause")
    t.wait_in_syscall(uapi.SYS_pause)
    sock = str(tmp_path / "track.sock")
    ptrace.seize(t.pid)
    ptrace.freeze(t.pid, 10)
    with Injector(t.pid) as inj:
        area = inj.check(uapi.SYS_mmap, 0, 8 * PAGE, uapi.PROT_READ | uapi.PROT_WRITE,
                         uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS, -1, 0)
        fd = uffd.create_in_target(inj, t.pid, uffd.TRACK_FEATURES)
        uffd.register(fd, area, 8 * PAGE, uapi.UFFDIO_REGISTER_MODE_WP)
        pm = os.open(f"/proc/{t.pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            uffd.written_runs(pm, area, area + 8 * PAGE)  # arm
            keepers.append(fdkeeper.start(sock, t.pid, {"uffd": fd}))
            os.close(fd)  # only the keeper holds it now, as after an engine run
            assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
            assert "uw" in _vmflags(t.pid, area)
            inj.check(uapi.SYS_clock_gettime, 1, area + 4 * PAGE)
            again = fdkeeper.get(sock, "uffd")  # "the next engine run"
            try:
                assert uffd.written_runs(pm, area, area + 8 * PAGE) == [
                    (area + 4 * PAGE, area + 5 * PAGE)]
                fdkeeper.put(sock, "uffd", again)  # replacing is allowed
            finally:
                os.close(again)
            fdkeeper.stop(sock)
            assert _reap(keepers[0]) == 0
            assert not os.path.exists(sock)
            assert "uw" not in _vmflags(t.pid, area)  # last fd gone: tracking ended
        finally:
            os.close(pm)
    ptrace.detach(t.pid)


def test_keeper_exits_with_the_watched_task(spawn, keepers, tmp_path: Path) -> None:
    t = spawn("pause")
    sock = str(tmp_path / "k.sock")
    r, w = os.pipe()
    try:
        keepers.append(fdkeeper.start(sock, t.pid, {"pipe": w}))
    finally:
        os.close(w)
    t.kill()
    assert _reap(keepers[0]) == 0
    assert not os.path.exists(sock)
    assert os.read(r, 10) == b""  # the keeper's copy of the write end is closed too
    os.close(r)


def test_keeper_exits_when_its_socket_is_removed(spawn, keepers, tmp_path: Path) -> None:
    t = spawn("pause")
    sock = str(tmp_path / "k.sock")
    keepers.append(fdkeeper.start(sock, t.pid, {}))
    os.unlink(sock)
    assert _reap(keepers[0]) == 0


def test_replacing_a_keeper_socket_retires_the_old_keeper(spawn, keepers, tmp_path) -> None:
    t = spawn("pause")
    sock = str(tmp_path / "k.sock")
    keepers.append(fdkeeper.start(sock, t.pid, {}))
    keepers.append(fdkeeper.start(sock, t.pid, {}))
    assert _reap(keepers[0]) == 0  # its socket file was replaced
    fdkeeper.stop(sock)
    assert _reap(keepers[1]) == 0


def test_keeper_errors(spawn, keepers, tmp_path: Path) -> None:
    t = spawn("pause")
    sock = str(tmp_path / "k.sock")
    keepers.append(fdkeeper.start(sock, t.pid, {}))
    with pytest.raises(fdkeeper.KeeperError, match="bad request"):
        fdkeeper.get(sock, "nothing-kept-under-this-name")
    with pytest.raises(fdkeeper.KeeperError):
        fdkeeper.get(str(tmp_path / "missing.sock"), "uffd")
    fdkeeper.stop(sock)
    assert _reap(keepers[0]) == 0
    gone = spawn("pause")
    gone.kill()
    with pytest.raises(fdkeeper.KeeperError, match="did not start"):
        fdkeeper.start(str(tmp_path / "x.sock"), gone.pid, {})
