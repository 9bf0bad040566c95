#!/usr/bin/env python3
"""Checkpoint/restore benchmarks: print figures, never assert them.

    python bench/run.py [--engine bundled|criu|both] [--reps N] [--mib N] [--json OUT]

For each workload x engine: dump and restore wall time of the engine process, MB/s,
image bytes, peak RSS of the engine (wait4 ru_maxrss), and whether the restored
workload still passes its own memory check. Then incremental dumps, lazy restore and
the harness's overhead per iteration. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import measure, migrate, overhead, report, workloads
from bench.cmdlines import Bundled, Criu, Engine
from bench.procs import DeadlineExceeded, Procs
from zdtm import plumbing

SCENARIOS = ["cycle", "incremental", "lazy", "overhead", "migrate"]
WORKLOADS = ["anon", "maps", "shm", "fds"]
DEFAULT_WORKLOADS = ["anon", "maps", "shm"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description="Dump/restore benchmarks (figures only).")
    p.add_argument("--engine", choices=["bundled", "criu", "both"], default="both",
                   help="engines to run side by side (default both: criu when "
                        "`criu check` passes, else its DESIGN.md reference figures)")
    p.add_argument("--criu-bin", default="criu", help="criu binary (default: from PATH)")
    p.add_argument("--reps", type=int, default=3, help="repetitions; medians are printed")
    p.add_argument("--mib", type=int, default=1024, help="MiB of the anon workload")
    p.add_argument("--vmas", type=int, default=30000, help="VMAs of the maps workload")
    p.add_argument("--shm-mib", type=int, default=64, help="MiB of the shm workload")
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
    if min(args.reps, args.mib, args.vmas, args.shm_mib, args.fds) < 1:
        p.error("--reps, --mib, --vmas, --shm-mib and --fds must be positive")
    try:
        args.rates = [int(x) for x in args.rates.split(",") if x]
    except ValueError:
        p.error(f"--rates: not a comma list of integers: {args.rates}")
    if not args.rates or min(args.rates) < 1 or args.pre_dumps < 1:
        p.error("--rates and --pre-dumps must be positive")
    return args


def _choices(p: argparse.ArgumentParser, text: str, allowed: list[str], opt: str) -> list[str]:
    picked = [x for x in text.split(",") if x]
    bad = [x for x in picked if x not in allowed]
    if bad:
        p.error(f"{opt}: unknown {', '.join(bad)} (choose from {', '.join(allowed)})")
    return picked


def log(msg: str) -> None:
    """Progress line on stderr (the tables go to stdout)."""
    print(msg, file=sys.stderr, flush=True)


def repeat(ctx: measure.Context, res: report.Result, reps: int, fn, *fn_args) -> None:
    """Run fn reps times into res; stop at the first failure (it would repeat)."""
    for i in range(reps):
        tag = f"[{res.scenario} {res.workload} {res.engine} {i + 1}/{reps}]"
        load1 = os.getloadavg()[0]
        try:
            sample = fn(ctx, *fn_args)
        except (measure.StepFailed, DeadlineExceeded, RuntimeError, OSError) as exc:
            res.errors.append(str(exc))
            log(f"{tag} FAILED: {exc}")
            return
        sample["load1_at_start"] = load1  # in the JSON: how busy the machine was
        res.samples.append(sample)
        figures = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in sample.items() if k != "verify_detail")
        log(f"{tag} {figures}")


def engines_for(args: argparse.Namespace) -> list[Engine]:
    """Probe the requested engines; print why criu is not measured when it is not."""
    out: list[Engine] = []
    if args.engine in ("bundled", "both"):
        eng = Bundled()
        eng.probe()
        log(f"bundled: {'available' if eng.available else 'unavailable: ' + eng.message}")
        out.append(eng)
    if args.engine in ("criu", "both"):
        eng = Criu(args.criu_bin)
        eng.probe()
        if eng.available:
            log(f"criu: available ({eng.binary})")
        else:
            print(f"criu: unavailable: {eng.message}", flush=True)
        out.append(eng)
    return out


def plan(args: argparse.Namespace) -> list[tuple[str, workloads.Workload]]:
    """(scenario, workload) pairs to measure, in order."""
    make = {"anon": lambda: workloads.Workload.anon(args.mib),
            "maps": lambda: workloads.Workload.maps(args.vmas),
            "shm": lambda: workloads.Workload.shm(args.shm_mib),
            "fds": lambda: workloads.Workload.fds(args.fds)}
    todo = []
    if "cycle" in args.scenarios:
        todo += [("cycle", make[w]()) for w in args.workloads]
    for scen in ("incremental", "lazy"):
        if scen in args.scenarios:
            todo.append((scen, make["anon"]()))
    return todo


# Features (names of `python -m engine check --json`) a scenario x workload needs.
NEEDS = {("cycle", "anon"): ["dump", "restore"],
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


def measure_all(args: argparse.Namespace, ctx: measure.Context,
                engines: list[Engine]) -> list[report.Result]:
    """Every planned scenario x workload x available engine."""
    fns = {"cycle": measure.cycle, "incremental": measure.incremental,
           "lazy": measure.lazy}
    results = []
    for scen, wl in plan(args):
        for eng in engines:
            if not eng.available and eng.name == "criu" and len(engines) > 1:
                continue  # printed once above; the reference column stands in
            res = report.Result(scen, wl.name, wl.describe, eng.name, wl.args)
            results.append(res)
            if not eng.available:
                res.errors.append(f"engine unavailable: {eng.message}")
                continue
            res.unsupported = unsupported(eng, scen, wl.name)
            if res.unsupported:
                log(f"[{scen} {wl.name} {eng.name}] not supported: {res.unsupported}")
                continue
            repeat(ctx, res, args.reps, fns[scen], eng, wl)
    if "migrate" in args.scenarios:
        results += measure_migrate(args, ctx, engines)
    bundled = next((e for e in engines if e.name == "bundled"), None)
    if "overhead" in args.scenarios and bundled is not None:
        test = overhead.pick_test(args.overhead_test)
        res = report.Result("overhead", f"static/{test or '?'}",
                            "runner.py, flavour h, 1 iteration",
                            "bundled", [])
        results.append(res)
        if test is None:
            res.errors.append(f"no simple static test found (tried {overhead.PREFERRED})")
        elif not bundled.available:
            res.errors.append(f"engine unavailable: {bundled.message}")
        else:
            repeat(ctx, res, args.reps, overhead.overhead, bundled, test)
    return results


def measure_migrate(args: argparse.Namespace, ctx: measure.Context,
                    engines: list[Engine]) -> list[report.Result]:
    """Live migration: per write rate and engine, a full dump against pre-dumps + a final
    dump (bundled; criu cannot pre-dump here, see its reason in the table)."""
    results = []
    for rate in args.rates:
        wl = workloads.Workload.writer(args.mib, rate)
        for eng in engines:
            res = report.Result("migrate", f"{rate} MiB/s", wl.describe, eng.name, wl.args)
            results.append(res)
            if not eng.available:
                res.errors.append(f"engine unavailable: {eng.message}")
                continue
            if eng.name == "criu":
                res.chain_note = migrate.criu_pre_dump_reason(eng.binary) or \
                    "not measured (criu's pre-dump chain is not run by this benchmark)"
            else:
                res.unsupported = unsupported(eng, "incremental", "anon")
                if res.unsupported:
                    continue
                res.chain_note = f"{args.pre_dumps} pre-dumps"
            repeat(ctx, res, args.reps, migrate.migrate, eng, wl, args.pre_dumps)
    return results


def load_text(load: tuple[float, float, float]) -> str:
    """1/5/15-minute load averages."""
    return "/".join(f"{x:.2f}" for x in load)


def print_report(args: argparse.Namespace, results: list[report.Result],
                 loads: list[tuple[float, float, float]]) -> None:
    """The tables, one per scenario that ran."""
    print(f"machine: kernel {platform.release()}, {os.cpu_count()} CPUs, load average "
          f"{load_text(loads[0])} at start, {load_text(loads[1])} at end "
          "(other work on the machine makes every figure noisier)")
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
    print("\nratio = criu time / bundled time (above 1: bundled is faster; d+r: median of "
          "dump + restore per repetition); "
          "(ref) = against the CRIU 4.2 reference of DESIGN.md section 8,\n"
          "shown only at the reference sizes (--mib 1024, --vmas 30000, --shm-mib 64)")


def write_json(path: str, args: argparse.Namespace, engines: list[Engine],
               results: list[report.Result], loads: list[tuple[float, float, float]]) -> None:
    """Every raw sample, medians, engine availability and the reference figures."""
    data = {
        "meta": {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "kernel": platform.release(),
                 "cpus": os.cpu_count(), "argv": sys.argv[1:], "reps": args.reps,
                 "loadavg_start": loads[0], "loadavg_end": loads[1]},
        "engines": {e.name: {"available": e.available, "message": e.message,
                             "features": e.features} for e in engines},
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
    try:
        ctx = measure.Context(procs, workloads.build_memload(tmp), tmp, args.timeout)
        engines = engines_for(args)
        results = measure_all(args, ctx, engines)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        procs.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
        signal.pthread_sigmask(signal.SIG_UNBLOCK,
                               {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    loads.append(os.getloadavg())
    print_report(args, results, loads)
    if args.json:
        write_json(args.json, args, engines, results, loads)
    failed = any(r.errors or r.verified().startswith("NO") for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
