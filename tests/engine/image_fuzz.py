"""Image fuzzer: seeded mutants of real images, each classified by what the engine did.

A mutant is a copy of a dumped image with one change, drawn from `random.Random(f"{seed}:{i}")`
so any mutant can be rebuilt from (seed, i) alone:

- damage (the file's checksum is left as dumped): flip a bit, truncate, extend, delete;
  replace a file with a FIFO, a symlink (out of the image or to a sibling), a directory or
  a hard link; make a file or the directory writable by others;
- forgery (`reseal`: the checksums recomputed, as a hand-made hostile image would be): a
  JSON leaf replaced by a hostile value or another type, deleted, or an unknown key
  added; a list item dropped or duplicated; a byte of a binary file (pagemap, VMA table)
  changed; a file resized.

Outcomes: `clean` (refused with one `engine: error:` line before any task exists),
`harmless` (restored and the program passed its own checks), `wrong` (restored, exit 0,
then the program failed or died; or a refused restore left a task), `traceback` (a crash:
an exception other than the engine's error, or a signal), `hang` (past the deadline),
`pid-taken` (not tried: an unrelated process holds the seed's pid by now).
A mutant is first loaded in-process exactly as the restore's read phase does
(`load`, then the read-phase checks), which settles almost every one in milliseconds;
only mutants that pass are restored for real through the CLI.
A forged mutant that passes every check is a different but valid image: its restore may
legitimately run a different program state, so `wrong` restores of forgeries are counted
apart (`forged-wrong`); damage must never restore.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from engine.errors import EngineError
from engine.restore.restorer import RestoreOptions, read_image
from tests.engine import cr_support as cr
from tests.engine.image_tools import reseal

OUTCOMES = ("clean", "harmless", "wrong", "forged-wrong", "traceback", "hang", "pid-taken")
HOSTILE_INTS = (0, -1, 1, 3, 0x33, 4096, 1 << 31, (1 << 32) - 1, 1 << 47, (1 << 63) - 1,
                1 << 63, (1 << 64) - 1, 1 << 64, -(1 << 63))
HOSTILE_VALUES: tuple[Any, ...] = (None, True, "", "./", "..", "../../etc/passwd",
                                   "/etc/passwd", "x" * 5000, [], {}, 1.5, [1, 2], {"a": 1})
LOAD_DEADLINE_S = 10
RESTORE_DEADLINE_S = 150.0  # above the engine's own 60 s per wait: its deadline shows


@dataclass
class Seed:
    """A dumped zdtm test: its image, and the test (to stop a restored copy)."""

    test: cr.ZdtmTest
    images: Path


@dataclass
class Verdict:
    """What one mutant did."""

    index: int
    mutation: str
    outcome: str
    detail: str


def dump_seed(name: str, work: Path) -> Seed:
    """Start zdtm static/NAME, dump it (killed), return the seed image."""
    t = cr.ZdtmTest.start(name, work / "w")
    images = work / "img"
    d = cr.engine("dump", "-t", str(t.pid), "-D", str(images))
    if d.returncode != 0:
        t.cleanup()
        raise RuntimeError(f"seed dump of {name} failed: {d.stderr}")
    cr.wait_gone(t.pid)
    _kill_leftovers()  # the dumped tree's other tasks, now our zombies
    return Seed(t, images)


# -- mutations ----------------------------------------------------------------------------


def mutate(src: Path, dst: Path, rng: random.Random) -> str:
    """Copy image src to dst with one change; returns its description."""
    shutil.copytree(src, dst)
    files = sorted(p.name for p in dst.iterdir())
    if rng.random() < 0.45:
        return _damage(dst, rng.choice(files), rng)
    return _forge(dst, files, rng)


def _damage(d: Path, name: str, rng: random.Random) -> str:
    p = d / name
    kind = rng.choice(("flip", "flip", "flip", "truncate", "extend", "delete", "fifo",
                       "symlink-out", "symlink-in", "dir", "hardlink", "chmod", "dirmode"))
    if kind == "flip":
        raw = bytearray(p.read_bytes())
        if not raw:
            raw = bytearray(b"\0")
        at = rng.randrange(len(raw))
        raw[at] ^= 1 << rng.randrange(8)
        p.write_bytes(bytes(raw))
        return f"damage {name}: bit flipped at {at}"
    if kind in ("truncate", "extend"):
        raw = p.read_bytes()
        cut = rng.randrange(len(raw) + 1) if kind == "truncate" else len(raw)
        extra = rng.randbytes(rng.choice((1, 64, 4096))) if kind == "extend" else b""
        p.write_bytes(raw[:cut] + extra)
        return f"damage {name}: {kind} to {cut + len(extra)} bytes"
    if kind == "chmod":
        p.chmod(0o666)
        return f"damage {name}: mode 0666"
    if kind == "dirmode":
        d.chmod(0o777)
        return "damage: image dir mode 0777"
    keep = p.read_bytes()
    p.unlink()
    if kind == "fifo":
        os.mkfifo(p, 0o600)
    elif kind == "symlink-out":
        p.symlink_to("/etc/passwd")
    elif kind == "symlink-in":
        sibling = sorted(x.name for x in d.iterdir())
        p.symlink_to(rng.choice(sibling) if sibling else "x")
    elif kind == "dir":
        p.mkdir(0o700)
    elif kind == "hardlink":
        outside = d.parent / f"{d.name}.outside"
        outside.write_bytes(keep)
        outside.chmod(0o600)
        os.link(outside, p)
    return f"damage {name}: {kind}"


def _forge(d: Path, files: list[str], rng: random.Random) -> str:
    jsons = [f for f in files if f.endswith(".json")]
    name = rng.choice(jsons) if rng.random() < 0.85 else rng.choice(files)
    p = d / name
    if name.endswith(".json"):
        raw = p.read_bytes()
        data = json.loads(raw)
        what = _mutate_json(data, rng)
        p.write_text(json.dumps(data))
    else:
        raw2 = bytearray(p.read_bytes())
        if raw2 and rng.random() < 0.7:
            at = rng.randrange(min(len(raw2), 64)) if rng.random() < 0.5 else \
                rng.randrange(len(raw2))
            raw2[at] = rng.randrange(256)
            what = f"byte {at} set"
        else:
            size = rng.choice((0, 64, len(raw2) + 64, max(len(raw2) - 64, 0)))
            raw2 = (raw2 + bytearray(size))[:size]
            what = f"resized to {size}"
        p.write_bytes(bytes(raw2))
    reseal(d)
    return f"forge {name}: {what}"


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))


def _mutate_json(data: Any, rng: random.Random) -> str:
    paths = [p for p in _leaves(data) if p and p[0] != "checksums"]
    path = rng.choice(paths)
    parent = data
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    old = parent[key]
    op = rng.choice(("int", "int", "bits", "value", "delete", "unknown", "dup"))
    if op == "int":
        parent[key] = rng.choice(HOSTILE_INTS)
    elif op == "bits" and type(old) is int:
        parent[key] = old ^ (1 << rng.randrange(64))
    elif op == "value" or op == "bits":
        parent[key] = rng.choice(HOSTILE_VALUES)
    elif op == "delete":
        del parent[key]
    elif op == "unknown" and isinstance(old, dict):
        old["evil"] = 1
    elif op == "dup" and isinstance(parent, list):
        parent.insert(key, old)
    else:
        parent[key] = rng.choice(HOSTILE_INTS + HOSTILE_VALUES)
        op = "value"
    return f"{op} at {'.'.join(map(str, path))}"


# -- outcome --------------------------------------------------------------------------------


class _Deadline(Exception):
    pass


def _alarm(_signo: int, _frame: FrameType | None) -> None:
    raise _Deadline


def read_phase(images: Path) -> str | None:
    """The restore's read phase in-process: None if the image passes it, else the error
    line the CLI would print. Raises _Deadline on a hang, anything else on a crash."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(LOAD_DEADLINE_S)
    try:
        read_image(RestoreOptions(str(images))).dir.close()
        return None
    except EngineError as e:
        return f"engine: error: {e.phase}: {e.message}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def judge(seed: Seed, images: Path, forged: bool) -> tuple[str, str]:
    """(outcome, detail) of restoring the mutant `images`."""
    try:
        err = read_phase(images)
    except _Deadline:
        return "hang", f"read phase past {LOAD_DEADLINE_S}s"
    except Exception as e:  # noqa: BLE001 - a crash is an outcome here
        return "traceback", f"{type(e).__name__}: {e}"
    if err is not None:
        return "clean", err
    return _restore_for_real(seed, images, forged)


def _restore_for_real(seed: Seed, images: Path, forged: bool) -> tuple[str, str]:
    outcome, detail = _restore_once(seed, images, forged)
    left = _kill_leftovers()
    if left and outcome in ("clean", "harmless"):
        return ("forged-wrong" if forged else "wrong"), f"{detail}; left processes {left}"
    return outcome, detail


def _restore_once(seed: Seed, images: Path, forged: bool) -> tuple[str, str]:
    t = seed.test
    try:
        r = cr.engine("restore", "-D", str(images), "-d", timeout=RESTORE_DEADLINE_S)
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: the engine was killed
        return "hang", f"restore past {RESTORE_DEADLINE_S}s"
    lines = r.stderr.strip().splitlines()
    wrong = "forged-wrong" if forged else "wrong"
    if "Traceback" in r.stderr or "internal" in r.stderr or r.returncode not in (0, 1):
        where = [x.strip() for x in lines if x.strip().startswith("File ")][-2:]
        return "traceback", " | ".join([*where, *(lines or [f"rc {r.returncode}"])[-1:]])
    if r.returncode == 1:
        if _kill_leftovers():
            return wrong, f"refused but left tasks: {lines[-1]}"
        ok = len(lines) == 1 and lines[0].startswith("engine: error:")
        if ok and f"pid {t.pid} is taken" in lines[0]:
            # Another process (pid_max is small, engineers share the machine) holds the
            # seed's pid: this mutant was not tried.
            return "pid-taken", lines[0]
        return ("clean" if ok else "traceback"), lines[-1] if lines else ""
    try:
        last = t.stop(timeout=15)
    except TimeoutError:
        return wrong, "restored program did not stop at SIGTERM"
    return ("harmless", last) if "PASS" in last else (wrong, last)


def _kill_leftovers() -> list[int]:
    """Kill and reap every process left below us (we are a child subreaper: whatever a
    restore made ends up here); returns their pids. A grandchild killed with its parent
    is reaped once it has come to us, in a later round."""
    first = below = [p for p in cr.tree_of(os.getpid()) if p != os.getpid()]
    deadline = time.monotonic() + 10
    while below and time.monotonic() < deadline:
        for p in reversed(below):
            try:
                cr.kill_reap(p)
            except (OSError, TimeoutError):
                pass
        below = [p for p in cr.tree_of(os.getpid()) if p != os.getpid()]
        time.sleep(0.01 if below else 0)
    return first


def run(seeds: list[Seed], count: int, seed: int, work: Path,
        first: int = 0) -> tuple[Counter[str], list[Verdict]]:
    """Fuzz `count` mutants (indices first..first+count-1); returns outcome counts and
    the verdicts that are not clean/harmless."""
    counts: Counter[str] = Counter({o: 0 for o in OUTCOMES})
    bad: list[Verdict] = []
    for i in range(first, first + count):
        rng = random.Random(f"{seed}:{i}")
        s = seeds[i % len(seeds)]
        dst = work / f"m{i}"
        what = mutate(s.images, dst, rng)
        outcome, detail = judge(s, dst, what.startswith("forge"))
        counts[outcome] += 1
        if outcome not in ("clean", "harmless"):
            bad.append(Verdict(i, what, outcome, detail))
        _remove(dst)
    return counts, bad


def _remove(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        try:
            if p.is_dir() and not p.is_symlink():
                p.chmod(stat.S_IRWXU)
        except OSError:
            pass
    shutil.rmtree(path, ignore_errors=True)
    outside = path.parent / f"{path.name}.outside"
    if outside.exists():
        outside.unlink()


def table(counts: Counter[str], seconds: float) -> str:
    """The outcome table as text."""
    total = sum(counts.values())
    rows = [f"{'outcome':14} {'mutants':>8} {'share':>7}"]
    for o in OUTCOMES:
        rows.append(f"{o:14} {counts[o]:8d} {100 * counts[o] / max(total, 1):6.1f}%")
    rows.append(f"{'total':14} {total:8d}   in {seconds:.0f} s")
    return "\n".join(rows)


def now() -> float:
    """Monotonic seconds (for the run's duration)."""
    return time.monotonic()
