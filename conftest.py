"""pytest plugin: every zdtm test x flavour is a pytest item, run by zdtm.lifecycle.

    pytest -n auto                          # everything, in parallel (pytest-xdist)
    pytest zdtm/static/maps06.c::ns         # one test in one flavour

Items are collected from the test sources (zdtm/static/NAME.c, zdtm/transition/NAME.c)
through pytest's non-python test hooks; the node id is ``zdtm/static/NAME.c::FLAVOUR``.

Mode: real C/R with the bundled engine.  While the bundled engine cannot do a C/R cycle
(``python -m engine check --json`` fails, or reports ``dump`` or ``restore`` false), every
zdtm item runs in nocr mode instead: the session header says why, and each item's verbose
status reads ``PASSED (nocr)``.  Items whose needs the engine does not meet (a ``feature:``
of the .desc, or ``flavor_ns``/``flavor_uns``/``pre_dump`` reported false) SKIP with the
reason its check gives.

Shards: ``--zdtm-shard I/N`` keeps the I-th of N deterministic parts of the collected items
(zdtm.shard; balanced by the durations of an earlier results file with
``--zdtm-shard-durations``), so N machines run the whole suite once between them.

JUnit (``--junitxml``): a zdtm item's classname and name are the runner's (``static.maps06``
and the flavour), so runner and pytest histories line up.

Exclusive tests: every item (zdtm or not) holds a shared flock for its run; an item of an
``excl`` test holds it exclusively, so it never runs beside another item on any worker.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _pytest.junitxml import LogXML, xml_key

from zdtm import CHECKOUT_TAG, FLAVORS, ROOT_DIR, plumbing, shard, vm
from zdtm import results as results_file
from zdtm.desc import KINDS, DescError, TestDesc, discover, discover_external
from zdtm.drivers import Engine, make_engine
from zdtm.lifecycle import RunOptions, cr_unavailable, prepare_process, run_test
from zdtm.report import check_writable, classname, write_reports
from zdtm.result import FAIL, HARNESS_ERROR, SKIP, Phase, Result

EXCL_WAIT = 3600.0  # an item waits at most this long for an exclusive slot


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("zdtm", "zdtm checkpoint/restore tests")
    group.addoption("--zdtm-engine", choices=("bundled", "criu", "nocr"), default="bundled",
                    help="engine for the zdtm items (default: bundled)")
    group.addoption("--zdtm-criu-bin", default=None, help="criu binary for --zdtm-engine=criu")
    group.addoption("--zdtm-flavors", default=",".join(FLAVORS),
                    help="comma-separated flavours to collect (default: h,ns,uns)")
    group.addoption("--zdtm-iters", type=int, default=3,
                    help="C/R iterations per item (default: 3)")
    group.addoption("--zdtm-pre", type=int, default=0, help="pre-dumps per iteration")
    group.addoption("--zdtm-snaps", choices=("last", "each"), default=None,
                    help="the --zdtm-pre steps are restorable full dumps (restore last/each)")
    group.addoption("--zdtm-nocr", action="store_true",
                    help="no checkpoint/restore: start, check, stop")
    group.addoption("--zdtm-keep-img", action="store_true",
                    help="keep each item's work dir and images")
    group.addoption("--zdtm-strict", action=argparse.BooleanOptionalAction, default=True,
                    help="fail the session when every zdtm item was skipped (default: on)")
    group.addoption("--zdtm-report", default=None, metavar="DIR",
                    help="write the zdtm items' results.json, junit.xml and summary.html "
                         "to DIR (as runner.py --report; mergeable with runner.py merge)")
    group.addoption("--zdtm-shard", default=None, metavar="I/N",
                    help="run only the I-th of N deterministic parts of the items")
    group.addoption("--zdtm-shard-durations", default=None, metavar="RESULTS.json",
                    help="an earlier results file whose durations balance the shards")
    group.addoption("--zdtm-kernel", action="append", default=[], metavar="IMAGE",
                    help="run the zdtm items under this kernel (vmlinuz, /boot release or "
                         "'host') booted with virtme-ng; repeatable, items are FLAVOUR@RELEASE")
    group.addoption("--zdtm-tolerate-taint", action="store_true",
                    help="a kernel taint already present at start is no failure")
    group.addoption("--zdtm-tests-dir", default=None, metavar="DIR",
                    help="also collect another project's zdtm suite in DIR (DIR/NAME::FLAVOUR)")


class _Mode:
    """The engine the session's zdtm items use, decided once per process."""

    def __init__(self, config: pytest.Config) -> None:
        name = "nocr" if config.getoption("--zdtm-nocr") else config.getoption("--zdtm-engine")
        self.engine: Engine = make_engine(name, criu_bin=config.getoption("--zdtm-criu-bin"))
        self.fallback: str | None = None
        self.options = RunOptions(iters=max(config.getoption("--zdtm-iters"), 1),
                                  pre=config.getoption("--zdtm-pre"),
                                  snaps=config.getoption("--zdtm-snaps"),
                                  keep_img=config.getoption("--zdtm-keep-img"),
                                  tolerate_taint=config.getoption("--zdtm-tolerate-taint"))
        if name == "bundled":
            # a plain dump + restore cycle decides; --zdtm-pre etc. SKIP per item instead
            why = cr_unavailable(self.engine, RunOptions())
            if why:
                # no C/R cycle possible yet: run what can run (nocr), and say so
                self.fallback = why
                self.engine = make_engine("nocr")
        if self.fallback:
            self.options.notes.append(f"nocr: {self.fallback}")

    def header(self) -> str:
        if self.fallback:
            return ("zdtm: no C/R cycle possible yet -> zdtm items run in NOCR mode "
                    f"(no checkpoint/restore): {self.fallback}")
        if self.engine.name == "nocr":
            return "zdtm: nocr mode (no checkpoint/restore), as requested"
        return f"zdtm: engine {self.engine.name}, real checkpoint/restore"


_MODE_KEY = pytest.StashKey[_Mode]()


def _mode(config: pytest.Config) -> _Mode:
    if _MODE_KEY not in config.stash:
        config.stash[_MODE_KEY] = _Mode(config)
    return config.stash[_MODE_KEY]


def pytest_configure(config: pytest.Config) -> None:
    bad = [f for f in config.getoption("--zdtm-flavors").split(",") if f and f not in FLAVORS]
    if bad:
        raise pytest.UsageError(f"--zdtm-flavors: unknown flavour(s) {bad}; known: "
                                + ",".join(FLAVORS))
    try:
        config.stash[_KERNELS_KEY] = [vm.resolve(k) for k in config.getoption("--zdtm-kernel")]
    except vm.KernelError as exc:
        raise pytest.UsageError(str(exc)) from None
    why = vm.missing_tools() if config.stash[_KERNELS_KEY] else None
    if why:
        raise pytest.UsageError(f"--zdtm-kernel: {why}")
    config.addinivalue_line("markers", "excl: zdtm test that must run alone")
    spec = config.getoption("--zdtm-shard")
    if spec:
        try:
            shard.parse(spec)
        except ValueError as exc:
            raise pytest.UsageError(f"--zdtm-shard: {exc}") from None
    report = config.getoption("--zdtm-report")
    if report and not hasattr(config, "workerinput"):
        why = check_writable(Path(report))
        if why:
            raise pytest.UsageError(f"--zdtm-report: cannot write reports to {why}")
    ext = config.getoption("--zdtm-tests-dir")
    if ext:
        suite = ExternalSuite(Path(ext))
        # a plugin, not this conftest's hook: conftest hooks only see paths below the repo
        config.pluginmanager.register(suite, "zdtm-external-suite")
        config.args.append(str(suite.directory))
    # restored trees re-parent to the nearest subreaper: this (worker) process
    prepare_process()


def pytest_report_header(config: pytest.Config) -> str:
    return _mode(config).header()


_TESTS_BY_SOURCE: dict[Path, TestDesc] | None = None


def _tests_by_source() -> dict[Path, TestDesc]:
    global _TESTS_BY_SOURCE
    if _TESTS_BY_SOURCE is None:
        _TESTS_BY_SOURCE = {t.source: t for t in discover() if t.source is not None}
    return _TESTS_BY_SOURCE


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    # a test whose descriptor cannot be read is collected too: its items fail naming why
    if (file_path.suffix == ".c" and file_path.parent.name in KINDS
            and file_path.parent.parent == ROOT_DIR / "zdtm"
            and file_path.resolve() in _tests_by_source()):
        return ZdtmFile.from_parent(parent, path=file_path)
    return None


def _shard_key(item: pytest.Item) -> tuple[str, str]:
    if isinstance(item, ZdtmItem):
        return item.test.name, item.flavor
    return item.nodeid, ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """--zdtm-shard: keep this shard's items (every worker computes the same split)."""
    spec = config.getoption("--zdtm-shard")
    if not spec:
        return
    seconds = None
    path = config.getoption("--zdtm-shard-durations")
    if path:
        try:
            seconds = results_file.durations(results_file.load(Path(path)))
        except results_file.ResultsError as exc:
            raise pytest.UsageError(f"--zdtm-shard-durations: {exc}") from None
    keys = [_shard_key(item) for item in items]
    chosen = set(shard.select(keys, shard.parse(spec), seconds))
    dropped = [item for item, key in zip(items, keys, strict=True) if key not in chosen]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item, key in zip(items, keys, strict=True) if key in chosen]


class _JunitNames:
    """Gives zdtm items the runner's JUnit classname and name (before LogXML records them)."""

    def __init__(self, xml: LogXML) -> None:
        self.xml = xml

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        case = _zdtm_case(report)
        if case is not None:
            reporter = self.xml.node_reporter(report)
            reporter.add_attribute("classname", classname(case[0]))
            reporter.add_attribute("name", case[1])


def _zdtm_case(report: pytest.TestReport) -> tuple[str, str] | None:
    """(test name, flavour) of a zdtm item's report (set by pytest_runtest_makereport)."""
    case = getattr(report, "zdtm_case", None)
    return (case[0], case[1]) if case else None


class _Strict:
    """--zdtm-strict: a session whose zdtm items were all skipped fails (nothing was tested).

    Counted where the reports arrive (the xdist controller, or the only process)."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if _zdtm_case(report) is not None and (report.when == "call"
                                               or report.outcome != "passed"):
            self.outcomes.setdefault(report.nodeid, report.outcome)

    def refusal(self) -> str | None:
        if self.outcomes and all(o == "skipped" for o in self.outcomes.values()):
            return (f"zdtm strict: nothing ran: all {len(self.outcomes)} zdtm item(s) skipped "
                    "(--no-zdtm-strict to accept that)")
        return None

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.refusal() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        why = self.refusal()
        if why:
            terminalreporter.write_line(why, red=True)


class _Results:
    """--zdtm-report: the zdtm items' Results, collected where the reports arrive, written
    as runner.py writes them (results.json, junit.xml, summary.html)."""

    def __init__(self, config: pytest.Config, directory: Path) -> None:
        self.directory = directory
        engine = "nocr" if config.getoption("--zdtm-nocr") else config.getoption("--zdtm-engine")
        version = make_engine(engine, criu_bin=config.getoption("--zdtm-criu-bin")).version()
        options = {k: v for k, v in vars(config.option).items() if k.startswith("zdtm_")}
        self.run = results_file.RunResults(results_file.start_metadata(
            engine=engine, engine_version=version, options=options,
            argv=[str(a) for a in config.invocation_params.args],
            shard=config.getoption("--zdtm-shard")))
        self.run.run["command"][0] = "pytest"

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "zdtm_result", None)
        if data is not None:
            self.run.cases.append(Result.from_dict(json.loads(data)))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # in the runner's order; under xdist the reports arrive as the workers finish
        self.run.cases.sort(key=lambda r: (r.test, FLAVORS.index(r.flavor)
                                           if r.flavor in FLAVORS else len(FLAVORS),
                                           r.kernel or ""))
        selected = sum(1 for i in session.items if isinstance(i, ZdtmItem))
        results_file.finish_metadata(self.run.run, selected=selected or len(self.run.cases),
                                     interrupted=session.shouldstop is not False)
        write_reports(self.run, self.directory)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    """Mark a zdtm item's reports with its case, and attach its Result to the call report
    (plain data: reports cross from xdist workers to the controller)."""
    outcome = yield
    if isinstance(item, ZdtmItem):
        report = outcome.get_result()
        kernel = item.kernel.release if item.kernel else None
        report.zdtm_case = [item.test.name, f"{item.flavor}@{kernel}" if kernel else item.flavor]
        if call.when == "call" and item.result is not None:
            report.zdtm_result = json.dumps(item.result.to_dict())


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    report = config.getoption("--zdtm-report")
    if report and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Results(config, Path(report)), "zdtm-results")
    xml = config.stash.get(xml_key, None)
    if xml is not None:
        config.pluginmanager.register(_JunitNames(xml), "zdtm-junit-names")
    if config.getoption("--zdtm-strict") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Strict(), "zdtm-strict")


class ExternalSuite:
    """Collects the tests of --zdtm-tests-dir DIR (zdtm.desc.discover_external)."""

    def __init__(self, directory: Path) -> None:
        try:
            tests = discover_external(directory)
        except DescError as exc:  # DIR itself is wrong: a usage error, nothing runs
            raise pytest.UsageError(f"--zdtm-tests-dir: {exc}") from None
        self.directory = directory.resolve()
        self.tests = {t.binary: t for t in tests}

    def pytest_collect_file(self, file_path: Path,
                            parent: pytest.Collector) -> pytest.Collector | None:
        test = self.tests.get(file_path.resolve())
        if test is None:
            return None
        return ZdtmFile.from_parent(parent, path=file_path, test=test)


class ZdtmFile(pytest.File):
    """A test source (or an external suite's binary); one item per flavour it declares."""

    def __init__(self, *, test: TestDesc | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.test = test

    def collect(self) -> Iterator[pytest.Item]:
        test = self.test or _tests_by_source()[self.path.resolve()]
        wanted = [f for f in self.config.getoption("--zdtm-flavors").split(",") if f]
        kernels: list[vm.Kernel | None] = list(self.config.stash[_KERNELS_KEY]) or [None]
        for flavor in test.flavors:
            if flavor not in wanted:
                continue
            for k in kernels:
                name = f"{flavor}@{k.release}" if k else flavor
                yield ZdtmItem.from_parent(self, name=name, test=test, flavor=flavor,
                                           kernel=k)


class ZdtmFailure(Exception):
    """A zdtm run that failed; carries its Result for the report."""

    def __init__(self, result: Result) -> None:
        super().__init__(result.summary())
        self.result = result


class ZdtmItem(pytest.Item):
    """One zdtm test in one flavour."""

    def __init__(self, *, test: TestDesc, flavor: str, kernel: vm.Kernel | None = None,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.test = test
        self.flavor = flavor
        self.kernel = kernel  # --zdtm-kernel: the result comes from that kernel's VM
        if "excl" in test.flags:
            self.add_marker("excl")
        self.result: Result | None = None

    def runtest(self) -> None:
        if "noauto" in self.test.flags:
            pytest.skip("flagged noauto: run it with ./runner.py run -t " + self.test.name)
        mode = _mode(self.config)
        progress: list[str] = []
        if self.kernel is not None and not self.kernel.is_host:
            self.result = r = _GuestBatch.result_for(self, progress)
        else:
            self.result = r = run_test(self.test, self.flavor, mode.engine, mode.options,
                                       progress=progress.append)
            r.kernel = self.kernel.release if self.kernel else None
        # the phase timings show with the failure (or with -rA)
        self.add_report_section("call", "zdtm", "\n".join(progress))
        for note in r.notes:
            self.user_properties.append(("note", note))
        for allowed in r.allowed:
            self.user_properties.append(("allowed deviation", allowed))
        if r.outcome == SKIP:
            pytest.skip(f"{r.phase}: {r.message}")
        if r.outcome == FAIL:
            raise ZdtmFailure(r)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        if isinstance(excinfo.value, ZdtmFailure):
            r = excinfo.value.result
            lines = [f"{r.ident}: {r.phase}: {r.kind}: {r.message}", *r.details]
            if r.notes:
                lines.append("notes: " + "; ".join(r.notes))
            lines += [f"allowed deviation: {a}" for a in r.allowed]
            if r.workdir:
                lines.append(f"work dir kept: {r.workdir}")
            return "\n".join(lines)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"zdtm {self.test.name} [{self.flavor}]"


_KERNELS_KEY = pytest.StashKey[list[vm.Kernel]]()
#: --zdtm-kernel: per release, the guest's results and console lines
_GUEST_KEY = pytest.StashKey[dict[str, tuple[list[Result], list[str]]]]()


class _GuestBatch:
    """Under --zdtm-kernel, the first item of a kernel boots it once and runs the zdtm
    items of this session for that kernel through the runner inside; every item then
    takes its own result (under pytest-xdist each worker would boot and run them all:
    use --zdtm-kernel without -n). A kernel problem (no boot, hang, taint) fails the
    items it concerns, with its console tail or kernel log."""

    @classmethod
    def result_for(cls, item: ZdtmItem, progress: list[str]) -> Result:
        assert item.kernel is not None
        release = item.kernel.release
        done = item.config.stash.setdefault(_GUEST_KEY, {})
        if release not in done:
            done[release] = cls._run(item.session, item.kernel)
        results, lines = done[release]
        progress += lines
        kernel_problems = [r for r in results if vm.is_kernel_result(r) and r.outcome == FAIL]
        mine = next((r for r in results if (r.test, r.flavor) == (item.test.name, item.flavor)
                     and not vm.is_kernel_result(r)), None)
        if mine is None:
            mine = Result(item.test.name, item.flavor, _mode(item.config).engine.name,
                          kernel=release)
            mine.fail(Phase.START, HARNESS_ERROR, "no result from the guest")
        for k in kernel_problems:
            mine.fail(k.phase or Phase.CHECK, k.kind or HARNESS_ERROR, f"{k.test}: {k.message}",
                      k.details)
        return mine

    @staticmethod
    def _run(session: pytest.Session, kernel: vm.Kernel) -> tuple[list[Result], list[str]]:
        config = session.config
        items = [i for i in session.items if isinstance(i, ZdtmItem) and i.kernel == kernel]
        argv = ["run", "--keep-going", "--iters", str(max(config.getoption("--zdtm-iters"), 1)),
                "--pre", str(config.getoption("--zdtm-pre")),
                "-f", ",".join(sorted({i.flavor for i in items}))]
        for name in sorted({i.test.name for i in items}):
            argv += ["-t", name]
        if config.getoption("--zdtm-tolerate-taint"):
            argv.append("--tolerate-taint")
        if config.getoption("--zdtm-tests-dir"):
            argv += ["--tests-dir", config.getoption("--zdtm-tests-dir")]
        mode = _mode(config)
        if mode.engine.name == "nocr":
            argv.append("--nocr")
        else:
            argv += ["--engine", mode.engine.name]
            if config.getoption("--zdtm-criu-bin"):
                argv += ["--criu-bin", config.getoption("--zdtm-criu-bin")]
        lines: list[str] = []
        run = vm.run_guest(kernel, argv, lines.append,
                           silence=mode.options.engine_timeout + vm.SILENCE_GRACE)
        lines += vm.timing_lines([run], run.results)
        return run.results, lines


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config
                             ) -> tuple[str, str, str] | None:
    """Show the nocr switch on every zdtm item's status: ``PASSED (nocr)``."""
    if (report.when == "call" and report.passed and "::" in report.nodeid
            and report.nodeid.split("::")[0].endswith(".c")
            and any(k == "note" and str(v).startswith("nocr")
                    for k, v in report.user_properties)):
        return "passed", "n", "PASSED (nocr)"
    if report.when == "call" and report.passed and any(
            k == "allowed deviation" for k, _ in report.user_properties):
        return "passed", "a", "PASSED (allowed deviations)"
    return None


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Count the engine's allowed deviations apart from plain passes."""
    runs = [r for r in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get(
        "failed", []) if any(k == "allowed deviation" for k, _ in r.user_properties)]
    if runs:
        total = sum(1 for r in runs for k, _ in r.user_properties if k == "allowed deviation")
        terminalreporter.write_line(f"zdtm: {total} allowed deviation(s) in {len(runs)} run(s)")


def _lock_path(kind: str) -> Path:
    return Path(tempfile.gettempdir()) / f"zdtm-{kind}-{CHECKOUT_TAG}.lock"


def _flock(kind: str, op: int, deadline: float) -> int:
    """An fd holding flock ``op`` on the ``kind`` lock file, polled until ``deadline``."""
    try:
        return plumbing.flock_until(_lock_path(kind), op, deadline)
    except TimeoutError:
        pytest.fail(f"no run slot in {EXCL_WAIT:.0f}s ({_lock_path(kind)})")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Shared run lock for every item, exclusive for ``excl`` zdtm tests (across workers).

    A waiting exclusive item first holds the gate lock, which new shared items must pass
    through, so a steady stream of ordinary items cannot starve it.
    """
    deadline = time.monotonic() + EXCL_WAIT
    if isinstance(item, ZdtmItem) and "excl" in item.test.flags:
        gate = _flock("gate", fcntl.LOCK_EX, deadline)
        try:
            run = _flock("run", fcntl.LOCK_EX, deadline)
        finally:
            os.close(gate)
    else:
        gate = _flock("gate", fcntl.LOCK_SH, deadline)
        try:
            run = _flock("run", fcntl.LOCK_SH, deadline)
        finally:
            os.close(gate)
    try:
        yield
    finally:
        os.close(run)
