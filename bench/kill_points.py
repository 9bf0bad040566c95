"""Kill the engine (or its victim) at random moments and check every promise held.

    python bench/kill_points.py [--trials N] [--seed S] [--test NAME]
                                [--cases term-dump,kill-dump,term-restore,kill-restore,victim-dump]

Cases (each trial: a fresh zdtm test program, one engine run, one signal at a random
moment within 1.2x the step's calibrated duration):

- `term-dump` / `kill-dump`: SIGTERM / SIGKILL to `dump --leave-running`. Held: the
  engine printed nothing but one `engine: error: interrupted` line (TERM; exit 0 when the
  dump had finished), the victim's /proc/PID/maps is as before (within SETTLE_S: a
  victim killed in the middle of writing its own pages finishes that write, then cleans
  up), and it PASSes its own checks at SIGTERM. For KILL that is the survival rate the issue asks for.
- `term-restore` / `kill-restore`: SIGTERM / SIGKILL to `restore -d` of one dump.
  Held: either the restore succeeded (exit 0) and the restored program PASSes, or it
  failed (TERM: one error line) and no task of the tree exists once the engine is gone.
- `victim-dump`: SIGKILL to the victim's child during `dump` (test fork_child): the dump
  fails with one clean error (no `internal`), or succeeds; the root survives if the dump
  failed.

Prints one table row per case: trials, promise kept, broken, and the broken trials'
seeds/delays so each can be replayed. Run as root. Not run by CI.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.engine import cr_support as cr  # the zdtm start/stop protocol

CASES = ("term-dump", "kill-dump", "term-restore", "kill-restore", "victim-dump")
SETTLE_S = 5.0  # for a victim to finish the injected write it was left in


def _engine(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps", encoding="ascii", errors="replace") as f:
        return f.read()


def _settles(pid: int, maps: str, timeout: float = SETTLE_S) -> bool:
    """Whether pid's maps are `maps` again within `timeout`: a victim the engine left in
    an injected write (its own pages, dump/selfwrite.py) finishes it, then closes the
    file and unmaps the injected code itself (blob.S crc_return)."""
    deadline = time.monotonic() + timeout
    while _maps(pid) != maps:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _one_error_line(err: str, word: str) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("engine: error: ") and word in lines[0]


#: a termination signal that hit the interpreter before the engine's first line ran
EARLY = "early"
EARLY_COUNT = [0]  # of the current case
RELEASED_COUNT = [0]  # of the current case: killed after every task was released


def _catches_term(pid: int) -> bool:
    """Whether pid has a SIGTERM handler now (SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except OSError:
        pass
    return False


def _timed(proc: subprocess.Popen[str], delay: float, sig: int) -> tuple[int, str]:
    """Signal proc after delay; the error text is EARLY when a SIGTERM found the
    interpreter still starting (before the engine could install its handler)."""
    time.sleep(delay)
    early = sig != signal.SIGKILL and not _catches_term(proc.pid)
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass
    _, err = proc.communicate(timeout=120)
    if early and proc.returncode == -sig:
        EARLY_COUNT[0] += 1
        return proc.returncode, EARLY
    return proc.returncode, err


def _dump_trial(test: str, work: Path, delay: float, sig: int) -> str | None:
    """None when every promise held, else what broke."""
    t = cr.ZdtmTest.start(test, work / "w")
    try:
        before = _maps(t.pid)
        rc, err = _timed(_engine("dump", "-t", str(t.pid), "-D", str(work / "img"),
                                 "--leave-running"), delay, sig)
        if err == EARLY:
            pass  # killed before it ran a line: checked below that the victim is intact
        elif sig == signal.SIGTERM and rc != 0 and not _one_error_line(err, "interrupted"):
            return f"engine said {err.strip()!r} (rc {rc})"
        if cr.state(t.pid) in "ZX":
            return f"victim died (engine rc {rc})"
        if not _settles(t.pid, before):
            return f"victim's maps changed (engine rc {rc})"
        last = t.stop()
        return None if "PASS" in last else f"victim: {last} (engine rc {rc})"
    except (FileNotFoundError, ProcessLookupError):
        return "victim gone"
    finally:
        t.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def _restore_trial(t: cr.ZdtmTest, images: Path, delay: float, sig: int) -> str | None:
    rc, err = _timed(_engine("restore", "-D", str(images), "-d"), delay, sig)
    if rc == 0:
        last = t.stop()
        return None if "PASS" in last else f"restored program: {last}"
    if sig == signal.SIGTERM and err != EARLY and not _one_error_line(err, ""):
        return f"engine said {err.strip()!r} (rc {rc})"
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{t.pid}") and time.monotonic() < deadline:
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.01)
    if os.path.exists(f"/proc/{t.pid}"):
        if cr.released(t.pid, t.name) and "PASS" in t.stop():
            # Killed after the tree was released: a whole restore, not reported (SIGKILL).
            RELEASED_COUNT[0] += 1
            return None
        cr.kill_reap(t.pid)
        return f"half-restored task {t.pid} left (engine rc {rc})"
    return None


def _victim_trial(work: Path, delay: float) -> str | None:
    t = cr.ZdtmTest.start("fork_child", work / "w")
    try:
        kids = cr.tree_of(t.pid)[1:]
        proc = _engine("dump", "-t", str(t.pid), "-D", str(work / "img"), "--leave-running")
        time.sleep(delay)
        for k in kids:
            os.kill(k, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0 and not _one_error_line(err, ""):
            return f"engine said {err.strip()!r}"
        if "internal" in err:
            return f"engine crashed: {err.strip().splitlines()[-1]}"
        if cr.state(t.pid) in "ZX":
            return "the root died"
        return None
    finally:
        t.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def _calibrate(run: Callable[[], float]) -> float:
    return max(run() for _ in range(2))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--test", default="mem_anon")
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    cr.become_subreaper()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="killpoints-"))
    rows = []
    try:
        for case in args.cases.split(","):
            EARLY_COUNT[0] = RELEASED_COUNT[0] = 0
            n, broken, step = _run_case(case, args, rng, tmp)
            rows.append((case, n, broken, EARLY_COUNT[0], step))
            print(f"{case}: {n} trials, {len(broken)} broken, {EARLY_COUNT[0]} early, "
                  f"{RELEASED_COUNT[0]} killed after release (restored, kept)", flush=True)
            for delay, why in broken:
                print(f"    delay {delay:.3f}s: {why[-300:]}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'case':14} {'trials':>6} {'kept':>6} {'broken':>6} {'early':>6}  step(s)")
    for case, n, broken, early, step in rows:
        print(f"{case:14} {n:6d} {n - len(broken):6d} {len(broken):6d} {early:6d}  {step:.2f}")
    print("early: the signal found the interpreter still starting (no handler yet, no "
          "line of the engine run): no error line, nothing touched; counted as kept")
    return 1 if any(b for _, _, b, _, _ in rows) else 0


def _run_case(case: str, args: argparse.Namespace, rng: random.Random,
              tmp: Path) -> tuple[int, list[tuple[float, str]], float]:
    sig = signal.SIGKILL if case.startswith("kill") else signal.SIGTERM
    broken: list[tuple[float, str]] = []
    if case.endswith("-dump") and case != "victim-dump":
        step = _calibrate(lambda: _dump_duration(args.test, tmp / "cal"))
        for i in range(args.trials):
            delay = rng.uniform(0, step * 1.2)
            why = _dump_trial(args.test, tmp / f"t{i}", delay, sig)
            if why:
                broken.append((delay, why))
    elif case == "victim-dump":
        step = _calibrate(lambda: _dump_duration("fork_child", tmp / "cal"))
        for i in range(args.trials):
            delay = rng.uniform(0, step * 1.2)
            why = _victim_trial(tmp / f"t{i}", delay)
            if why:
                broken.append((delay, why))
    else:
        t = cr.ZdtmTest.start(args.test, tmp / f"{case}-w")
        images = tmp / f"{case}-img"
        try:
            d = cr.engine("dump", "-t", str(t.pid), "-D", str(images))
            if d.returncode != 0:
                raise SystemExit(f"dump for the restore case failed: {d.stderr}")
            cr.wait_gone(t.pid)
            step = _calibrate(lambda: _restore_duration(t, images))
            for _ in range(args.trials):
                delay = rng.uniform(0, step * 1.2)
                why = _restore_trial(t, images, delay, sig)
                if why:
                    broken.append((delay, why))
        finally:
            t.cleanup()
    return args.trials, broken, step


def _dump_duration(test: str, work: Path) -> float:
    t = cr.ZdtmTest.start(test, work / "w")
    try:
        start = time.monotonic()
        d = cr.engine("dump", "-t", str(t.pid), "-D", str(work / "img"), "--leave-running")
        took = time.monotonic() - start
        if d.returncode != 0:
            raise SystemExit(f"calibration dump failed: {d.stderr}")
        t.stop()
        return took
    finally:
        t.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def _restore_duration(t: cr.ZdtmTest, images: Path) -> float:
    start = time.monotonic()
    r = cr.engine("restore", "-D", str(images), "-d")
    took = time.monotonic() - start
    if r.returncode != 0:
        raise SystemExit(f"calibration restore failed: {r.stderr}")
    t.stop()
    return took


if __name__ == "__main__":
    sys.exit(main())
