"""Failed dumps: a clear error naming the step, and the task left running unharmed
(not stopped, not traced, same memory, same fds, same signal state: its own final check
passes), with no partial image left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.faults import DUMP_STEPS
from tests.engine.dump_support import REPO, SmallTree, Victim, run_engine


def assert_unharmed(v: Victim, fds: dict[int, tuple[str, str, str]], mem: bytes) -> None:
    """The victim runs as before the failed dump, and its own check passes."""
    assert v.is_running()
    status = v.proc_status()
    assert status["TracerPid"] == "0"
    assert status["State"][0] in "RS"
    assert v.fd_table() == fds
    assert v.memory_digest() == mem
    assert v.finish() == (0, "")


@pytest.mark.parametrize("step", DUMP_STEPS)
def test_fault_at_each_step_leaves_task_unharmed(victim: Victim, tmp_path: Path,
                                                 step: str) -> None:
    fds, mem = victim.fd_table(), victim.memory_digest()
    images = tmp_path / "img"
    res = run_engine("dump", "-t", str(victim.pid), "-D", str(images),
                     env={"ENGINE_FAULT": step})
    assert res.returncode == 1
    assert res.stderr.startswith(f"engine: error: {step}: fault injected"), res.stderr
    assert not images.exists(), "a failed dump must not leave a partial image"
    assert_unharmed(victim, fds, mem)


def test_missing_pid(tmp_path: Path) -> None:
    # A pid above pid_max cannot exist.
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    res = run_engine("dump", "-t", str(pid_max + 1), "-D", str(tmp_path / "img"))
    assert res.returncode == 1
    assert res.stderr.strip() == f"engine: error: seize: no such process {pid_max + 1}"
    assert not (tmp_path / "img").exists()


PF_KTHREAD = 0x00200000  # task flags, /proc/PID/stat field 9


def _a_kernel_thread() -> int | None:
    """The pid of some kernel thread visible here (none inside a new pid namespace)."""
    for name in sorted(os.listdir("/proc"), key=lambda n: (len(n), n)):
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[6]) & PF_KTHREAD:
            return int(name)
    return None


def test_kernel_thread_is_refused(tmp_path: Path) -> None:
    kthread = _a_kernel_thread()
    if kthread is None:
        pytest.skip("no kernel thread is visible in this pid namespace")
    res = run_engine("dump", "-t", str(kthread), "-D", str(tmp_path / "img"))
    assert res.returncode == 1
    assert "engine: error: seize:" in res.stderr and "kernel thread" in res.stderr


def test_task_traced_by_someone_else(victim: Victim, tmp_path: Path) -> None:
    fds, mem = victim.fd_table(), victim.memory_digest()
    tracer_code = ("import sys, time\n"
                   "from engine.kernel import ptrace\n"
                   "ptrace.seize(int(sys.argv[1]))\n"
                   "print('seized', flush=True)\n"
                   "time.sleep(60)\n")
    tracer = subprocess.Popen([sys.executable, "-c", tracer_code, str(victim.pid)], cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=str(REPO)),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert tracer.stdout is not None and tracer.stdout.readline().strip() == "seized"
        res = run_engine("dump", "-t", str(victim.pid), "-D", str(tmp_path / "img"))
        assert res.returncode == 1
        assert "engine: error: seize: cannot seize task" in res.stderr, res.stderr
        assert victim.proc_status()["TracerPid"] == str(tracer.pid)  # untouched
    finally:
        os.kill(tracer.pid, signal.SIGKILL)
        tracer.wait(timeout=10)
    # The tracer's death detaches it; give the kernel a moment.
    deadline = time.monotonic() + 5
    while victim.proc_status()["TracerPid"] != "0":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert_unharmed(victim, fds, mem)


def test_unwritable_images_dir(victim: Victim, tmp_path: Path) -> None:
    fds, mem = victim.fd_table(), victim.memory_digest()
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    res = run_engine("dump", "-t", str(victim.pid), "-D", str(blocker / "img"))
    assert res.returncode == 1
    assert res.stderr.startswith(f"engine: error: write: {blocker / 'img'}: cannot create")
    assert_unharmed(victim, fds, mem)


def test_non_empty_images_dir_is_refused(victim: Victim, tmp_path: Path) -> None:
    images = tmp_path / "img"
    images.mkdir()
    (images / "old").write_text("x")
    res = run_engine("dump", "-t", str(victim.pid), "-D", str(images))
    assert res.returncode == 1 and "not empty" in res.stderr
    assert (images / "old").read_text() == "x"
    assert victim.is_running() and victim.finish() == (0, "")


@pytest.mark.parametrize("step", ["sigactions", "memory", "write"])
def test_fault_leaves_a_whole_tree_running(small_tree: SmallTree,
                                           tmp_path: Path, step: str) -> None:
    """A tree (a process with a second thread, a child, a zombie): after a failed dump
    every task and thread runs on, untraced and not stopped; the zombie is still there."""
    proc, zombie, child = small_tree
    res = run_engine("dump", "-t", str(proc.pid), "-D", str(tmp_path / "img"),
                     env={"ENGINE_FAULT": step})
    assert res.returncode == 1 and f"error: {step}: fault injected" in res.stderr
    for pid in (proc.pid, child):
        for tid in os.listdir(f"/proc/{pid}/task"):
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            assert "TracerPid:\t0\n" in status, (pid, tid)
            assert "State:\tS" in status, (pid, tid)
    assert len(os.listdir(f"/proc/{proc.pid}/task")) == 2
    assert "State:\tZ" in Path(f"/proc/{zombie}/status").read_text()
    assert not (tmp_path / "img").exists()


def test_engine_terminated_mid_dump(victim: Victim, tmp_path: Path) -> None:
    """SIGTERM to the engine while it has the task seized: it stops with an error and the
    task runs on unharmed (registers, memory, fds, signal state)."""
    fds, mem = victim.fd_table(), victim.memory_digest()
    eng = subprocess.Popen([sys.executable, "-m", "engine", "dump", "-t", str(victim.pid),
                            "-D", str(tmp_path / "img"), "--leave-running"], cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=str(REPO)),
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while victim.proc_status()["TracerPid"] != str(eng.pid) and eng.poll() is None:
        assert time.monotonic() < deadline, "the engine never seized the task"
        time.sleep(0.0005)
    eng.send_signal(signal.SIGTERM)
    _out, err = eng.communicate(timeout=60)
    if eng.returncode != 0:  # 0: the dump finished between our look and the signal
        assert eng.returncode == 1, err
        assert "engine: error: interrupted: terminated by SIGTERM" in err, err
        assert not (tmp_path / "img").exists()
    assert_unharmed(victim, fds, mem)


BIG_CHILD = """
import hashlib, os, signal, sys, time
buf = bytearray(os.urandom(1 << 20)) * 384  # one long anonymous run: written by the task
digest = hashlib.sha256(buf).digest()
def check(signo, frame):
    print("OK" if hashlib.sha256(buf).digest() == digest else "BAD", flush=True)
signal.signal(signal.SIGUSR1, check)
print("ready", flush=True)
while True:
    time.sleep(0.01)
"""


def test_engine_terminated_while_the_task_writes_its_pages(tmp_path: Path) -> None:
    """SIGTERM to the engine while the frozen task is inside its injected pwrite of its
    own pages (selfwrite): the engine first gets the task back into a ptrace-stop, so it
    is released with its own registers, memory and fds."""
    child = subprocess.Popen([sys.executable, "-c", BIG_CHILD], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        fds = sorted(os.listdir(f"/proc/{child.pid}/fd"))
        hit = False
        for _attempt in range(5):
            eng = subprocess.Popen([sys.executable, "-m", "engine", "dump", "-t",
                                    str(child.pid), "-D", str(tmp_path / f"img{_attempt}"),
                                    "--leave-running"], cwd=REPO,
                                   # (the task writes its pages only into a file written
                                   # with O_DIRECT; 384 MiB may fit in the page cache)
                                   env=dict(os.environ, PYTHONPATH=str(REPO),
                                            ENGINE_PAGES_IO="direct"),
                                   stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 30
            while eng.poll() is None and time.monotonic() < deadline:
                fields = Path(f"/proc/{child.pid}/syscall").read_text().split()
                if fields[0] == str(18):  # pwrite64: the task writes its pages
                    eng.send_signal(signal.SIGTERM)
                    hit = True
                    break
            _out, err = eng.communicate(timeout=60)
            if hit:
                assert eng.returncode in (0, 1), err
                if eng.returncode == 1:
                    assert "engine: error: interrupted: terminated by SIGTERM" in err, err
                break
        assert hit, "never saw the task inside its pwrite"
        status = Path(f"/proc/{child.pid}/status").read_text()
        assert "TracerPid:\t0\n" in status
        assert sorted(os.listdir(f"/proc/{child.pid}/fd")) == fds
        os.kill(child.pid, signal.SIGUSR1)
        assert child.stdout.readline() == "OK\n"
        assert child.poll() is None
    finally:
        child.kill()
        child.wait(timeout=10)
