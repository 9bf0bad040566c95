"""zdtm.plumbing: a task the test itself stopped stays stopped when the harness thaws."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from zdtm import plumbing


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _wait_state(pid: int, want: str) -> None:
    for _ in range(500):
        if _state(pid) == want:
            return
        time.sleep(0.01)
    raise AssertionError(f"{pid} not in state {want}: {_state(pid)}")


def test_thaw_keeps_what_the_test_stopped() -> None:
    """Two sleepers under a shell: one stopped before the freeze stays 'T' after thaw, the
    other runs again; without `keep` both would run."""
    root = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"],
                            start_new_session=True)
    try:
        for _ in range(500):
            kids = plumbing.children(root.pid)
            if len(kids) == 2:
                break
            time.sleep(0.01)
        stopped, running = sorted(kids)
        os.kill(stopped, signal.SIGSTOP)
        _wait_state(stopped, "T")
        keep = plumbing.stopped_ids(root.pid)
        assert keep == {stopped}
        plumbing.freeze(root.pid, 10)
        plumbing.thaw(plumbing.tree(root.pid), keep)
        _wait_state(running, "S")
        assert _state(stopped) == "T"
        plumbing.thaw([stopped])
        _wait_state(stopped, "S")
    finally:
        plumbing.kill_tree(plumbing.tree(root.pid), 10)
        root.wait(timeout=10)
