#!/usr/bin/env python3
"""Checkpoint/restore benchmarks: print figures, never assert them.

    python bench/run.py [--engine bundled|criu|both] [--reps N] [--mib N] [--json OUT]
                        [--cold] [--sweeps memory,vmas,procs]

For each workload, the engines in turn rep by rep: dump and restore wall time of the
engine process, MB/s, image bytes, peak RSS of the engine (wait4 ru_maxrss), and
whether the restored workload still passes its own memory check; the ratio table ours /
CRIU. Then incremental dumps, lazy restore, the harness's overhead per iteration, live
migration, and the scaling sweeps. See bench/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import compare, criubin, hostmem, measure, migrate, overhead, report, workloads
from bench.cmdlines import REPO, Bundled, Criu, Engine
from bench.procs import Procs
from bench.schedule import SWEEP_KINDS, Job, SweepPoint, alternate, log, sweep_plan
from zdtm import plumbing

SCENARIOS = ["cycle", "incremental", "lazy", "overhead", "migrate"]
WORKLOADS = ["anon", "maps", "shm", "small", "tree", "big", "fds"]
DEFAULT_WORKLOADS = ["anon", "maps", "shm", "small", "tree", "big"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description="Dump/restore benchmarks (figures only).")
    p.add_argument("--engine", choices=["bundled", "criu", "both"], default="both",
                   help="engines to run side by side (default both: criu when "
                        "`criu check` passes, else its DESIGN.md reference figures)")
    p.add_argument("--criu-bin", default=None,
                   help="criu binary (default: criu from PATH, else the one "
                        "../shared/peers/criu/build.sh builds and prints)")
    p.add_argument("--served", action="store_true",
                   help="bundled steps are forked from one engine server, as the harness "
                        "runs them (default: a process of their own, start-up included)")
    p.add_argument("--reps", type=int, default=3, help="repetitions; medians are printed")
    p.add_argument("--mib", type=int, default=1024, help="MiB of the anon workload")
    p.add_argument("--vmas", type=int, default=30000, help="VMAs of the maps workload")
    p.add_argument("--shm-mib", type=int, default=64, help="MiB of the shm workload")
    p.add_argument("--small-mib", type=int, default=1, help="MiB of the small workload")
    p.add_argument("--procs", type=int, default=50, help="processes of the tree workload")
    p.add_argument("--big-mib", type=int, default=4096, help="MiB of the big workload")
    p.add_argument("--lazy-mib", type=int, default=None,
                   help="MiB of the lazy restore's workload (default: --mib)")
    p.add_argument("--cold", action="store_true",
                   help="also measure every cycle and lazy workload with its image evicted "
                        "from the page cache before restore (separate rows)")
    p.add_argument("--sweeps", default="",
                   help=f"scaling sweeps to run, comma list of {','.join(SWEEP_KINDS)}")
    for kind in SWEEP_KINDS.values():
        p.add_argument(f"--sweep-{kind.name}", metavar="N,N,...", default=None,
                       help=f"points of the {kind.name} sweep in {kind.unit} (default "
                            f"{','.join(map(str, kind.default_points))})")
    p.add_argument("--fds", type=int, default=10000,
                   help="sockets of the fds workload (pairs, all watched by one epoll)")
    p.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS),
                   help=f"comma list of {','.join(WORKLOADS)}")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma list of {','.join(SCENARIOS)}")
    p.add_argument("--rates", default="10,100",
                   help="migrate: write rates of the live process in MiB/s (default 10,100)")
    p.add_argument("--pre-dumps", type=int, default=3,
                   help="migrate: pre-dumps before the final dump (default 3)")
    p.add_argument("--overhead-test", default="auto",
                   help="static test timed through runner.py (default: a simple one)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="deadline in seconds of every single step")
    p.add_argument("--workdir", default=None,
                   help="where the temp dir with images goes (default: $TMPDIR or /tmp)")
    p.add_argument("--json", metavar="OUT", help="also write every sample to OUT as JSON")
    args = p.parse_args(argv)
    args.workloads = _choices(p, args.workloads, WORKLOADS, "--workloads")
    args.scenarios = _choices(p, args.scenarios, SCENARIOS, "--scenarios")
    args.sweeps = _choices(p, args.sweeps, list(SWEEP_KINDS), "--sweeps")
    args.lazy_mib = args.lazy_mib or args.mib
    sizes = (args.reps, args.mib, args.vmas, args.shm_mib, args.fds, args.small_mib,
             args.procs, args.big_mib, args.lazy_mib)
    if min(sizes) < 1:
        p.error("--reps and every size option (--mib, --vmas, --shm-mib, --fds, "
                "--small-mib, --procs, --big-mib, --lazy-mib) must be positive")
    args.rates = _int_list(p, args.rates, "--rates")
    if not args.rates or args.pre_dumps < 1:
        p.error("--rates and --pre-dumps must be positive")
    args.sweep_points = {k: _int_list(p, getattr(args, f"sweep_{k}"), f"--sweep-{k}")
                         if getattr(args, f"sweep_{k}") else None for k in SWEEP_KINDS}
    return args


def _int_list(p: argparse.ArgumentParser, text: str, opt: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x]
    except ValueError:
        p.error(f"{opt}: not a comma list of integers: {text}")
    if not vals or min(vals) < 1:
        p.error(f"{opt}: needs positive integers: {text}")
    return vals


def _choices(p: argparse.ArgumentParser, text: str, allowed: list[str], opt: str) -> list[str]:
    picked = [x for x in text.split(",") if x]
    bad = [x for x in picked if x not in allowed]
    if bad:
        p.error(f"{opt}: unknown {', '.join(bad)} (choose from {', '.join(allowed)})")
    return picked


def engines_for(args: argparse.Namespace) -> list[Engine]:
    """Probe the requested engines; print why criu is not measured when it is not."""
    out: list[Engine] = []
    if args.engine in ("bundled", "both"):
        eng = Bundled(served=args.served)
        eng.probe()
        how = " (steps forked from an engine server)" if args.served else ""
        log(f"bundled{how}: "
            f"{'available' if eng.available else 'unavailable: ' + eng.message}")
        out.append(eng)
    if args.engine in ("criu", "both"):
        found = criubin.find_criu(args.criu_bin, REPO)
        criu = Criu(found.binary or "criu")
        criu.found_by = found.source
        if found.binary is None:
            criu.message = found.error
        else:
            criu.probe()
        if criu.available:
            log(f"criu: available ({criu.binary}, from {found.source})")
        else:
            print(f"criu: unavailable: {criu.message}", flush=True)
        out.append(criu)
    return out


def make_workload(name: str, size: int) -> workloads.Workload:
    """The workload called name at size (in its own unit: MiB, VMAs, sockets, tasks)."""
    make = {"anon": workloads.Workload.anon, "maps": workloads.Workload.maps,
            "shm": workloads.Workload.shm, "fds": workloads.Workload.fds,
            "small": workloads.Workload.small, "big": workloads.Workload.big,
            "tree": workloads.Workload.tree}
    return make[name](size)


def plan(args: argparse.Namespace) -> list[tuple[str, workloads.Workload, bool]]:
    """(scenario, workload, cold) to measure, in order: warm first, then cold."""
    size = {"anon": args.mib, "maps": args.vmas, "shm": args.shm_mib, "fds": args.fds,
            "small": args.small_mib, "big": args.big_mib, "tree": args.procs}
    todo = []
    for cold in [False, True] if args.cold else [False]:
        if "cycle" in args.scenarios:
            todo += [("cycle", make_workload(w, size[w]), cold) for w in args.workloads]
        if "lazy" in args.scenarios:
            todo.append(("lazy", workloads.Workload.anon(args.lazy_mib), cold))
    if "incremental" in args.scenarios:
        todo.append(("incremental", workloads.Workload.anon(args.mib), False))
    return todo


# Features (names of `python -m engine check --json`) a scenario x workload needs.
NEEDS = {("cycle", "anon"): ["dump", "restore"],
         ("cycle", "small"): ["dump", "restore"],
         ("cycle", "big"): ["dump", "restore"],
         ("cycle", "tree"): ["dump_tree", "restore_tree"],
         ("cycle", "maps"): ["dump", "restore"],
         ("cycle", "shm"): ["dump_tree", "restore_tree", "dump_shmem", "restore_shmem"],
         ("cycle", "fds"): ["unix_socketpair", "epoll"],
         ("incremental", "anon"): ["pre_dump"],
         ("lazy", "anon"): ["lazy_pages"]}


def unsupported(eng: Engine, scen: str, wl: str) -> str | None:
    """The engine's own reason when its check says it lacks what this needs."""
    for feat in NEEDS.get((scen, wl), []):
        if eng.features.get(feat) is False:  # unreported means supported
            return f"{feat}: {eng.reasons.get(feat, 'reported false by check')}"
    return None


def jobs_for(engines: list[Engine], scen: str, wl: workloads.Workload,
             fn: Callable[..., dict[str, Any]], extra: tuple[Any, ...] = (),
             label: str | None = None, **fields: Any) -> tuple[list[report.Result], list[Job]]:
    """One Result per engine (fields: cold, sweep, units), and a Job for each engine that
    can run it. A criu that is unavailable next to the bundled engine gets no row: it was
    printed once, and the reference figures stand in."""
    results, jobs = [], []
    for eng in engines:
        if not eng.available and eng.name == "criu" and len(engines) > 1:
            continue
        res = report.Result(scen, label or wl.name, wl.describe, eng.name, wl.args, **fields)
        results.append(res)
        if not eng.available:
            res.errors.append(f"engine unavailable: {eng.message}")
            continue
        res.unsupported = unsupported(eng, "cycle" if scen == "sweep" else scen, wl.name)
        if res.unsupported:
            log(f"[{scen} {wl.name} {eng.name}] not supported: {res.unsupported}")
            continue
        jobs.append(Job(res, fn, (eng, wl, *extra)))
    return results, jobs


def measure_all(args: argparse.Namespace, ctx: measure.Context, engines: list[Engine],
                seq: Iterator[int]) -> list[report.Result]:
    """Every planned scenario x workload, the available engines in turn rep by rep."""
    fns = {"cycle": measure.cycle, "incremental": measure.incremental,
           "lazy": measure.lazy}
    results = []
    for scen, wl, cold in plan(args):
        extra = (cold,) if scen in ("cycle", "lazy") else ()
        res, jobs = jobs_for(engines, scen, wl, fns[scen], extra, cold=cold)
        results += res
        alternate(ctx, jobs, args.reps, seq)
    if "migrate" in args.scenarios:
        results += measure_migrate(args, ctx, engines, seq)
    if "overhead" in args.scenarios:
        results += measure_overhead(args, ctx, engines, seq)
    for point in sweep_plan(args.sweeps, args.sweep_points):
        results += measure_point(args, ctx, engines, point, seq)
    return results


def measure_point(args: argparse.Namespace, ctx: measure.Context, engines: list[Engine],
                  point: SweepPoint, seq: Iterator[int]) -> list[report.Result]:
    """One point of a scaling sweep: a cycle of the sweep's workload at that size."""
    wl = make_workload(point.kind.workload, point.units)
    res, jobs = jobs_for(engines, "sweep", wl, measure.cycle,
                         label=f"{point.units} {point.kind.unit}", sweep=point.kind.name,
                         units=point.units)
    alternate(ctx, jobs, args.reps, seq)
    return res


def measure_overhead(args: argparse.Namespace, ctx: measure.Context, engines: list[Engine],
                     seq: Iterator[int]) -> list[report.Result]:
    """The harness's own time per iteration (bundled engine only)."""
    bundled = next((e for e in engines if e.name == "bundled"), None)
    if bundled is None:
        return []
    test = overhead.pick_test(args.overhead_test)
    res = report.Result("overhead", f"static/{test or '?'}",
                        "runner.py, flavour h, 1 iteration", "bundled", [])
    if test is None:
        res.errors.append(f"no simple static test found (tried {overhead.PREFERRED})")
    elif not bundled.available:
        res.errors.append(f"engine unavailable: {bundled.message}")
    else:
        alternate(ctx, [Job(res, overhead.overhead, (bundled, test))], args.reps, seq)
    return [res]


def measure_migrate(args: argparse.Namespace, ctx: measure.Context, engines: list[Engine],
                    seq: Iterator[int]) -> list[report.Result]:
    """Live migration: per write rate, the engines in turn, a full dump against pre-dumps
    + a final dump (bundled; criu cannot pre-dump here, see its reason in the table)."""
    results = []
    for rate in args.rates:
        wl = workloads.Workload.writer(args.mib, rate)
        jobs = []
        for eng in engines:
            res = report.Result("migrate", f"{rate} MiB/s", wl.describe, eng.name, wl.args)
            results.append(res)
            if not eng.available:
                res.errors.append(f"engine unavailable: {eng.message}")
                continue
            if isinstance(eng, Criu):
                res.chain_note = migrate.criu_pre_dump_reason(eng.binary) or \
                    "not measured (criu's pre-dump chain is not run by this benchmark)"
            else:
                res.unsupported = unsupported(eng, "incremental", "anon")
                if res.unsupported:
                    continue
                res.chain_note = f"{args.pre_dumps} pre-dumps"
            jobs.append(Job(res, migrate.migrate, (eng, wl, args.pre_dumps)))
        alternate(ctx, jobs, args.reps, seq)
    return results


def load_text(load: tuple[float, float, float]) -> str:
    """1/5/15-minute load averages."""
    return "/".join(f"{x:.2f}" for x in load)


def print_report(args: argparse.Namespace, results: list[report.Result],
                 loads: list[tuple[float, float, float]], host_memory: str) -> None:
    """The machine (load, free page reporting), the ratio table, then one table per
    scenario that ran, then the sweeps."""
    print(f"machine: kernel {platform.release()}, {os.cpu_count()} CPUs, load average "
          f"{load_text(loads[0])} at start, {load_text(loads[1])} at end "
          "(other work on the machine makes every figure noisier)")
    print(host_memory)
    if args.served:
        print("bundled engine: every step forked from one engine server (--served), as the "
              "harness runs them; criu: a process per step")
    if any(r.scenario in ("cycle", "lazy") for r in results):
        print(f"\n== Ours / CRIU (medians of {args.reps}, engines in turn rep by rep) ==")
        print(compare.ratio_tables(results))
        print(RATIO_NOTE)
    migrate_title = "Live migration: frozen time, pre-dumps + final dump vs a full dump"
    sections = [("cycle", "Dump and restore", report.cycle_table),
                ("incremental", "Incremental: pre-dump, dirty 1/8, dump, restore",
                 report.incremental_table),
                ("lazy", "Lazy restore", report.lazy_table),
                ("overhead", "Harness overhead per iteration", report.overhead_table),
                ("migrate", migrate_title, report.migrate_table)]
    for scen, title, fn in sections:
        if scen in args.scenarios:
            print(f"\n== {title} (medians of {args.reps}) ==")
            print(fn(results))
        if scen == "cycle" and scen in args.scenarios and args.cold:
            print(f"\n== Dump and restore, image evicted from the page cache before "
                  f"restore (medians of {args.reps}) ==")
            print(report.cycle_table(results, cold=True))
    for name in args.sweeps:
        kind = SWEEP_KINDS[name]
        print(f"\n== Sweep: {name} ({kind.workload} workload; medians of {args.reps}; "
              f"per-unit costs from the previous point, then least squares over all) ==")
        print(compare.sweep_table(kind, results))


RATIO_NOTE = """\
ratio = ours / CRIU time (below 1: the bundled engine is faster); dump+restore is the median
over reps of each rep's dump + restore; every rep starts a fresh workload, bundled then criu.
A cold row's image was fsync'ed and evicted (POSIX_FADV_DONTNEED) before restore; lazy:
ready = the lazy-pages daemon listens (from its start), resume = restore returns, all pages
in = the daemon has delivered every page (both from the restore's start; the bundled daemon
is served too under --served).
criu = the CRIU 4.2 reference (DESIGN.md section 8) only when criu did not run and the size
is the reference's (--mib 1024, --vmas 30000, --shm-mib 64)."""


def write_json(path: str, args: argparse.Namespace, engines: list[Engine],
               results: list[report.Result], loads: list[tuple[float, float, float]],
               reported: list[int | None]) -> None:
    """Every raw sample, medians, engine availability and the reference figures."""
    data = {
        "meta": {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "kernel": platform.release(),
                 "cpus": os.cpu_count(), "argv": sys.argv[1:], "reps": args.reps,
                 "loadavg_start": loads[0], "loadavg_end": loads[1],
                 "host_reported_mib": hostmem.delta_mib(*reported),
                 "order": "engines in turn rep by rep; samples carry rep and seq"},
        "engines": {e.name: {"available": e.available, "message": e.message,
                             "binary": e.base()[0], "found_by": getattr(e, "found_by", ""),
                             "features": e.features}
                    for e in engines},
        "reference": {"label": report.REF_LABEL, "figures": report.REFERENCE},
        "results": [r.to_json() for r in results],
    }
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; exit 1 when any step failed or a restore did not verify."""
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)  # so the cleanup below always runs
    plumbing.set_subreaper()
    tmp = Path(tempfile.mkdtemp(prefix="zdtm-bench-", dir=args.workdir))
    procs = Procs(tmp, sweep_children=True)
    loads = [os.getloadavg()]
    reported = [hostmem.reported_kib()]
    engines: list[Engine] = []
    try:
        ctx = measure.Context(procs, workloads.build_memload(tmp), tmp, args.timeout)
        engines = engines_for(args)
        results = measure_all(args, ctx, engines, itertools.count(1))
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        for eng in engines:
            eng.close()
        procs.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
        signal.pthread_sigmask(signal.SIG_UNBLOCK,
                               {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    loads.append(os.getloadavg())
    reported.append(hostmem.reported_kib())
    print_report(args, results, loads, hostmem.describe(*reported))
    if args.json:
        write_json(args.json, args, engines, results, loads, reported)
    failed = any(r.errors or r.verified().startswith("NO") for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
