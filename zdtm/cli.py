"""The runner's command line (runner.py): run, list, clean.

Needs only the standard library and PyYAML, so it runs on a fresh machine.  With ``-p N``
each test x flavour runs in its own worker process (``python -m zdtm.cli _one``), so leak
checks and cleanup of one run never see another's processes; ``excl`` tests run alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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

from zdtm import CHECKOUT_TAG, FLAVORS, ROOT_DIR, tasks, vm
from zdtm.build import BuildError, ensure_built
from zdtm.desc import DescError, TestDesc, discover, discover_external, select
from zdtm.engines import Engine, make_engine
from zdtm.external import script, start_plan
from zdtm.lifecycle import ENGINE_TIMEOUT, SNAPSHOT_TIMEOUT, RunOptions, prepare_process, run_test
from zdtm.report import totals, write_reports
from zdtm.result import FAIL, HARNESS_ERROR, TIMEOUT, Result

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
    run.add_argument("-x", "--exclude", metavar="REGEX", help="skip tests matching REGEX")
    run.add_argument("-f", "--flavors", type=_flavor_list, metavar="h,ns,uns",
                     help="flavours to run (default: every flavour a test declares)")
    run.add_argument("--iters", type=_at_least_one, default=1, help="C/R iterations (default 1)")
    run.add_argument("--pre", type=_positive, default=0, help="pre-dumps per iteration")
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
                     help=f"keep work dirs and images under {DEFAULT_WORKROOT}")
    run.add_argument("--report", metavar="DIR", type=Path,
                     help="write junit.xml (and summary.html with jinja2) to DIR")
    run.add_argument("--tests-dir", metavar="DIR", type=Path,
                     help="also run zdtm-protocol binaries from DIR (named ext/NAME)")
    run.add_argument("--engine-timeout", type=float, default=ENGINE_TIMEOUT,
                     help=f"deadline of each engine step in seconds ({ENGINE_TIMEOUT:.0f})")
    run.add_argument("--kernel", action="append", default=[], metavar="IMAGE",
                     help="run the selection under this kernel (a vmlinuz, a /boot release "
                          "or 'host'), booted with virtme-ng; repeatable")
    run.add_argument("--results-out", type=Path, help=argparse.SUPPRESS)  # zdtm.vm guests
    run.add_argument("--tolerate-taint", action="store_true",
                     help="a kernel taint already present at start is no failure "
                          "(new taint bits still are)")

    ls = sub.add_parser("list", help="list tests with flavours and flags")
    ls.add_argument("--tests-dir", metavar="DIR", type=Path)

    sub.add_parser("clean", help=f"remove built binaries and {DEFAULT_WORKROOT} (this "
                                 "checkout's work dirs)")

    one = sub.add_parser("_one", help=argparse.SUPPRESS)  # internal: parallel worker
    one.add_argument("spec")
    return p


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
    return RunOptions(iters=max(args.iters, 1), pre=args.pre, lazy=args.lazy_pages,
                      norst=args.norst, keep_img=args.keep_img, workroot=DEFAULT_WORKROOT,
                      engine_timeout=args.engine_timeout, tolerate_taint=args.tolerate_taint)


def _engine(args: argparse.Namespace) -> Engine:
    return make_engine("nocr" if args.nocr else args.engine, criu_bin=args.criu_bin)


class Console:
    """Thread-safe console lines; each result also goes to `results_out` (JSON lines)."""

    def __init__(self, results_out: Path | None = None) -> None:
        self.lock = threading.Lock()
        self.results_out = results_out

    def line(self, text: str) -> None:
        """Print one line now."""
        with self.lock:
            print(text, flush=True)

    def record(self, r: Result) -> None:
        """Append a result to `results_out` as soon as it is known (a VM that hangs
        later still gives back what it ran)."""
        if self.results_out is not None:
            with self.lock, open(self.results_out, "a", encoding="utf-8") as f:
                f.write(json.dumps(r.to_dict()) + "\n")


def _worker_deadline(job: Job, opts: RunOptions) -> float:
    """Generous upper bound of one run; every phase inside has its own deadline."""
    per_iter = (opts.pre + 2) * opts.engine_timeout + 2 * SNAPSHOT_TIMEOUT + 60
    return 3 * job.test.timeout + opts.iters * per_iter + 600


def _run_worker(job: Job, args: argparse.Namespace, console: Console,
                live: set[int]) -> Result:
    """Run one job in a child process; its progress lines are echoed as they come.

    ``live`` holds the pids of running workers, for the interrupt handler of the caller.
    """
    spec = json.dumps({"test": job.test.name, "flavor": job.flavor, "argv": args.raw_argv})
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
                console.line(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    limit = _worker_deadline(job, _options(args))
    result = Result(test=job.test.name, flavor=job.flavor,
                    engine="nocr" if args.nocr else args.engine)
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        _end_workers([proc.pid])
        result.fail("check", TIMEOUT, f"worker gave no result in {limit:.0f}s, killed")
        return result
    finally:
        live.discard(proc.pid)
    reader.join(timeout=10.0)
    if found:
        return found[-1]
    result.fail("check", HARNESS_ERROR, f"worker exited with status {rc} and no result")
    return result


def _end_workers(pids: list[int]) -> None:
    """SIGTERM workers so their cleanup runs (test trees, work dirs), then SIGKILL the rest.

    A worker is the subreaper of its test tree: whatever it could not clean up hangs below
    it and dies with it.
    """
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    tasks.kill_tree(tasks.wait_gone(pids, WORKER_GRACE), 10.0)


def _run_one_worker(spec_text: str) -> int:
    """Internal ``_one`` command: run a single job, print its result as JSON."""
    spec = json.loads(spec_text)
    args = build_parser().parse_args(spec["argv"])
    tests = {t.name: t for t in all_tests(args.tests_dir)}
    prepare_process()
    result = run_test(tests[spec["test"]], spec["flavor"], _engine(args), _options(args),
                      progress=lambda line: print(line, flush=True))
    print(RESULT_PREFIX + json.dumps(result.to_dict()), flush=True)
    return 0


def _print_result(console: Console, r: Result) -> None:
    console.record(r)
    console.line(r.summary())
    if r.outcome == FAIL:
        for d in r.details[:60]:
            console.line(f"    {d}")
        if len(r.details) > 60:
            console.line(f"    ... {len(r.details) - 60} more lines")
    if r.workdir:
        console.line(f"    work dir kept: {r.workdir}")


def cmd_run(args: argparse.Namespace) -> int:
    """``runner.py run``: run the selected tests; 0 when nothing failed."""
    if not (args.test or args.tests_regex or args.all):
        print("runner.py run: nothing selected (use -t NAME, -T REGEX or -a)", file=sys.stderr)
        return 2
    if args.nocr and (args.norst or args.lazy_pages or args.pre):
        print("runner.py run: --nocr does no C/R: it excludes --norst, --lazy-pages and --pre",
              file=sys.stderr)
        return 2
    include = "|".join(f"(?:{r})" for r in args.tests_regex) or None
    try:
        tests = select(all_tests(args.tests_dir), names=args.test, include=include,
                       exclude=args.exclude, all_tests=args.all)
    except (DescError, re.error) as exc:
        print(f"runner.py: {exc}", file=sys.stderr)
        return 2
    jobs = plan(tests, args.flavors)
    if not jobs:
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
    console = Console(args.results_out)
    engine = _engine(args)
    mode = "nocr (no checkpoint/restore)" if args.nocr else f"engine {engine.name}"
    console.line(f"zdtm: {len(jobs)} run(s), {mode}, iters {args.iters}, pre {args.pre}"
                 + (", lazy pages" if args.lazy_pages else "")
                 + (", no restore" if args.norst else ""))
    try:
        ensure_built(tests, with_nsinit=any(j.flavor != "h" for j in jobs))
    except BuildError as exc:
        console.line(f"FAIL build: {exc}")
        return 1
    prepare_process()

    def here() -> list[Result]:
        return (_run_parallel(jobs, args, console) if args.parallel > 1
                else _run_serial(jobs, args, engine, console))

    results = (vm.run_kernels(kernels, vm.guest_argv(args.raw_argv), console.line, here,
                              keep_going=args.keep_going, logs=args.report,
                              silence=args.engine_timeout + vm.SILENCE_GRACE)
               if kernels else here())
    with contextlib.suppress(OSError):
        DEFAULT_WORKROOT.rmdir()  # only when empty: --keep-img leaves its work dirs there
    if args.report:
        for path in write_reports(results, args.report):
            console.line(f"report: {path}")
    missing = len(jobs) * max(len(kernels), 1) - sum(not vm.is_kernel_result(r) for r in results)
    if missing > 0:
        console.line(f"not run: {missing} test x flavour run(s)")
    console.line(totals(results))
    return 1 if any(r.outcome == FAIL for r in results) else 0


def _run_serial(jobs: list[Job], args: argparse.Namespace, engine: Engine,
                console: Console) -> list[Result]:
    results = []
    opts = _options(args)
    for job in jobs:
        console.line(f"=== {job.ident}")
        r = run_test(job.test, job.flavor, engine, opts, progress=console.line)
        _print_result(console, r)
        results.append(r)
        if r.outcome == FAIL and not args.keep_going:
            console.line("stopping after the first failure (use --keep-going to go on)")
            break
    return results


def _run_parallel(jobs: list[Job], args: argparse.Namespace,
                  console: Console) -> list[Result]:
    """Up to -p workers at once; an excl job waits for an empty slot set and runs alone."""
    results: list[Result] = []
    running: dict[threading.Thread, Job] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def work(job: Job) -> None:
        console.line(f"=== {job.ident}")
        r = _run_worker(job, args, console, live)
        with lock:
            results.append(r)
        _print_result(console, r)
        if r.outcome == FAIL and not args.keep_going:
            stop.set()

    live: set[int] = set()
    try:
        _schedule(jobs, args, console, running, work, stop)
    finally:
        # interrupted (Ctrl-C, SIGTERM): workers run in their own sessions, end them here
        _end_workers(sorted(live))
    order = {(j.test.name, j.flavor): i for i, j in enumerate(jobs)}
    return sorted(results, key=lambda r: order[(r.test, r.flavor)])


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


def _terminate(signum: int, frame: object) -> None:
    # unwind through the lifecycle's cleanup (finally blocks) instead of dying on the spot
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of runner.py."""
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw_argv)
    args.raw_argv = raw_argv  # parallel workers parse the same command line
    signal.signal(signal.SIGTERM, _terminate)
    if args.cmd == "run":
        return cmd_run(args)
    if args.cmd == "list":
        return cmd_list(args)
    if args.cmd == "clean":
        return cmd_clean(args)
    return _run_one_worker(args.spec)


if __name__ == "__main__":
    sys.exit(main())

