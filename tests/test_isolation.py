"""Concurrent runs do not fail each other: two runner.py jobs side by side with a third
process mounting and unmounting in a loop in the mount namespace they start in.

Without a mount namespace per run the leak check read the whole mount table and failed a
run with "leak: mount ... left behind/disappeared" whenever the neighbour's tmpfs came or
went between its two readings.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zdtm import ROOT_DIR

# mounts and unmounts a tmpfs for at most LIMIT seconds, counting its rounds in a file
NEIGHBOUR = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
where, count, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
end, n = time.monotonic() + limit, 0
while time.monotonic() < end:
    if libc.mount(b"zdtm-neighbour", where.encode(), b"tmpfs", 0, None) != 0:
        sys.exit(f"mount: {os.strerror(ctypes.get_errno())}")
    time.sleep(0.002)
    libc.umount2(where.encode(), 0)
    n += 1
    with open(count + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(count + ".tmp", count)
    time.sleep(0.002)
"""
RUNS = ["-t", "static/mem_anon", "-t", "static/zombie", "-f", "h,ns", "--iters", "2",
        "--keep-going"]
LIMIT = 240.0


def test_two_runs_beside_a_mount_loop(tmp_path: Path) -> None:
    where = Path(tempfile.mkdtemp(prefix="zdtm-neighbour-"))
    count = tmp_path / "rounds"
    loop = subprocess.Popen([sys.executable, "-c", NEIGHBOUR, str(where), str(count),
                             str(LIMIT)])
    try:
        time.sleep(0.5)
        assert loop.poll() is None, "the neighbour could not mount"
        runners = [subprocess.Popen([sys.executable, str(ROOT_DIR / "runner.py"), "run", *RUNS],
                                    cwd=ROOT_DIR, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
                   for _ in range(2)]
        outputs = [r.communicate(timeout=LIMIT)[0] for r in runners]
        rounds = int(count.read_text())
    finally:
        loop.kill()
        loop.wait()
        subprocess.run(["umount", str(where)], stderr=subprocess.DEVNULL, check=False)
        where.rmdir()
    assert loop.returncode is not None
    assert rounds > 10, f"the neighbour mounted only {rounds} times"
    for r, out in zip(runners, outputs):
        assert r.returncode == 0, out
        assert "4 passed, 0 failed" in out, out
        assert "leak: mount" not in out
