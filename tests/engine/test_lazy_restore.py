"""Lazy restore end to end: dump a program, start `lazy-pages -D DIR`, `restore
--lazy-pages`; the program verifies its own memory (PASS), the daemon exits by itself,
and neither a process nor a userfaultfd is left behind. Most runs hold the daemon's
background copy back (ENGINE_LAZY_BACKGROUND_DELAY) so that memory arrives through faults.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import engine.restore
from engine.images import PE_PARENT, PE_PRESENT, load
from engine.images.records import NamespaceRecord
from engine.lazy import SOCKET_NAME, protocol
from engine.restore.lazy import is_lazy, refusal
from tests.engine import cr_support as cr

DAEMON_TIMEOUT = 60.0
EVENTS_C = Path(__file__).parent / "data" / "lazy_events.c"


@pytest.fixture(autouse=True)
def _subreaper() -> None:
    cr.become_subreaper()


class Daemons:
    """lazy-pages daemons started by a test; killed (by pid) at teardown if still there."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self, images: Path, **env: str) -> subprocess.Popen:
        """`python -m engine lazy-pages -D images` with env added; stderr to a log."""
        full = dict(os.environ)
        full.pop("ENGINE_FAULT", None)
        full.update(env)
        log = open(self.tmp / f"{images.name}.lazy.log", "wb")  # noqa: SIM115 - kept by Popen
        with log:
            p = subprocess.Popen([sys.executable, "-m", "engine", "lazy-pages", "-D",
                                  str(images)], cwd=cr.ROOT, env=full, stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=log, start_new_session=True)
        self.procs.append(p)
        return p

    def finish(self, p: subprocess.Popen, images: Path) -> str:
        """Wait for the daemon to exit by itself; returns its log; asserts exit 0."""
        rc = p.wait(timeout=DAEMON_TIMEOUT)
        log = (self.tmp / f"{images.name}.lazy.log").read_text()
        assert rc == 0, log
        assert not (images / SOCKET_NAME).exists()
        return log

    def cleanup(self) -> None:
        """Kill what still runs."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    """Started daemons, cleaned up at teardown."""
    d = Daemons(tmp_path)
    try:
        yield d
    finally:
        d.cleanup()


def _dump(pid: int, images: Path, *extra: str) -> None:
    tasks = cr.tree_of(pid)
    d = cr.engine("dump", "-t", str(pid), "-D", str(images), *extra)
    assert d.returncode == 0, d.stderr
    for p in tasks:  # the killed tree's orphans come to us, the subreaper
        cr.wait_gone(p)


def _lazy_restore(images: Path, expect_pid: int) -> None:
    pidfile = images.parent / f"{images.name}.pid"
    r = cr.engine("restore", "-D", str(images), "-d", "--pidfile", str(pidfile),
                  "--lazy-pages")
    assert r.returncode == 0, r.stderr
    assert int(pidfile.read_text()) == expect_pid


def _uffds(pids: list[int]) -> list[str]:
    """userfaultfd descriptors held by any of the processes."""
    out = []
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            if "userfaultfd" in target:
                out.append(f"pid {pid} fd {fd}")
    return out


def _bytes(log: str, what: str) -> int:
    m = re.search(rf"(\d+) {what}", log)
    assert m, log
    return int(m.group(1))


@pytest.fixture
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[cr.ZdtmTest]:
    """The zdtm test named by the test's parameter, started in tmp_path/work."""
    t = cr.ZdtmTest.start(request.param, tmp_path / "work")
    try:
        yield t
    finally:
        t.cleanup()


@pytest.mark.parametrize("running", ["mem_anon", "mem_sparse", "mem_mremap", "grow_stack",
                                     "shmem_datagen_single", "thread", "fork_child",
                                     "sig_handlers"], indirect=True)
def test_lazy_restore_iterations(running: cr.ZdtmTest, daemons: Daemons,
                                 tmp_path: Path) -> None:
    """Two lazy dump/restore cycles; the program passes; daemons end by themselves."""
    for i in range(2):
        images = tmp_path / f"img{i}"
        _dump(running.pid, images)
        daemon = daemons.start(images, ENGINE_LAZY_BACKGROUND_DELAY="0.3")
        _lazy_restore(images, running.pid)
        assert _uffds(cr.tree_of(running.pid)) == []
        log = daemons.finish(daemon, images)
        assert "0 processes gone first" in log
    assert "PASS" in running.stop()


@pytest.mark.parametrize("running", ["mem_anon"], indirect=True)
def test_an_images_dir_of_any_path_length(running: cr.ZdtmTest, daemons: Daemons,
                                          tmp_path: Path) -> None:
    """The socket's own path would not fit a unix socket address (107 bytes): the daemon
    and the restore reach it through the directory's fd."""
    images = tmp_path / ("d" * 100) / "img"
    images.parent.mkdir()
    assert len(str(images / SOCKET_NAME)) > 108
    _dump(running.pid, images)
    daemon = daemons.start(images)
    _lazy_restore(images, running.pid)
    daemons.finish(daemon, images)
    assert "PASS" in running.stop()


@pytest.mark.parametrize("running", ["mem_anon"], indirect=True)
def test_memory_arrives_through_faults(running: cr.ZdtmTest, daemons: Daemons,
                                       tmp_path: Path) -> None:
    """No background copy at all before the program checks its memory: every page it
    reads comes through a fault; the daemon notices the process exit and ends."""
    images = tmp_path / "img"
    _dump(running.pid, images)
    daemon = daemons.start(images, ENGINE_LAZY_BACKGROUND_DELAY="600")
    _lazy_restore(images, running.pid)
    assert "PASS" in running.stop()
    log = daemons.finish(daemon, images)
    assert _bytes(log, "on faults") > 1 << 20
    assert _bytes(log, "in background") == 0
    assert "1 processes gone first" in log


@pytest.fixture(scope="module")
def events_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/engine/data/lazy_events.c, built."""
    return cr.build_c(EVENTS_C, tmp_path_factory)


def test_fork_mremap_madvise_munmap_after_restore(events_bin: Path, daemons: Daemons,
                                                  tmp_path: Path) -> None:
    """The restored program forks (the child reads undelivered pages), mremaps, discards
    and unmaps lazy memory before any background copy: the daemon follows each event."""
    outfile = tmp_path / "events.out"
    proc = subprocess.Popen([str(events_bin), str(outfile)], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    pid = proc.pid
    try:
        deadline = time.monotonic() + 10
        while "ready" not in (outfile.read_text() if outfile.exists() else ""):
            assert time.monotonic() < deadline, "the program did not get ready"
            time.sleep(0.01)
        images = tmp_path / "img"
        _dump(pid, images)
        proc.wait(timeout=10)  # our child: already reaped by _dump, Popen learns it here
        daemon = daemons.start(images, ENGINE_LAZY_BACKGROUND_DELAY="600")
        _lazy_restore(images, pid)
        assert _uffds([pid]) == []
        os.kill(pid, signal.SIGUSR1)
        status = cr.wait_gone(pid, 30)
        assert outfile.read_text().splitlines()[-1] == "PASS"
        assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        log = daemons.finish(daemon, images)
        assert "1 forks" in log
    finally:
        cr.kill_reap(pid)


@pytest.mark.parametrize("running", ["mem_anon"], indirect=True)
def test_incremental_image_served_from_parent(running: cr.ZdtmTest, daemons: Daemons,
                                              tmp_path: Path) -> None:
    """pre-dump, then a dump whose unchanged pages are in the parent: the daemon reads
    them from the parent's pages file."""
    pre, images = tmp_path / "pre", tmp_path / "img"
    r = cr.engine("pre-dump", "-t", str(running.pid), "-D", str(pre))
    assert r.returncode == 0, r.stderr
    _dump(running.pid, images, "--prev-images-dir", str(pre))
    pm = load(str(images)).tasks[running.pid].pagemap
    assert pm is not None and any(e.flags & PE_PARENT for e in pm.entries)
    daemon = daemons.start(images, ENGINE_LAZY_BACKGROUND_DELAY="600")
    _lazy_restore(images, running.pid)
    assert "PASS" in running.stop()
    daemons.finish(daemon, images)


@pytest.mark.parametrize("running", ["mem_anon"], indirect=True)
def test_daemon_killed_midway_fails_visibly(running: cr.ZdtmTest, daemons: Daemons,
                                            tmp_path: Path) -> None:
    """Killing the daemon before it delivered the pages: the kernel unregisters the
    ranges with the last fd and the program reads zeros where its data was: it FAILs or
    crashes (its libc state is zeros too), within the stop deadline; nothing hangs."""
    images = tmp_path / "img"
    _dump(running.pid, images)
    daemon = daemons.start(images, ENGINE_LAZY_BACKGROUND_DELAY="600")
    _lazy_restore(images, running.pid)
    daemon.kill()
    daemon.wait(timeout=10)
    last = running.stop(timeout=30)
    assert "FAIL" in last or "wait status" in last, last
    assert "PASS" not in last


def _taking_nothing(images: Path) -> threading.Thread:
    """A stand-in daemon at the image's socket that reads the hand-over to its end and
    hangs up without its ACK."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(images / SOCKET_NAME))
    listener.listen(1)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(DAEMON_TIMEOUT)
                while True:
                    msg, fd = protocol.recv_message(conn)
                    if fd >= 0:
                        os.close(fd)
                    if msg.get("done"):
                        return
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("running", ["mem_anon"], indirect=True)
def test_a_daemon_that_takes_nothing_fails_the_restore(running: cr.ZdtmTest,
                                                       tmp_path: Path) -> None:
    """No ACK after the hand-over: the restore fails saying so, before any task runs,
    and leaves no task."""
    images = tmp_path / "img"
    _dump(running.pid, images)
    daemon = _taking_nothing(images)
    r = cr.engine("restore", "-D", str(images), "-d", "--lazy-pages")
    daemon.join(timeout=DAEMON_TIMEOUT)
    assert r.returncode == 1
    assert "the lazy-pages daemon did not take the tasks" in r.stderr, r.stderr
    assert not os.path.exists(f"/proc/{running.pid}")


def test_restore_without_daemon_fails_before_creating_tasks(tmp_path: Path) -> None:
    t = cr.ZdtmTest.start("mem_anon", tmp_path / "work")
    try:
        images = tmp_path / "img"
        _dump(t.pid, images)
        r = cr.engine("restore", "-D", str(images), "-d", "--lazy-pages")
        assert r.returncode == 1
        assert "no lazy-pages daemon" in r.stderr
        assert not os.path.exists(f"/proc/{t.pid}")
    finally:
        t.cleanup()


@pytest.mark.parametrize("running", ["mem_anon"], indirect=True)
def test_daemon_without_restore_ends_at_its_deadline(running: cr.ZdtmTest, daemons: Daemons,
                                                     tmp_path: Path) -> None:
    images = tmp_path / "img"
    _dump(running.pid, images)
    p = daemons.start(images, ENGINE_LAZY_TIMEOUT="1")
    assert p.wait(timeout=30) == 1
    assert "no restore connected" in (tmp_path / "img.lazy.log").read_text()
    assert not (images / SOCKET_NAME).exists()


@pytest.mark.parametrize("running", ["mem_anon"], indirect=True)
def test_a_damaged_page_is_never_delivered(running: cr.ZdtmTest, daemons: Daemons,
                                           tmp_path: Path) -> None:
    """The daemon checks each page before it copies it, not all of them before it
    listens: one flipped byte in a lazy page and it kills the restored task (which cannot
    get its memory) and exits naming the page; no process is left."""
    images = tmp_path / "img"
    _dump(running.pid, images)
    pages, at = _a_lazy_page(images, running.pid)
    with open(pages, "r+b") as f:
        f.seek(at + 904)
        byte = f.read(1)
        f.seek(at + 904)
        f.write(bytes([byte[0] ^ 1]))
    p = daemons.start(images, ENGINE_LAZY_BACKGROUND_DELAY="600")
    pidfile = images.parent / "img.pid"
    r = cr.engine("restore", "-D", str(images), "-d", "--pidfile", str(pidfile),
                  "--lazy-pages")
    assert p.wait(timeout=30) == 1
    log = (tmp_path / "img.lazy.log").read_text()
    assert f"checksum mismatch in the page at byte {at}" in log, log
    assert str(pages) in log and not (images / SOCKET_NAME).exists()
    # killed before or after the restore returned: either way nothing runs on
    assert r.returncode == 0 or "engine: error:" in r.stderr, r.stderr
    status = cr.wait_gone(running.pid, 10)
    assert not os.path.exists(f"/proc/{running.pid}")
    if r.returncode == 0:  # the task was ours by then (the subreaper), killed by the daemon
        assert status is not None and os.WIFSIGNALED(status)
        assert os.WTERMSIG(status) == signal.SIGKILL


def _a_lazy_page(images: Path, pid: int) -> tuple[Path, int]:
    """The pages file of task `pid` and the offset there of a page the daemon serves."""
    task = load(str(images), verify_pages=False).tasks[pid]
    assert task.mm is not None and task.pagemap is not None
    pm = task.pagemap
    for addr, flags, offset in zip(pm.addrs, pm.flags, pm.offsets):
        if flags & PE_PRESENT and any(v.start <= addr < v.end and is_lazy(v)
                                      for v in task.mm.vmas):
            return images / task.mm.pages, offset
    raise AssertionError("no lazy page stored")


def test_user_namespace_images_are_refused() -> None:
    """A tree in its own user namespace gets a user-mode userfaultfd only: refused, and
    `check` says so (the harness SKIPs uns runs with that reason)."""
    def image(shared: bool) -> SimpleNamespace:
        ns = NamespaceRecord("user", 4026531837, shared, 1)
        return SimpleNamespace(path="/img", inventory=SimpleNamespace(namespaces=[ns]))

    assert refusal(image(shared=True)) is None
    why = refusal(image(shared=False))
    assert why is not None and "user-mode userfaultfd" in why
    feats = engine.restore.features()
    assert feats["lazy_pages"] == (True, "")
    assert feats["lazy_pages_uns"][0] is False
    assert "user-mode" in feats["lazy_pages_uns"][1]
