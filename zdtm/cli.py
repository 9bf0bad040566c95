"""The runner's command line (runner.py): run, list, clean, compare, merge.

Needs only the standard library and PyYAML, so it runs on a fresh machine.  With ``-p N``
each test x flavour runs in its own worker process (``python -m zdtm.cli _one``), so leak
checks and cleanup of one run never see another's processes; ``excl`` tests run alone.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zdtm import CHECKOUT_TAG, FLAVORS, ROOT_DIR, known, missing_sources, plumbing, shard, vm
from zdtm import results as results_file
from zdtm.build import BuildError, ensure_built
from zdtm.compare import Comparison, compare, known_lines
from zdtm.console import Console, closing_lines
from zdtm.desc import DescError, TestDesc, discover, discover_external, select
from zdtm.drivers import Engine, make_engine
from zdtm.external import script, start_plan
from zdtm.gate import verdict, with_reruns
from zdtm.lifecycle import ENGINE_TIMEOUT, SNAPSHOT_TIMEOUT, RunOptions, prepare_process, run_test
from zdtm.report import allowed_totals, check_writable, totals, write_reports
from zdtm.result import FAIL, HARNESS_ERROR, TIMEOUT, Phase, Result
from zdtm.results import ResultsError, RunResults

# Under the temp dir, not in the checkout: in uns the test runs as uid 100000, which must be
# able to reach its work dir (a checkout may sit under a 0700 home directory).
DEFAULT_WORKROOT = Path(tempfile.gettempdir()) / "zdtm-run" / CHECKOUT_TAG
RESULT_PREFIX = "zdtm-result: "
WORKER_GRACE = 30.0  # seconds a terminated worker gets for its cleanup


@dataclass
class Job:
    """One test x flavour to run."""

    test: TestDesc
    flavor: str

    @property
    def ident(self) -> str:
        """``static/maps06 [ns]``"""
        return f"{self.test.name} [{self.flavor}]"


def _flavor_list(text: str) -> list[str]:
    names = [f for f in text.replace(" ", ",").split(",") if f]
    bad = [f for f in names if f not in FLAVORS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown flavour(s) {bad}; known: {','.join(FLAVORS)}")
    return names


def _positive(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, not {text}")
    return value


def _shard(text: str) -> tuple[int, int]:
    try:
        return shard.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _executable(text: str) -> str:
    # a mistyped --criu-bin must be a usage error, not a SKIP that turns a gate green
    if not (os.path.isfile(text) and os.access(text, os.X_OK)):
        raise argparse.ArgumentTypeError(f"not an executable file: {text}")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of runner.py."""
    p = argparse.ArgumentParser(prog="runner.py", description="zdtm C/R conformance runner")
    sub = p.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="run tests")
    run.add_argument("-t", "--test", action="append", default=[], metavar="NAME",
                     help="test to run (static/maps06 or zdtm/static/maps06), repeatable")
    run.add_argument("-T", "--tests-regex", action="append", default=[], metavar="REGEX",
                     help="run tests matching REGEX (repeatable)")
    run.add_argument("-a", "--all", action="store_true", help="run all tests (not noauto)")
    run.add_argument("-x", "--exclude", action="append", default=[], metavar="REGEX",
                     help="skip tests whose name matches REGEX anywhere (repeatable, as in "
                          "CRIU's zdtm.py)")
    run.add_argument("-f", "--flavors", type=_flavor_list, metavar="h,ns,uns",
                     help="flavours to run (default: every flavour a test declares)")
    run.add_argument("--iters", type=_at_least_one, default=1, help="C/R iterations (default 1)")
    run.add_argument("--pre", type=_positive, default=0, help="pre-dumps per iteration")
    run.add_argument("--snaps", nargs="?", const="last", choices=("last", "each"),
                     help="the --pre steps are full dumps that leave the tree running "
                          "(restorable snapshots); restore the last (default) or each")
    run.add_argument("--lazy-pages", action="store_true", help="restore with lazy pages")
    run.add_argument("--norst", action="store_true",
                     help="dump with --leave-running and check, no restore")
    run.add_argument("--nocr", action="store_true",
                     help="no C/R: start, check two snapshots, stop")
    run.add_argument("--keep-going", action="store_true", help="go on after a failure")
    run.add_argument("-p", "--parallel", type=_at_least_one, default=1, metavar="N",
                     help="run N tests at once (excl tests always run alone)")
    run.add_argument("--engine", choices=("bundled", "criu"), default="bundled")
    run.add_argument("--criu-bin", metavar="PATH", type=_executable, help="criu binary (default: from PATH)")
    run.add_argument("--keep-img", action="store_true",
                     help="keep work dirs and images under the work root")
    run.add_argument("--work-root", metavar="DIR", type=Path, default=DEFAULT_WORKROOT,
                     help="where the per-test work dirs go; a failed test keeps its logs "
                          f"there (default {DEFAULT_WORKROOT}; uns needs every directory "
                          "above it searchable by others)")
    run.add_argument("--report", metavar="DIR", type=Path,
                     help="write results.json, junit.xml and summary.html to DIR "
                          "(checked writable before anything runs)")
    run.add_argument("--tests-dir", metavar="DIR", type=Path,
                     help="also run zdtm-protocol binaries from DIR (named ext/NAME)")
    run.add_argument("--engine-timeout", type=_seconds, default=ENGINE_TIMEOUT,
                     help=f"deadline of each engine step in seconds ({ENGINE_TIMEOUT:.0f})")
    run.add_argument("--kernel", action="append", default=[], metavar="IMAGE",
                     help="run the selection under this kernel (a vmlinuz, a /boot release "
                          "or 'host'), booted with virtme-ng; repeatable")
    run.add_argument("--results-out", type=Path, help=argparse.SUPPRESS)  # zdtm.vm guests
    run.add_argument("--tolerate-taint", action="store_true",
                     help="a kernel taint already present at start is no failure "
                          "(new taint bits still are)")
    _add_gate_options(run)

    ls = sub.add_parser("list", help="list tests with flavours and flags")
    ls.add_argument("--tests-dir", metavar="DIR", type=Path)

    sub.add_parser("clean", help=f"remove built binaries and {DEFAULT_WORKROOT} (this "
                                 "checkout's work dirs)")

    cmp = sub.add_parser("compare", help="compare a results file with a baseline")
    cmp.add_argument("base", type=Path, metavar="BASE.json")
    cmp.add_argument("new", type=Path, metavar="NEW.json")
    cmp.add_argument("--known", metavar="FILE", type=Path, help="known-failures YAML")
    cmp.add_argument("--allow-new-skips", action="store_true",
                     help="a case that passed in BASE and is skipped in NEW does not fail")

    mrg = sub.add_parser("merge", help="merge the results files of shards into one report")
    mrg.add_argument("files", type=Path, nargs="+", metavar="RESULTS.json")
    mrg.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                     help="write results.json, junit.xml and summary.html to DIR")
    _add_verdict_options(mrg)
    mrg.set_defaults(shard_durations=None)

    one = sub.add_parser("_one", help=argparse.SUPPRESS)  # internal: parallel worker
    one.add_argument("spec")
    return p


def _add_verdict_options(p: argparse.ArgumentParser) -> None:
    """Options that decide the verdict (run and merge): baseline, known failures, strict."""
    p.add_argument("--baseline", metavar="FILE", type=Path,
                   help="results.json of an earlier run: fail only on new failures")
    p.add_argument("--known", metavar="FILE", type=Path,
                   help="known-failures YAML: matching failures are reported apart")
    p.add_argument("--allow-new-skips", action="store_true",
                   help="with --baseline: cases skipped now that passed before do not fail")
    p.add_argument("--strict", action=argparse.BooleanOptionalAction, default=True,
                   help="fail when nothing ran (every case skipped); default: on")


def _add_gate_options(run: argparse.ArgumentParser) -> None:
    """Options of ``run`` for the gate: verdict, reruns, shards."""
    _add_verdict_options(run)
    run.add_argument("--rerun-failures", type=_positive, default=0, metavar="N",
                     help="rerun a failed case up to N times; passing then makes it flaky")
    run.add_argument("--shard", type=_shard, metavar="I/N",
                     help="run only the I-th of N deterministic parts of the selection")
    run.add_argument("--shard-durations", metavar="FILE", type=Path,
                     help="results.json whose durations balance the shards")


def all_tests(tests_dir: Path | None) -> list[TestDesc]:
    """Our tests plus the external ones of --tests-dir."""
    tests = discover()
    if tests_dir is not None:
        tests += discover_external(tests_dir)
    return tests


def plan(tests: Sequence[TestDesc], flavors: Sequence[str] | None) -> list[Job]:
    """Each test x each of its flavours (restricted to ``flavors`` when given)."""
    jobs = []
    for t in tests:
        for f in t.flavors:
            if flavors is None or f in flavors:
                jobs.append(Job(t, f))
    return jobs


def _options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(iters=max(args.iters, 1), pre=args.pre, snaps=args.snaps,
                      lazy=args.lazy_pages,
                      norst=args.norst, keep_img=args.keep_img, workroot=args.work_root,
                      engine_timeout=args.engine_timeout, tolerate_taint=args.tolerate_taint)


def _engine(args: argparse.Namespace) -> Engine:
    return make_engine("nocr" if args.nocr else args.engine, criu_bin=args.criu_bin)


def _worker_deadline(job: Job, opts: RunOptions) -> float:
    """Generous upper bound of one run; every phase inside has its own deadline."""
    per_iter = (opts.pre + 2) * opts.engine_timeout + 2 * SNAPSHOT_TIMEOUT + 60
    return 3 * job.test.timeout + opts.iters * per_iter + 600


def _run_worker(job: Job, args: argparse.Namespace, console: Console,
                live: set[int], probe: dict[str, Any]) -> Result:
    """Run one job in a child process; its progress lines are echoed as they come, each
    starting with the job's name so that lines of parallel jobs stay attributable.

    ``live`` holds the pids of running workers, for the interrupt handler of the caller;
    ``probe`` is the engine's probe_result(), taken once for the whole run.
    """
    spec = json.dumps({"test": job.test.name, "flavor": job.flavor, "argv": args.raw_argv,
                       "probe": probe})
    cmd = [sys.executable, "-m", "zdtm.cli", "_one", spec]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT_DIR), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, text=True,
                            start_new_session=True)
    live.add(proc.pid)
    found: list[Result] = []

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            if line.startswith(RESULT_PREFIX):
                found.append(Result.from_dict(json.loads(line[len(RESULT_PREFIX):])))
            elif line:
                console.line(line if line.startswith(job.ident) else f"{job.ident}: {line}")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    limit = _worker_deadline(job, _options(args))
    result = Result(test=job.test.name, flavor=job.flavor,
                    engine="nocr" if args.nocr else args.engine)
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        _end_workers([proc.pid])
        result.fail(Phase.CHECK, TIMEOUT, f"worker gave no result in {limit:.0f}s, killed")
        return result
    finally:
        live.discard(proc.pid)
    reader.join(timeout=10.0)
    if found:
        return found[-1]
    result.fail(Phase.CHECK, HARNESS_ERROR, f"worker exited with status {rc} and no result")
    return result


def _end_workers(pids: list[int]) -> None:
    """SIGTERM workers so their cleanup runs (test trees, work dirs), then SIGKILL the rest.

    A worker is the subreaper of its test tree: whatever it could not clean up hangs below
    it and dies with it.
    """
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    plumbing.kill_tree(plumbing.wait_gone(pids, WORKER_GRACE), 10.0)


def _run_one_worker(spec_text: str) -> int:
    """Internal ``_one`` command: run a single job, print its result as JSON."""
    spec = json.loads(spec_text)
    args = build_parser().parse_args(spec["argv"])
    tests = {t.name: t for t in all_tests(args.tests_dir)}
    prepare_process()
    engine = _engine(args)
    engine.adopt_probe(spec["probe"])
    try:
        result = run_test(tests[spec["test"]], spec["flavor"], engine, _options(args),
                          progress=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        return 130  # ended by the runner: the lifecycle has cleaned up while unwinding
    print(RESULT_PREFIX + json.dumps(result.to_dict()), flush=True)
    return 0


@dataclass
class Inputs:
    """What a run reads besides its options: baseline, known failures, shard durations."""

    baseline: RunResults | None = None
    known_failures: list[known.KnownFailure] | None = None
    durations: dict[tuple[str, str], float] | None = None


def _usage_error(args: argparse.Namespace) -> str | None:
    """The first usage error of ``run``, found before anything runs or is created."""
    if os.geteuid() != 0:
        return (f"must run as root (ptrace, namespaces and C/R need it); uid is "
                f"{os.geteuid()}")
    if not (args.test or args.tests_regex or args.all):
        return "run: nothing selected (use -t NAME, -T REGEX or -a)"
    if args.nocr and (args.norst or args.lazy_pages or args.pre):
        return "run: --nocr does no C/R: it excludes --norst, --lazy-pages and --pre"
    if args.snaps and not args.pre:
        return "run: --snaps needs --pre N (the number of snapshots)"
    if args.shard_durations and not args.shard:
        return "run: --shard-durations needs --shard"
    if args.report is not None:
        why = check_writable(args.report)
        if why:
            return f"--report: cannot write reports to {why}"
    return None


def _inputs(args: argparse.Namespace) -> Inputs:
    """Load the files the options name; ResultsError/KnownError name what is wrong."""
    got = Inputs()
    if args.baseline:
        got.baseline = results_file.load(args.baseline)
    if args.known:
        got.known_failures = known.load(args.known)
    if args.shard_durations:
        got.durations = results_file.durations(results_file.load(args.shard_durations))
    return got


def _jobs(args: argparse.Namespace, inputs: Inputs) -> list[Job]:
    """The selection (the shard of it with --shard); DescError/re.error on bad input."""
    include = "|".join(f"(?:{r})" for r in args.tests_regex) or None
    exclude = "|".join(f"(?:{r})" for r in args.exclude) or None
    tests = select(all_tests(args.tests_dir), names=args.test, include=include,
                   exclude=exclude, all_tests=args.all)
    jobs = plan(tests, args.flavors)
    if args.shard:
        by_key = {(j.test.name, j.flavor): j for j in jobs}
        jobs = [by_key[k] for k in shard.select(list(by_key), args.shard, inputs.durations)]
    return jobs


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed options, as recorded in the results file."""
    skip = {"cmd", "raw_argv", "known_entries"}
    return {k: (str(v) if isinstance(v, Path) else v)
            for k, v in sorted(vars(args).items()) if k not in skip}


def _build(console: Console, jobs: list[Job]) -> bool:
    """Build what the jobs need, saying what; False (and a FAIL line) when it fails."""
    tests = list({j.test.name: j.test for j in jobs}.values())
    nsinit = any(j.flavor != "h" for j in jobs)
    ours = sum(1 for t in tests if t.build_target is not None)
    what = [f"{ours} test binar{'y' if ours == 1 else 'ies'} (make -C zdtm)"] if ours else []
    what += ["the ns init (make -C flavors nsinit)"] if nsinit else []
    if what:
        console.line(f"build: {' and '.join(what)}, where stale")
    t0 = time.monotonic()
    try:
        ensure_built(tests, with_nsinit=nsinit)
    except BuildError as exc:
        console.line(f"FAIL build: {exc}")
        return False
    if what:
        console.line(f"build: done in {time.monotonic() - t0:.1f}s")
    return True


def cmd_run(args: argparse.Namespace) -> int:
    """``runner.py run``: run the selected tests; the exit status is the gate's verdict."""
    error = _usage_error(args)
    if error:
        print(f"runner.py: {error}", file=sys.stderr)
        return 2
    try:
        inputs = _inputs(args)
        jobs = _jobs(args, inputs)
    except (DescError, re.error, ResultsError, known.KnownError) as exc:
        print(f"runner.py: {exc}", file=sys.stderr)
        return 2
    if not jobs and not args.shard:
        print("runner.py: no test x flavour selected", file=sys.stderr)
        return 2
    try:
        kernels = [vm.resolve(k) for k in args.kernel]
    except vm.KernelError as exc:
        print(f"runner.py: {exc}", file=sys.stderr)
        return 2
    why = vm.missing_tools() if any(not k.is_host for k in kernels) else None
    if why:
        print(f"runner.py: --kernel: {why}", file=sys.stderr)
        return 2
    args.known_entries = inputs.known_failures
    engine = _engine(args)
    shard_text = f"{args.shard[0]}/{args.shard[1]}" if args.shard else None
    run = RunResults(results_file.start_metadata(
        engine=engine.name, engine_version=engine.version(), argv=args.raw_argv,
        options=_run_options(args), shard=shard_text))
    console = Console(len(jobs) * max(len(kernels), 1), args.results_out)
    mode = "nocr (no checkpoint/restore)" if args.nocr else f"engine {engine.name}"
    console.line(f"zdtm: {len(jobs)} run(s), {mode}, iters {args.iters}, pre {args.pre}"
                 + (f", snapshots (restore {args.snaps})" if args.snaps else "")
                 + (", lazy pages" if args.lazy_pages else "")
                 + (", no restore" if args.norst else "")
                 + (f", shard {shard_text}" if shard_text else ""))
    if jobs and not _build(console, jobs):
        return 1
    prepare_process()

    def here() -> list[Result]:
        local: list[Result] = []
        if _run_jobs(jobs, args, engine, console, local):
            raise KeyboardInterrupt  # under --kernel: stop the other kernels too
        return local

    if kernels:
        try:
            vm.run_kernels(kernels, vm.guest_argv(args.raw_argv), console.line, here,
                           keep_going=args.keep_going, logs=args.report,
                           silence=args.engine_timeout + vm.SILENCE_GRACE, done=run.cases)
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
    else:
        interrupted = _run_jobs(jobs, args, engine, console, run.cases)
    with contextlib.suppress(OSError):
        args.work_root.rmdir()  # only when empty: --keep-img leaves its work dirs there
    return _finish(args, inputs, run, len(jobs) * max(len(kernels), 1), console, interrupted)


def _run_jobs(jobs: list[Job], args: argparse.Namespace, engine: Engine, console: Console,
              results: list[Result]) -> bool:
    """Run the jobs, appending to ``results``; True when interrupted (Ctrl-C, SIGTERM)."""
    try:
        if args.parallel > 1:
            _run_parallel(jobs, args, engine, console, results)
        else:
            _run_serial(jobs, args, engine, console, results)
    except KeyboardInterrupt:
        # the lifecycle cleaned up while unwinding; workers were ended by _run_parallel
        console.line(f"interrupted: {len(results)} of {len(jobs)} run(s) finished")
        return True
    finally:
        order = {(j.test.name, j.flavor): i for i, j in enumerate(jobs)}
        results.sort(key=lambda r: order[(r.test, r.flavor)])
    return False


def _finish(args: argparse.Namespace, inputs: Inputs, run: RunResults, expected: int,
            console: Console, interrupted: bool) -> int:
    """Known failures, reports, comparison, closing lines; returns the exit status.

    ``expected``: test x flavour runs selected (times the kernels under --kernel)."""
    known_report = _apply_known(inputs, run.cases)
    results_file.finish_metadata(run.run, selected=expected, interrupted=interrupted)
    if args.report:
        for path in write_reports(run, args.report):
            console.line(f"report: {path}")
    missing = expected - sum(not vm.is_kernel_result(r) for r in run.cases)
    if missing > 0:
        console.line(f"not run: {missing} test x flavour run(s)")
    status = _judge(args, inputs, run.cases, known_report, console,
                    strict=args.strict and not interrupted)
    if args.shard and not expected:
        console.line(f"shard {args.shard[0]}/{args.shard[1]}: no case falls in this shard")
        return 0
    return 130 if interrupted else status


def _apply_known(inputs: Inputs, results: list[Result]) -> known.KnownReport | None:
    if inputs.known_failures is None:
        return None
    return known.apply(inputs.known_failures, results)


def _judge(args: argparse.Namespace, inputs: Inputs, results: list[Result],
           known_report: known.KnownReport | None, console: Console, *, strict: bool
           ) -> int:
    """The comparison with the baseline, the closing lines and the gate's exit status."""
    comparison: Comparison | None = None
    if inputs.baseline is not None:
        comparison = compare(inputs.baseline.cases, results, known_report)
        console.block([f"compared with {args.baseline}:",
                       *(comparison.lines() or ["  no change in outcomes"])])
    elif known_report is not None and known_lines(known_report):
        console.block(known_lines(known_report))
    allowed = allowed_totals(results)
    console.block([*closing_lines(results), *([allowed] if allowed else []), totals(results)])
    decision = verdict(results, strict=strict, comparison=comparison,
                       allow_new_skips=args.allow_new_skips)
    for reason in decision.reasons:
        if reason.startswith("strict:"):
            console.line(reason + " (--no-strict to accept that)")
    return decision.status


def _finished(r: Result, args: argparse.Namespace, console: Console) -> None:
    """A case is done: mark it known (a known failure does not stop the run), show it."""
    if args.known_entries:
        r.known = known.reason_for(args.known_entries, r)
    console.result(r)


def _run_serial(jobs: list[Job], args: argparse.Namespace, engine: Engine,
                console: Console, results: list[Result]) -> None:
    opts = _options(args)
    for job in jobs:
        console.line(f"=== {job.ident}")
        r = with_reruns(functools.partial(run_test, job.test, job.flavor, engine, opts,
                                          progress=console.line),
                        args.rerun_failures, _rerun_line(console, args))
        _finished(r, args, console)
        results.append(r)
        if r.outcome == FAIL and not r.known and not args.keep_going:
            console.line("stopping after the first failure (use --keep-going to go on)")
            break


def _rerun_line(console: Console, args: argparse.Namespace) -> Callable[[Result, int], None]:
    def say(r: Result, n: int) -> None:
        console.line(f"rerun {n}/{args.rerun_failures} of {r.ident} after: {r.headline()}")
    return say


def _run_parallel(jobs: list[Job], args: argparse.Namespace, engine: Engine,
                  console: Console, results: list[Result]) -> None:
    """Up to -p workers at once; an excl job waits for an empty slot set and runs alone.
    The engine is probed here once; each worker's driver takes that probe."""
    probe = engine.probe_result()
    running: dict[threading.Thread, Job] = {}
    lock = threading.Lock()
    stop = threading.Event()
    interrupted = threading.Event()

    def attempt(job: Job) -> Result:
        if interrupted.is_set():
            raise KeyboardInterrupt  # no rerun may start a new worker after an interrupt
        return _run_worker(job, args, console, live, probe)

    def work(job: Job) -> None:
        console.line(f"=== {job.ident}")
        try:
            r = with_reruns(functools.partial(attempt, job), args.rerun_failures,
                            _rerun_line(console, args))
        except KeyboardInterrupt:
            return
        if interrupted.is_set():
            return  # its worker was ended by the interrupt: no result of its own
        with lock:
            results.append(r)
        _finished(r, args, console)
        if r.outcome == FAIL and not r.known and not args.keep_going:
            stop.set()

    live: set[int] = set()
    try:
        _schedule(jobs, args, console, running, work, stop)
    except KeyboardInterrupt:
        interrupted.set()
        raise
    finally:
        # interrupted (Ctrl-C, SIGTERM): workers run in their own sessions, end them here
        _end_workers(sorted(live))
        for t in list(running):
            t.join(timeout=WORKER_GRACE)


def _schedule(jobs: list[Job], args: argparse.Namespace, console: Console,
              running: dict[threading.Thread, Job], work: Callable[[Job], None],
              stop: threading.Event) -> None:
    """Start jobs as slots free up; excl jobs only when nothing else runs."""
    pending = list(jobs)
    while pending or running:
        for t in [t for t in running if not t.is_alive()]:
            del running[t]
        excl_running = any("excl" in j.test.flags for j in running.values())
        if pending and not stop.is_set() and not excl_running:
            job = pending[0]
            excl = "excl" in job.test.flags
            if (excl and not running) or (not excl and len(running) < args.parallel):
                pending.pop(0)
                t = threading.Thread(target=work, args=(job,))
                running[t] = job
                t.start()
                continue
        if stop.is_set() and pending:
            console.line("stopping after the first failure (use --keep-going to go on)")
            pending.clear()
        time.sleep(0.05)


def cmd_compare(args: argparse.Namespace) -> int:
    """``runner.py compare BASE NEW``: 1 on new failures (or new skips of passing cases)."""
    try:
        base, new = results_file.load(args.base), results_file.load(args.new)
        entries = known.load(args.known) if args.known else None
    except (ResultsError, known.KnownError) as exc:
        print(f"runner.py: {exc}", file=sys.stderr)
        return 2
    known_report = known.apply(entries, new.cases) if entries is not None else None
    comparison = compare(base.cases, new.cases, known_report)
    lines = comparison.lines() or ["no change in outcomes"]
    gate = comparison.gating(args.allow_new_skips)
    print("\n".join([f"{args.base} -> {args.new}", *lines,
                     f"baseline: {totals(base.cases)}", f"new:      {totals(new.cases)}",
                     f"gate: {'FAIL' if gate else 'ok'}"
                     + (f" ({len(gate)} reason(s))" if gate else "")]))
    return 1 if gate else 0


def cmd_merge(args: argparse.Namespace) -> int:
    """``runner.py merge A.json B.json ... -o DIR``: one results file and report, judged
    as ``run`` judges an unsharded run (baseline, known failures, strict)."""
    why = check_writable(args.output)
    if why:
        print(f"runner.py: -o: cannot write reports to {why}", file=sys.stderr)
        return 2
    try:
        inputs = _inputs(args)
        merged = results_file.merge([(str(f), results_file.load(f)) for f in args.files])
    except (ResultsError, known.KnownError) as exc:
        print(f"runner.py: {exc}", file=sys.stderr)
        return 2
    known_report = _apply_known(inputs, merged.cases)
    console = Console(len(merged.cases))
    for path in write_reports(merged, args.output):
        console.line(f"report: {path}")
    console.line(f"merged {len(args.files)} file(s)")
    return _judge(args, inputs, merged.cases, known_report, console, strict=args.strict)


def cmd_list(args: argparse.Namespace) -> int:
    """``runner.py list``: every test with flavours, flags and features."""
    try:
        tests = all_tests(args.tests_dir)
    except DescError as exc:
        print(f"runner.py: {exc}", file=sys.stderr)
        return 2
    width = max((len(t.name) for t in tests), default=10)
    for t in tests:
        extra = []
        if t.flags:
            extra.append("flags: " + " ".join(sorted(t.flags)))
        if t.feature:
            extra.append("feature: " + " ".join(t.feature))
        for key in ("opts", "dopts", "ropts"):
            if getattr(t, key):
                extra.append(f"{key}: " + " ".join(getattr(t, key)))
        if t.arch:
            extra.append(f"arch: {t.arch}")
        extra += _start_words(t)
        print(f"{t.name:<{width}}  {' '.join(t.flavors):<8}  {'  '.join(extra)}".rstrip())
        # a test's own problem is listed with it; the listing goes on
        for line in ([f"ERROR {t.problem}"] if t.problem else []) + list(t.notes):
            print(f"{'':<{width}}    {line}")
    print(f"{len(tests)} tests")
    return 0


def _start_words(t: TestDesc) -> list[str]:
    """How the test is started, for the listing (external tests: also where that came from)."""
    if t.kind != "external":
        return [a.split("=", 1)[0] for a in t.start_args()[2:]]
    plan = start_plan(t)
    scripts = [f"{kind}: yes" for kind in ("hook", "checkskip") if script(t, f".{kind}")]
    if plan.problem:
        return [*scripts, f"SKIP: {plan.problem}"]
    args = " ".join(plan.args[2:]) or "(pidfile/outfile only)"
    return [*scripts, f"start: {args} [{plan.source}]"]


def cmd_clean(_args: argparse.Namespace) -> int:
    """``runner.py clean``: built binaries and the runner's work dirs."""
    rc = 0
    for directory in (ROOT_DIR / "zdtm", ROOT_DIR / "flavors"):
        proc = subprocess.run(["make", "-s", "-C", str(directory), "clean"], timeout=120,
                              check=False)
        rc |= proc.returncode
    shutil.rmtree(DEFAULT_WORKROOT, ignore_errors=True)
    return 1 if rc else 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C: stop cleanly, report what finished."""


def _terminate(signum: int, frame: object) -> None:
    # unwind through the lifecycle's cleanup (finally blocks) instead of dying on the spot
    raise Terminated(f"signal {signum}")


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "list": cmd_list, "clean": cmd_clean, "compare": cmd_compare,
    "merge": cmd_merge,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of runner.py."""
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw_argv)
    args.raw_argv = raw_argv  # parallel workers parse the same command line
    why = missing_sources() if args.cmd in ("run", "list", "clean", "_one") else None
    if why is not None:
        print(f"zdtm-run: {why}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    if args.cmd == "_one":
        return _run_one_worker(args.spec)
    try:
        return COMMANDS[args.cmd](args)
    except KeyboardInterrupt:
        print("runner.py: interrupted", file=sys.stderr)  # before anything ran
        return 130


if __name__ == "__main__":
    sys.exit(main())
