"""The harness's own cost per C/R iteration.

overhead = wall time of `runner.py run -t static/NAME -f h --iters 1`
           - (dump + restore wall time of the engine on the same test program, run
              directly by the benchmark with the zdtm protocol).
per extra iteration = (wall time with `--iters EXTRA_ITERS + 1` - with `--iters 1`)
           / EXTRA_ITERS: what one more C/R iteration costs, engine included.
The runner's `--nocr` time (start, checks, stop; no engine) is printed beside it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from bench.cmdlines import REPO, Engine
from bench.measure import Context, StepFailed, image_bytes, restored_pid, run_step
from bench.procs import DeadlineExceeded

RUNNER = REPO / "runner.py"
STATIC = REPO / "zdtm" / "static"
# Simple single-process tests, preferred in this order when --overhead-test is auto.
PREFERRED = ["mem_anon", "mem_readonly", "mem_protnone"]
BUILD_TIMEOUT_S = 300.0
EXTRA_ITERS = 4


def pick_test(requested: str) -> str | None:
    """The static test to time: the requested one, or the first simple one present."""
    if requested != "auto":
        return requested
    for name in PREFERRED:
        if (STATIC / f"{name}.c").exists():
            return name
    return None


def runner_argv(test: str, nocr: bool, iters: int = 1) -> list[str]:
    """One test, flavour h, `iters` iterations."""
    argv = [sys.executable, str(RUNNER), "run", "-t", f"static/{test}", "-f", "h",
            "--iters", str(iters)]
    return argv + (["--nocr"] if nocr else [])


def ensure_binary(test: str) -> Path:
    """Build zdtm/static/NAME through the harness Makefile when it is missing."""
    binary = STATIC / test
    if not binary.exists():
        res = subprocess.run(["make", "-C", str(REPO / "zdtm"), f"static/{test}"],
                             check=False, capture_output=True, text=True,
                             timeout=BUILD_TIMEOUT_S)
        if res.returncode != 0 or not binary.exists():
            raise StepFailed(f"build static/{test}: {res.stderr.strip()[-300:]}")
    return binary


def engine_alone(ctx: Context, engine: Engine, test: str) -> float:
    """Dump + restore seconds of the engine on the test, verified by its PASS."""
    binary = ensure_binary(test)
    d = ctx.scratch(f"ovh-{test}-")
    try:
        pidfile, outfile = d / f"{test}.pid", d / f"{test}.out"
        start = ctx.procs.run([str(binary), f"--pidfile={pidfile}",
                               f"--outfile={outfile}"], ctx.timeout, cwd=d)
        if not start.ok or not pidfile.exists():
            raise StepFailed(f"start static/{test}: {start.error_line()}")
        pid = int(pidfile.read_text().strip())
        ctx.procs.track(pid)
        images = d / "images"
        images.mkdir(mode=0o700)
        dump = run_step(ctx, engine, "dump", engine.dump(pid, images))
        if image_bytes(images) == 0:
            raise StepFailed("dump: exit 0 but no image files")
        ctx.procs.reap(pid, ctx.timeout)
        rpidfile = d / "restored.pid"
        rst = run_step(ctx, engine, "restore", engine.restore(images, rpidfile))
        rpid = restored_pid(rpidfile)
        ctx.procs.track(rpid)
        os.kill(rpid, signal.SIGTERM)
        ctx.procs.reap(rpid, ctx.timeout)
        verdict = outfile.read_text().splitlines()[-1:] if outfile.exists() else []
        if not verdict or "PASS" not in verdict[0]:
            raise StepFailed(f"static/{test} after restore: {verdict or 'no verdict'}")
        return dump.wall_s + rst.wall_s
    except DeadlineExceeded as exc:
        raise StepFailed(str(exc)) from exc
    finally:
        ctx.procs.cleanup()
        shutil.rmtree(d, ignore_errors=True)


def ran_one(output: str) -> bool:
    """The runner's closing `N passed, N failed, N skipped` line says 1 passed, 0 failed."""
    m = re.search(r"^(\d+) passed, (\d+) failed, (\d+) skipped", output, re.MULTILINE)
    return m is not None and int(m.group(1)) == 1 and int(m.group(2)) == 0


def overhead(ctx: Context, engine: Engine, test: str) -> dict:
    """One repetition: runner with C/R, runner --nocr, the engine alone."""
    if not RUNNER.exists():
        raise StepFailed(f"{RUNNER} does not exist yet")
    sample: dict = {}
    for key, nocr, iters in (("runner_s", False, 1), ("nocr_s", True, 1),
                             ("runner_more_s", False, 1 + EXTRA_ITERS)):
        res = ctx.procs.run(runner_argv(test, nocr, iters), ctx.timeout, cwd=REPO)
        what = f"runner.py{' --nocr' if nocr else ''}"
        if not res.ok:
            raise StepFailed(f"{what}: {res.error_line()}")
        if not ran_one(res.output):
            # A skipped test costs no C/R: its time would say nothing about overhead.
            lines = res.output.strip().splitlines() or ["(no output)"]
            why = [ln for ln in lines if ln.startswith(("SKIP", "FAIL", "ERROR"))] or lines
            raise StepFailed(f"{what} did not pass the test: {why[-1]}")
        sample[key] = res.wall_s
    sample["engine_s"] = engine_alone(ctx, engine, test)
    sample["overhead_s"] = sample["runner_s"] - sample["engine_s"]
    sample["per_iter_s"] = (sample["runner_more_s"] - sample["runner_s"]) / EXTRA_ITERS
    return sample
