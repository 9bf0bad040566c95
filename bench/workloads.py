"""The benchmark workloads (bench/memload.c): build, start, dirty, stop and verify."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.procs import DeadlineExceeded, Procs
from zdtm.plumbing import descendants

SOURCE = Path(__file__).resolve().parent / "memload.c"
BUILD_TIMEOUT_S = 120.0
POLL_S = 0.01
TREE_TASK_BYTES = 16 * 4096  # TREE_TASK_PAGES of memload.c


def build_memload(out_dir: Path) -> Path:
    """Compile memload.c into out_dir with gcc; returns the binary."""
    binary = out_dir / "memload"
    cmd = ["gcc", "-O2", "-Wall", "-o", str(binary), str(SOURCE)]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True,
                         timeout=BUILD_TIMEOUT_S)
    if res.returncode != 0:
        raise RuntimeError(f"building memload failed: {res.stderr.strip()}")
    return binary


@dataclass
class Workload:
    """One kind of workload and its size."""

    name: str  # anon | maps | shm | fds | writer | small | big | tree
    args: list[str]  # size options for memload
    payload_bytes: int  # bytes of memory the workload wrote (what a dump must carry)
    describe: str
    mode: str = ""  # memload's mode when it is not the name (small and big are anon)

    @property
    def program_mode(self) -> str:
        """The first argument of memload."""
        return self.mode or self.name

    @classmethod
    def anon(cls, mib: int) -> Workload:
        """Private anonymous memory, every page written."""
        return cls("anon", ["--mib", str(mib)], mib << 20,
                   f"{mib} MiB private anonymous, written")

    @classmethod
    def small(cls, mib: int) -> Workload:
        """A small process: its fixed costs, not its pages, are what a dump pays for."""
        return cls("small", ["--mib", str(mib)], mib << 20,
                   f"{mib} MiB process", mode="anon")

    @classmethod
    def big(cls, mib: int) -> Workload:
        """As anon, at the size where the engines' page paths diverge (4 GiB)."""
        return cls("big", ["--mib", str(mib)], mib << 20,
                   f"{mib} MiB private anonymous, written", mode="anon")

    @classmethod
    def tree(cls, procs: int) -> Workload:
        """A binary tree of procs tasks, 64 KiB private anonymous each (memload.c)."""
        return cls("tree", ["--procs", str(procs)], procs * TREE_TASK_BYTES,
                   f"tree of {procs} processes")

    @classmethod
    def maps(cls, vmas: int) -> Workload:
        """maps06 scale: one-page mappings of one file, 2/3 private written."""
        private = vmas - vmas // 3
        return cls("maps", ["--vmas", str(vmas)], private * 4096,
                   f"{vmas} VMAs of one file, {private * 4096 >> 20} MiB COW'ed")

    @classmethod
    def fds(cls, count: int) -> Workload:
        """Unix socket pairs with data waiting, all watched by one epoll."""
        return cls("fds", ["--fds", str(count)], count // 2 * 8,
                   f"{count} unix sockets in pairs, one epoll watching all")

    @classmethod
    def writer(cls, mib: int, rate: int) -> Workload:
        """Private anonymous memory, written, then rewritten at `rate` MiB/s for good."""
        return cls("writer", ["--mib", str(mib), "--rate", str(rate)], mib << 20,
                   f"{mib} MiB private anonymous, rewritten at {rate} MiB/s")

    @classmethod
    def shm(cls, mib: int) -> Workload:
        """Anonymous shared memory in two tasks."""
        return cls("shm", ["--mib", str(mib)], mib << 20,
                   f"{mib} MiB anonymous shared, 2 tasks")


@dataclass
class Running:
    """A started workload instance: its pid and files."""

    pid: int
    tree: list[int]  # pid and its descendants once ready (memload never forks later)
    workdir: Path
    outfile: Path
    ackfile: Path


def start(procs: Procs, binary: Path, wl: Workload, workdir: Path,
          timeout: float) -> Running:
    """Start wl in workdir and wait until it is ready (starter exited 0, pidfile)."""
    workdir.mkdir(mode=0o700)
    pidfile, outfile = workdir / "memload.pid", workdir / "memload.out"
    ackfile = workdir / "memload.ack"
    argv = [str(binary), wl.program_mode, "--pidfile", str(pidfile), "--outfile", str(outfile),
            "--filename", str(workdir / "maps.file"), "--ackfile", str(ackfile), *wl.args]
    res = procs.run(argv, timeout)
    pid = int(pidfile.read_text()) if pidfile.exists() else 0
    if pid:
        procs.track(pid)
    if not res.ok or not pid:
        raise RuntimeError(f"workload {wl.name} did not start: {res.error_line()}")
    return Running(pid, [pid, *descendants(pid)], workdir, outfile, ackfile)


def dirty(run: Running, generation: int, timeout: float) -> None:
    """Have an anon workload rewrite its first eighth; wait for its acknowledgement."""
    os.kill(run.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if int(run.ackfile.read_text()) >= generation:
                return
        except (OSError, ValueError):
            pass
        time.sleep(POLL_S)
    raise DeadlineExceeded(f"workload {run.pid} did not rewrite its memory "
                           f"within {timeout:.0f} s")


def stop_and_verify(procs: Procs, pid: int, run: Running, timeout: float) -> tuple[bool, str]:
    """SIGTERM the (restored) workload; (passed, detail) from its exit and verdict."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False, f"pid {pid} is gone before SIGTERM"
    try:
        code = procs.reap(pid, timeout)
    except DeadlineExceeded as exc:
        procs.kill_tree(pid)
        return False, str(exc)
    lines = run.outfile.read_text().splitlines() if run.outfile.exists() else []
    last = lines[-1] if lines else "(no verdict written)"
    if code is None:  # not our child: only the verdict line tells
        return last == "PASS", last
    if code != 0:
        return False, f"exit {code}: {last}"
    return last == "PASS", last
