"""Live migration: a process that keeps writing, copied by pre-dumps while it runs, then
frozen once for the final dump; against one full dump (and CRIU's full dump, its only
option here: its pre-dump needs soft-dirty tracking, which this kernel lacks).

The figure that matters is how long the process is frozen, as each engine reports it:
the bundled engine in the image's stats.json (`frozen_s`), CRIU in its stats-dump image
(`frozen_time`, microseconds).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from bench import workloads
from bench.cmdlines import Engine
from bench.measure import Context, StepFailed, image_bytes, restore_and_verify, run_step

SETTLE_S = 1.0  # the writer runs this long before the first dump


def migrate(ctx: Context, engine: Engine, wl: workloads.Workload, pre: int) -> dict:
    """One repetition: a full dump + restore of a fresh writer; with the bundled engine
    also `pre` pre-dumps, the final dump against the last one, and the chain's restore."""
    sample: dict = {}
    checks = [_full(ctx, engine, wl, sample)]
    if engine.name == "bundled" and pre:
        checks.append(_chain(ctx, engine, wl, pre, sample))
    bad = [detail for ok, detail in checks if not ok]
    sample["verified"], sample["verify_detail"] = not bad, "; ".join(bad) or "PASS"
    return sample


def criu_pre_dump_reason(binary: str) -> str:
    """Why CRIU cannot pre-dump here, in its own words (`criu check --feature
    mem_dirty_track`), or "" when it can."""
    try:
        res = subprocess.run([binary, "check", "--feature", "mem_dirty_track"],
                             capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"criu check --feature mem_dirty_track: {exc}"
    if res.returncode == 0 and "OFF" not in res.stdout + res.stderr:
        return ""
    lines = [ln.split("): ", 1)[-1] for ln in (res.stdout + res.stderr).splitlines()
             if "Dirty" in ln or "Error" in ln]
    return "; ".join(lines) or f"criu check --feature mem_dirty_track: exit {res.returncode}"


def _start(ctx: Context, wl: workloads.Workload, d: Path) -> workloads.Running:
    run = workloads.start(ctx.procs, ctx.memload, wl, d / "work", ctx.timeout)
    time.sleep(SETTLE_S)
    return run


def _full(ctx: Context, engine: Engine, wl: workloads.Workload, sample: dict
          ) -> tuple[bool, str]:
    d = ctx.scratch(f"mig-full-{engine.name}-")
    run = _start(ctx, wl, d)
    images = d / "images"
    images.mkdir(mode=0o700)
    try:
        res = run_step(ctx, engine, "dump", engine.dump(run.pid, images))
        part: dict = {"dump_s": res.wall_s, "frozen_s": frozen_seconds(engine, images),
                      "bytes": image_bytes(images)}
        restore_and_verify(ctx, engine, run, images, d / "restored.pid", part)
        ok, detail = part.pop("verified"), part.pop("verify_detail")
        sample.update({f"full_{k}": v for k, v in part.items()})
        return ok, f"full: {detail}"
    finally:
        ctx.procs.cleanup()
        shutil.rmtree(d, ignore_errors=True)


def _chain(ctx: Context, engine: Engine, wl: workloads.Workload, pre: int,
           sample: dict) -> tuple[bool, str]:
    d = ctx.scratch(f"mig-chain-{engine.name}-")
    run = _start(ctx, wl, d)
    dirs = [d / f"pre{k}" for k in range(1, pre + 1)] + [d / "final"]
    for x in dirs:
        x.mkdir(mode=0o700)
    try:
        frozen = []
        for k, x in enumerate(dirs[:-1]):
            run_step(ctx, engine, "pre-dump",
                     engine.pre_dump(run.pid, x, prev=dirs[k - 1] if k else None))
            frozen.append(frozen_seconds(engine, x))
        res = run_step(ctx, engine, "dump", engine.dump(run.pid, dirs[-1], prev=dirs[-2]))
        part: dict = {"pre_frozen_max_s": max(frozen), "final_dump_s": res.wall_s,
                      "final_frozen_s": frozen_seconds(engine, dirs[-1]),
                      "final_bytes": image_bytes(dirs[-1]),
                      "bytes": sum(image_bytes(x) for x in dirs)}
        restore_and_verify(ctx, engine, run, dirs[-1], d / "restored.pid", part)
        ok, detail = part.pop("verified"), part.pop("verify_detail")
        sample.update({f"chain_{k}": v for k, v in part.items()})
        return ok, f"chain: {detail}"
    finally:
        ctx.procs.cleanup()
        shutil.rmtree(d, ignore_errors=True)


def frozen_seconds(engine: Engine, images: Path) -> float:
    """How long the engine says the tree was frozen for the dump in `images`."""
    try:
        if engine.name == "criu":
            return criu_frozen_us((images / "stats-dump").read_bytes()) / 1e6
        return float(json.loads((images / "stats.json").read_text())["frozen_s"])
    except (OSError, ValueError, KeyError) as exc:
        raise StepFailed(f"no frozen time in {images}: {exc}") from exc


def criu_frozen_us(raw: bytes) -> int:
    """frozen_time (field 2 of dump_stats_entry, field 1 of stats_entry) from CRIU's
    stats-dump image: two magic words, a 32-bit entry size, then the protobuf entry."""
    size = int.from_bytes(raw[8:12], "little")
    dump = _fields(raw[12:12 + size]).get(1)
    frozen = (_fields(dump) if isinstance(dump, bytes) else {}).get(2)
    if isinstance(frozen, int):
        return frozen
    raise ValueError("stats-dump has no dump entry with a frozen_time")


def _fields(msg: bytes) -> dict[int, int | bytes]:
    """Top-level fields of a protobuf message (varints and length-delimited only)."""
    out: dict[int, int | bytes] = {}
    i = 0
    while i < len(msg):
        key, i = _varint(msg, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            out[number], i = _varint(msg, i)
        elif wire == 2:
            n, i = _varint(msg, i)
            out[number], i = msg[i:i + n], i + n
        else:
            raise ValueError(f"protobuf wire type {wire} not expected in stats-dump")
    return out


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated protobuf varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i
