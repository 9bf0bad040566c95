"""What the image checksums cost: share of dump and restore time spent computing and
verifying them (the engine's own figure, ENGINE_VERBOSE `checksums=`), on the anon
workload.

    python bench/checksum_cost.py [--mib 512] [--reps 3]

Per repetition: start memload anon, `dump` it, `restore -d` it, verify its memory.
Prints per step the median total (wall time of the engine command) and the median time
spent on checksums, and their ratio. Run as root. Not run by CI.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import workloads
from bench.procs import Procs
from zdtm import plumbing

_CRC = re.compile(r"checksums=([0-9.]+)ms")
TIMEOUT = 300.0


def _engine(args: list[str]) -> tuple[float, float]:
    """(wall seconds, checksum seconds) of one engine command."""
    env = dict(os.environ, ENGINE_VERBOSE="1")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=TIMEOUT, check=False)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"engine {args[0]} failed: {r.stderr.strip()}")
    m = _CRC.search(r.stderr)
    if m is None:
        raise SystemExit(f"no checksums= figure in: {r.stderr.strip()}")
    return wall, float(m.group(1)) / 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    plumbing.set_subreaper()
    tmp = Path(tempfile.mkdtemp(prefix="crccost-"))
    procs = Procs(tmp, sweep_children=True)
    binary = workloads.build_memload(tmp)
    wl = workloads.Workload.anon(args.mib)
    samples: dict[str, list[tuple[float, float]]] = {"dump": [], "restore": []}
    try:
        for i in range(args.reps):
            run = workloads.start(procs, binary, wl, tmp / f"w{i}", TIMEOUT)
            images = tmp / f"img{i}"
            samples["dump"].append(_engine(["dump", "-t", str(run.pid), "-D", str(images)]))
            procs.reap(run.pid, TIMEOUT)
            pidfile = tmp / f"pid{i}"
            samples["restore"].append(_engine(["restore", "-D", str(images), "-d",
                                               "--pidfile", str(pidfile)]))
            ok, detail = workloads.stop_and_verify(procs, int(pidfile.read_text()), run,
                                                   TIMEOUT)
            if not ok:
                raise SystemExit(f"restored workload failed its check: {detail}")
            subprocess.run(["rm", "-rf", str(images)], check=False)
    finally:
        procs.cleanup()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    print(f"anon {args.mib} MiB, {args.reps} reps, load {os.getloadavg()[0]:.1f}")
    print(f"{'step':8} {'total s':>8} {'crc s':>7} {'share':>6}")
    for step, rows in samples.items():
        wall = statistics.median(w for w, _ in rows)
        crc = statistics.median(c for _, c in rows)
        print(f"{step:8} {wall:8.2f} {crc:7.3f} {100 * crc / wall:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
