"""Fds the restore could not build are refused by the dump, while the task still runs:
a refusal at restore time would come after the dump had killed the tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_dump_basic import run_engine

# Each holder opens one fd of a kind the engine does not restore, says "ready", waits.
HOLDERS = {
    "a socket": "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
    "an pidfd fd": "s = os.pidfd_open(os.getpid())",
    "an inotify fd": ("import ctypes; s = ctypes.CDLL(None, use_errno=True)"
                      ".inotify_init1(0); assert s >= 0"),
}


@pytest.mark.parametrize("what", sorted(HOLDERS))
def test_unsupported_fd_is_refused_at_dump(what: str, tmp_path: Path) -> None:
    code = f"import os, sys, time\n{HOLDERS[what]}\nprint('ready', flush=True)\ntime.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-S", "-c", code], stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        fds = sorted(os.listdir(f"/proc/{holder.pid}/fd"))
        images = tmp_path / "img"
        res = run_engine("dump", "-t", str(holder.pid), "-D", str(images))
        assert res.returncode == 1, res.stderr
        line = res.stderr.strip()
        assert line.startswith(f"engine: error: files: task {holder.pid} fd "), line
        assert f"cannot dump {what} (" in line and "\n" not in line, line
        assert not images.exists()
        status = Path(f"/proc/{holder.pid}/status").read_text()
        assert "TracerPid:\t0\n" in status and "State:\tS" in status
        assert sorted(os.listdir(f"/proc/{holder.pid}/fd")) == fds
    finally:
        holder.kill()
        holder.wait(timeout=10)
