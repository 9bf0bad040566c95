"""Helpers of the end-to-end engine tests (test_cr_*.py, test_restore_*.py).

They drive the engine only through its CLI (`python -m engine ...`), like the harness's
bundled driver, and run zdtm test programs by the zdtm protocol: start in a private work
dir, wait for the pidfile, SIGTERM at the end, read PASS/FAIL from the outfile. The test
process is a child subreaper so that daemonised test programs and restored tasks are its
children and can be reaped by pid; everything started is killed by pid on the way out.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.kernel import sys as ksys
from engine.proc.stat import read_stat
from engine.proc.status import read_status
from flavors import get_flavor
from flavors.base import Flavor
from zdtm import hostlocks
from zdtm.build import ensure_built
from zdtm.desc import load_desc

ROOT = Path(__file__).resolve().parents[2]
ZDTM = ROOT / "zdtm"
ENGINE_TIMEOUT = 120.0


def become_subreaper() -> None:
    """Orphans (daemonised tests, restored roots) are re-parented to this process."""
    ksys.set_child_subreaper(True)


def build(name: str) -> Path:
    """Build zdtm/static/NAME (make under the zdtm Makefile) and return the binary."""
    subprocess.run(["make", "-s", "-C", str(ZDTM), f"static/{name}"], check=True,
                   timeout=300, capture_output=True)
    return ZDTM / "static" / name


def build_c(source: Path, factory: pytest.TempPathFactory) -> Path:
    """A one-file C program of tests/engine/data (warnings are errors), built into a temp
    dir of its own; returns the binary."""
    out = factory.mktemp(source.stem) / source.stem
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(out), str(source)],
                   check=True, timeout=60)
    return out


def flavor_work(top: Path, name: str) -> tuple[Flavor, Path]:
    """The flavour `name` and a work dir for it, top/work, prepared (its init built; top
    opened to others: uns runs the test as uid 100000)."""
    ensure_built([])  # flavors/nsinit
    os.chmod(top, 0o755)
    work = top / "work"
    work.mkdir(mode=0o755)
    flavor = get_flavor(name)
    flavor.prepare(work)
    return flavor, work


def engine(*args: str, env: dict[str, str] | None = None,
           timeout: float = ENGINE_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run `python -m engine ARGS` and return the completed process (never raises on rc)."""
    full_env = dict(os.environ)
    full_env.pop("ENGINE_FAULT", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def wait_gone(pid: int, timeout: float = 10.0) -> int | None:
    """Reap our child `pid` (returns its wait status), or None if it is not our child."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done == pid:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} did not exit within {timeout}s")
        time.sleep(0.005)


def kill_reap(pid: int) -> None:
    """SIGKILL a process we started (by pid) and reap it."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_gone(pid)


def state(pid: int) -> str:
    """One-letter /proc state of pid."""
    return read_stat(pid).state


def released(pid: int, name: str) -> bool:
    """True once restored task `pid` runs program `name` and is no longer traced (before,
    the pid may still be the engine's Python child or a seized task being rebuilt)."""
    try:
        status = read_status(pid)
        exe = os.readlink(f"/proc/{pid}/exe")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return os.path.basename(exe) == name and status.tracer_pid == 0 \
        and status.state[0] in "RS"


def tree_of(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/PID/task/*/children)."""
    out = [pid]
    for p in out:
        for tid in os.listdir(f"/proc/{p}/task"):
            with open(f"/proc/{p}/task/{tid}/children", encoding="ascii") as f:
                out.extend(int(x) for x in f.read().split())
    return out


@dataclass
class ZdtmTest:
    """One running zdtm test program in its own work dir."""

    name: str
    binary: Path
    workdir: Path
    args: list[str]
    pid: int = 0
    #: the machine's pty lock, held from start to cleanup by a test flagged ``pty``
    #: (another run's pty could take its number between dump and restore)
    lock: hostlocks.Held | None = None

    @classmethod
    def start(cls, name: str, workdir: Path, extra: list[str] | None = None) -> ZdtmTest:
        """Build and start static/NAME by the zdtm protocol; returns once it is ready."""
        binary = build(name)
        desc = (ZDTM / "static" / f"{name}.desc")
        text = desc.read_text() if desc.exists() else ""
        flags = load_desc(desc).get("flags", frozenset())
        lock = hostlocks.hold(hostlocks.needed(flags, "h"), wait=600)
        args = [f"--pidfile={name}.pid", f"--outfile={name}.out"]
        if "'file': true" in text:
            args.append(f"--filename={name}.test")
        if "'dir': true" in text:
            args.append(f"--dirname={name}.test")
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(binary, workdir / name)
        t = cls(name, binary, workdir, args + (extra or []), lock=lock)
        try:
            subprocess.run([f"./{name}", *t.args], cwd=workdir, check=True, timeout=60,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            t.pid = int((workdir / f"{name}.pid").read_text())
        except BaseException:
            lock.close()
            raise
        return t

    def stop(self, timeout: float = 30.0) -> str:
        """SIGTERM, wait for the exit, return the outfile's last line."""
        os.kill(self.pid, signal.SIGTERM)
        status = wait_gone(self.pid, timeout)
        out = (self.workdir / f"{self.name}.out").read_text(errors="replace")
        last = out.strip().splitlines()[-1] if out.strip() else ""
        if status is not None and not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            last = f"{last} (wait status {status:#x})"
        return last

    def cleanup(self) -> None:
        """Kill the test if it is still there (after a failed assertion); let its host
        resources go."""
        try:
            if self.pid and state(self.pid) != "Z":
                kill_reap(self.pid)
            elif self.pid:
                wait_gone(self.pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
        finally:
            if self.lock is not None:
                self.lock.close()


def dump_restore(t: ZdtmTest, images: Path, leave_stopped: bool = False,
                 leave_running: bool = False) -> subprocess.CompletedProcess[str]:
    """Dump t (killing it unless leave_running), reap it, restore detached.

    Returns the restore's CompletedProcess; on success t.pid is the restored root."""
    tasks = tree_of(t.pid)
    d = engine("dump", "-t", str(t.pid), "-D", str(images),
               *(["--leave-running"] if leave_running else []))
    assert d.returncode == 0, f"dump failed: {d.stderr}"
    if leave_running:
        return d
    for pid in tasks:  # the killed tree's orphans come to us, the subreaper
        wait_gone(pid)
    pidfile = images.parent / f"{images.name}.restored.pid"
    r = engine("restore", "-D", str(images), "-d", "--pidfile", str(pidfile),
               *(["--leave-stopped"] if leave_stopped else []))
    if r.returncode == 0:
        assert int(pidfile.read_text()) == t.pid
    return r
