"""Process handling for the benchmarks: timed runs with deadlines, peak RSS, cleanup.

Every process the benchmarks start is tracked by pid and killed by pid (or by the
process group it was given of its own) on the way out. The benchmark process makes
itself a child subreaper, so daemonised workloads and restored trees are re-parented
to it: their exit status can be read with wait4 and nothing escapes to init.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from zdtm import plumbing
from zdtm.plumbing import children, descendants

KILL_REAP_DEADLINE_S = 10.0


class DeadlineExceeded(Exception):
    """A process did not finish before its deadline (it has been killed)."""


@dataclass
class Timed:
    """Result of one timed child process."""

    argv: list[str]
    returncode: int  # negative: killed by that signal
    wall_s: float
    maxrss_kib: int
    cpu_s: float  # user + system time (less disturbed by other load than wall time)
    output: str  # combined stdout+stderr, tail only

    @property
    def ok(self) -> bool:
        """True when the process exited 0."""
        return self.returncode == 0

    def error_line(self) -> str:
        """The most useful line of output for a failure message."""
        lines = [ln.strip() for ln in self.output.splitlines() if ln.strip()]
        for ln in reversed(lines):
            if "error" in ln.lower():
                return ln
        tail = lines[-1] if lines else "(no output)"
        return f"exit {self.returncode}: {tail}"


def decode_status(status: int) -> int:
    """wait status -> returncode in subprocess convention (negative signal number)."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def wait_pidfd(pid: int, timeout: float) -> bool:
    """Block until pid exits (also a non-child) or timeout; True when it exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0.0, timeout) * 1000))
    finally:
        os.close(fd)


class Procs:
    """Tracks every process the benchmark started or adopted, and ends them."""

    def __init__(self, log_dir: Path, sweep_children: bool = False) -> None:
        """sweep_children: every child of this process is ours (bench/run.py, a subreaper
        that starts nothing else), so cleanup may end any of them; never in a shared
        process such as a pytest worker."""
        self.log_dir = log_dir
        self.sweep_children = sweep_children
        self.tracked: set[int] = set()  # roots we must end (workloads, restored trees)
        self.groups: set[int] = set()  # process groups we created (engine runs)
        self.spared: set[int] = set()  # children that live across jobs (an engine server)
        self._seq = 0

    def spare(self, pid: int) -> None:
        """Leave our child pid (and what runs below it) to its owner: no sweep ends it."""
        self.spared.add(pid)

    def track(self, pid: int) -> None:
        """Remember pid (and, at cleanup, its descendants) as ours to end."""
        self.tracked.add(pid)

    def new_log(self) -> Path:
        """A fresh path for one process's output."""
        self._seq += 1
        return self.log_dir / f"proc{self._seq}.log"

    def spawn(self, argv: list[str], cwd: Path | None = None,
              env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        """Start argv in a process group of its own, output to a log file."""
        log = self.new_log()
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.groups.add(proc.pid)
        return proc, log

    def finish(self, proc: subprocess.Popen, log: Path, timeout: float,
               t0: float) -> Timed:
        """Wait for a spawned process with a deadline; kill its group on timeout."""
        exited = wait_pidfd(proc.pid, t0 + timeout - time.monotonic())
        t1 = time.monotonic()
        if not exited:
            self._kill_group(proc.pid)
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = decode_status(status)  # so Popen never waits on it again
        # The group is not killed after a normal exit: a restored task may still sit
        # in it when the engine does not restore pgid/sid. Leftovers are re-parented
        # to us and ended by cleanup().
        self.groups.discard(proc.pid)
        output = log.read_text(errors="replace")[-4000:]
        log.unlink(missing_ok=True)
        if not exited:
            raise DeadlineExceeded(f"{' '.join(argv_short(proc.args))}: no exit within "
                                   f"{timeout:.0f} s (killed); output: {output[-300:]!r}")
        return Timed(list(proc.args), proc.returncode, t1 - t0, ru.ru_maxrss,
                     ru.ru_utime + ru.ru_stime, output)

    def run(self, argv: list[str], timeout: float, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> Timed:
        """Run argv to completion: wall time, exit status and peak RSS (wait4)."""
        t0 = time.monotonic()
        proc, log = self.spawn(argv, cwd, env)
        return self.finish(proc, log, timeout, t0)

    def _kill_group(self, pgid: int) -> None:
        # not plumbing.kill_group: that one reaps the leader, whose exit status and
        # rusage finish() must collect itself with wait4
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def reap(self, pid: int, timeout: float) -> int | None:
        """Wait for pid to exit; its returncode if it is our child, None if not."""
        if not wait_pidfd(pid, timeout):
            raise DeadlineExceeded(f"pid {pid} did not exit within {timeout:.0f} s")
        self.tracked.discard(pid)  # gone: never signal this pid number again
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return None
        return decode_status(status)

    def kill_tree(self, pid: int) -> None:
        """SIGKILL pid and all its descendants, then reap the ones that are ours."""
        victims = [pid, *descendants(pid)]
        plumbing.kill_tree([pid], KILL_REAP_DEADLINE_S)
        self.tracked.difference_update(victims)  # gone: never signal these numbers again
        if self.sweep_children:
            self.reap_orphans()

    def reap_orphans(self) -> None:
        """Collect zombies re-parented to us (we are their subreaper).

        Engine runs still being timed (our process groups) are left to finish().
        """
        for pid in children(os.getpid()):
            if pid in self.groups or pid in self.spared:
                continue
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass

    def cleanup(self) -> None:
        """End everything still tracked, every group we made, and adopted orphans."""
        for pgid in list(self.groups):
            self._kill_group(pgid)
            self.kill_tree(pgid)  # the group leader is our child: reaped here
        self.groups.clear()
        for pid in list(self.tracked):
            self.kill_tree(pid)
        if self.sweep_children:
            # Anything else re-parented to us came from a workload or engine we started.
            for pid in children(os.getpid()):
                if pid not in self.spared:
                    self.kill_tree(pid)
            self.reap_orphans()


def argv_short(argv: list[str] | tuple[str, ...] | str) -> list[str]:
    """argv without the interpreter path, for messages."""
    parts = [argv] if isinstance(argv, str) else [str(a) for a in argv]
    return [os.path.basename(parts[0])] + parts[1:]
