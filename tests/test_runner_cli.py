"""runner.py end to end with small zdtm-protocol programs (--tests-dir) and its parser."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_support import ROOT, fake_suite, runner
from zdtm import plumbing
from zdtm.cli import DEFAULT_WORKROOT, build_parser, plan
from zdtm.desc import TestDesc

BEHAVIOURS = {
    "pass": ("PASS", "{'flavor': 'h ns uns'}"),
    "fail": ("FAIL", "{'flavor': 'h'}"),
    "nostart": ("NOSTART", "{'flavor': 'h', 'timeout': 2}"),
    "hang": ("HANG", "{'flavor': 'h ns', 'timeout': 2}"),
    "escape": ("ESCAPE", "{'flavor': 'h'}"),
    "alone": ("PASS", "{'flavor': 'h', 'flags': 'excl'}"),
    "skipper": ("SKIP", "{'flavor': 'h ns'}"),
    # one per runner mode of the SIGTERM test, so parallel test workers never share names
    "term1": ("HANG", "{'flavor': 'h', 'timeout': 30}"),
    "term2": ("HANG", "{'flavor': 'h', 'timeout': 30}"),
}


@pytest.fixture(scope="module")
def fake_dir() -> Iterator[Path]:
    """A --tests-dir with one fake test binary per behaviour (and its .desc)."""
    with fake_suite(BEHAVIOURS, "zdtm-fake-") as d:
        yield d


def _no_leftovers(fake_dir: Path) -> None:
    """No process runs a binary of the fake test dir any more."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                exe = os.readlink(f"/proc/{entry}/exe")
            except OSError:
                continue
            assert not exe.startswith(str(fake_dir)), f"process {entry} ({exe}) left behind"


def test_pass_in_every_flavour(fake_dir: Path) -> None:
    res = runner("run", "--tests-dir", str(fake_dir), "-t", "ext/pass", "--nocr")
    assert res.returncode == 0, res.stdout
    for flavor in ("h", "ns", "uns"):
        assert f"PASS ext/pass [{flavor}]" in res.stdout
        assert f"ext/pass [{flavor}] iter 1/1: checks ok" in res.stdout
    assert res.stdout.rstrip().endswith("3 passed, 0 failed, 0 skipped")
    _no_leftovers(fake_dir)


def test_runner_under_nice_fails_no_test_in_uns() -> None:
    """Under nice 10 the uns tree has no CAP_SYS_NICE for the host's priorities: task_attrs
    (per-thread nice values) only raises its nice and still passes there."""
    res = runner("run", "-t", "static/task_attrs", "-f", "uns", "--nocr", nice=10)
    assert res.returncode == 0, res.stdout
    assert "1 passed, 0 failed" in res.stdout, res.stdout


def test_test_fail_is_reported_with_its_line(fake_dir: Path) -> None:
    res = runner("run", "--tests-dir", str(fake_dir), "-t", "ext/fail", "--nocr")
    assert res.returncode == 1
    assert ("FAIL ext/fail [h] stop: test FAIL: FAIL: fake_zdtm.c:" in res.stdout), res.stdout
    assert "0 passed, 1 failed, 0 skipped" in res.stdout
    _no_leftovers(fake_dir)


def test_start_timeout_kills_the_starter(fake_dir: Path) -> None:
    res = runner("run", "--tests-dir", str(fake_dir), "-t", "ext/nostart", "--nocr")
    assert res.returncode == 1
    assert "FAIL ext/nostart [h] start: timeout: not ready after 2s" in res.stdout, res.stdout
    _no_leftovers(fake_dir)


def test_stop_timeout_then_cleanup(fake_dir: Path) -> None:
    res = runner("run", "--tests-dir", str(fake_dir), "-t", "ext/hang", "--nocr",
                 "--keep-going")
    assert res.returncode == 1
    for flavor in ("h", "ns"):
        assert f"FAIL ext/hang [{flavor}] stop: timeout:" in res.stdout, res.stdout
    assert "0 passed, 2 failed, 0 skipped" in res.stdout
    _no_leftovers(fake_dir)


def test_skip_at_setup_is_a_skip(fake_dir: Path) -> None:
    res = runner("run", "--tests-dir", str(fake_dir), "-t", "ext/skipper", "--nocr",
                 "--no-strict")  # strict (the default) fails a run in which nothing ran
    assert res.returncode == 0, res.stdout
    for flavor in ("h", "ns"):  # ns: nsinit passes the starter's 77 on
        assert (f"SKIP ext/skipper [{flavor}] (test says: SKIP: fake_zdtm.c:"
                in res.stdout), res.stdout
    assert "0 passed, 0 failed, 2 skipped" in res.stdout


def test_escaped_grandchild_is_killed(fake_dir: Path) -> None:
    res = runner("run", "--tests-dir", str(fake_dir), "-t", "ext/escape", "--nocr")
    # the grandchild in its own session is part of the tree and is frozen and compared;
    # after the test it must be gone
    assert "PASS ext/escape [h]" in res.stdout, res.stdout
    _no_leftovers(fake_dir)


def test_keep_going_and_first_failure_stop(fake_dir: Path) -> None:
    res = runner("run", "--tests-dir", str(fake_dir), "-t", "ext/fail", "-t", "ext/pass",
                 "-f", "h", "--nocr")
    assert "stopping after the first failure" in res.stdout
    assert "0 passed, 1 failed, 0 skipped" in res.stdout
    res = runner("run", "--tests-dir", str(fake_dir), "-t", "ext/fail", "-t", "ext/pass",
                 "-f", "h", "--nocr", "--keep-going")
    assert "1 passed, 1 failed, 0 skipped" in res.stdout


def test_parallel_with_excl_and_report(fake_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    res = runner("run", "--tests-dir", str(fake_dir), "-t", "ext/pass", "-t", "ext/alone",
                 "-t", "ext/fail", "--nocr", "-p", "2", "--keep-going",
                 "--report", str(report))
    assert res.returncode == 1
    assert "4 passed, 1 failed, 0 skipped" in res.stdout, res.stdout
    lines = res.stdout.splitlines()
    # the excl test ran alone: between its start and its result no other run started
    start = lines.index("=== ext/alone [h]")
    end = next(i for i, ln in enumerate(lines) if ln.startswith("PASS ext/alone [h]"))
    assert not any(ln.startswith("=== ") for ln in lines[start + 1:end]), res.stdout
    suite = ET.parse(report / "junit.xml").getroot()
    assert suite.get("tests") == "5" and suite.get("failures") == "1"
    failure = suite.find("testcase[@classname='ext.fail']/failure")
    assert failure is not None and "test FAIL" in (failure.get("message") or "")
    _no_leftovers(fake_dir)


def test_criu_engine_skips_with_criu_message(fake_dir: Path) -> None:
    criu = shutil.which("criu")
    res = runner("run", "--tests-dir", str(fake_dir), "-t", "ext/pass", "-f", "h",
                 "--engine", "criu")
    if criu is None:
        assert "SKIP ext/pass [h] (criu engine unavailable: criu not found" in res.stdout
        return
    check = subprocess.run([criu, "check"], capture_output=True, text=True, timeout=60,
                           check=False)
    if check.returncode != 0:
        last = [ln for ln in (check.stdout + check.stderr).splitlines() if ln.strip()][-1]
        assert "SKIP ext/pass [h] (criu engine unavailable: criu check failed:" in res.stdout
        assert last.strip() in res.stdout
        assert "0 passed, 0 failed, 1 skipped" in res.stdout
    else:
        assert "SKIP ext/pass [h] (criu engine unavailable" not in res.stdout


def test_unknown_test_name_is_an_error() -> None:
    res = runner("run", "-t", "static/no_such_test", "--nocr")
    assert res.returncode == 2
    assert "no such test: static/no_such_test" in res.stdout


def test_nothing_selected_is_an_error() -> None:
    res = runner("run", "--nocr")
    assert res.returncode == 2 and "nothing selected" in res.stdout


def test_list_shows_flavours_and_flags(fake_dir: Path) -> None:
    res = runner("list", "--tests-dir", str(fake_dir))
    assert res.returncode == 0
    row = next(ln for ln in res.stdout.splitlines() if ln.startswith("ext/alone"))
    assert row.split()[1:4] == ["h", "flags:", "excl"]
    row = next(ln for ln in res.stdout.splitlines() if ln.startswith("ext/pass"))
    assert row.split()[1:5] == ["h", "ns", "uns", "start:"]  # and where its start came from


def test_parser_options() -> None:
    args = build_parser().parse_args(
        ["run", "-t", "zdtm/static/maps06", "-t", "static/mem_anon", "-f", "h,uns",
         "--iters", "3", "--pre", "2", "--lazy-pages", "--norst", "--keep-going", "-p", "4",
         "--engine", "criu", "--criu-bin", sys.executable, "--keep-img", "--report", "r"])
    assert args.test == ["zdtm/static/maps06", "static/mem_anon"]
    assert args.flavors == ["h", "uns"]
    assert (args.iters, args.pre, args.parallel) == (3, 2, 4)
    assert args.lazy_pages and args.norst and args.keep_going and args.keep_img
    assert args.engine == "criu" and args.criu_bin == sys.executable
    for bad in (["-f", "h,xx"], ["--iters", "0"], ["-p", "0"], ["--criu-bin", "/x/criu"],
                ["--snaps", "some"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["run", *bad])
    assert build_parser().parse_args(["run", "--snaps"]).snaps == "last"
    assert build_parser().parse_args(["run", "--snaps", "each"]).snaps == "each"


def test_snaps_need_pre_dumps() -> None:
    res = runner("run", "-t", "static/umask", "--snaps")
    assert res.returncode == 2 and "--snaps needs --pre N" in res.stdout


def test_regex_selection_is_repeatable_and_nocr_excludes_cr_modes() -> None:
    res = runner("run", "-T", "^transition/mem_datagen$", "-T", "^static/umask$", "-f", "h",
                 "--nocr")
    assert res.returncode == 0, res.stdout
    assert "PASS transition/mem_datagen [h]" in res.stdout
    assert "PASS static/umask [h]" in res.stdout
    res = runner("run", "-t", "static/umask", "--nocr", "--norst")
    assert res.returncode == 2 and "excludes --norst" in res.stdout


def test_exclude_is_repeatable() -> None:
    """Every -x removes the tests it matches (CRIU's zdtm.py: any of them, anywhere in
    the name); the last one does not replace the others."""
    res = runner("run", "-T", "^static/(cwd|devnull|environ)$", "-x", "cwd", "-x", "^static/env",
                 "-f", "h", "--nocr")
    assert res.returncode == 0, res.stdout
    assert "PASS static/devnull [h]" in res.stdout
    assert "static/cwd" not in res.stdout and "static/environ" not in res.stdout
    assert "zdtm: 1 run(s)" in res.stdout


def test_an_installed_copy_without_sources_refuses_to_run(tmp_path: Path) -> None:
    """A copy of the Python packages alone (no C sources, descriptors or Makefiles; pip
    refuses to build a wheel, but such a copy can still be put on PYTHONPATH) says to run
    from a checkout instead of finding 0 tests."""
    for init in (p for pkg in ("zdtm", "flavors", "engine") for p in (ROOT / pkg).rglob(
            "__init__.py")):
        dest = tmp_path / init.parent.relative_to(ROOT)
        dest.mkdir(parents=True, exist_ok=True)
        for src in init.parent.glob("*.py"):
            shutil.copy(src, dest)
    for argv in (["run", "-t", "static/maps06"], ["list"]):
        code = f"import sys; from zdtm.cli import main; sys.exit(main({argv!r}))"
        res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60, check=False,
                             env={**os.environ, "PYTHONPATH": str(tmp_path)})
        assert res.returncode == 2, res.stdout + res.stderr
        assert "holds no test sources" in res.stderr and "run it from a checkout" in res.stderr
        assert "0 tests" not in res.stdout


def test_plan_respects_declared_flavours() -> None:
    t1 = TestDesc(name="static/a", kind="static", binary=Path("/a"), flavors=("h", "ns"))
    t2 = TestDesc(name="static/b", kind="static", binary=Path("/b"), flavors=("uns",))
    jobs = plan([t1, t2], ["ns", "uns"])
    assert [(j.test.name, j.flavor) for j in jobs] == [("static/a", "ns"), ("static/b", "uns")]
    assert len(plan([t1, t2], None)) == 3


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_sigterm_to_the_runner_cleans_up(fake_dir: Path, parallel: str) -> None:
    """A runner killed with SIGTERM mid-test still kills the test tree it started."""
    before = set(plumbing.descendants(os.getpid()))
    proc = subprocess.Popen([sys.executable, str(ROOT / "runner.py"), "run", "--tests-dir",
                             str(fake_dir), "-t", f"ext/term{parallel}", "--nocr",
                             "-p", parallel], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "checks ok" in line:  # the test runs and waits in the stop phase now
            break
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert set(plumbing.descendants(os.getpid())) <= before
    _no_leftovers(fake_dir)
    assert not list(DEFAULT_WORKROOT.glob(f"ext-term{parallel}-h-*")), "work dir left behind"


def test_pytest_collects_every_test_and_flavour() -> None:
    """conftest.py: one item per zdtm test x declared flavour, node id FILE.c::FLAVOUR."""
    from zdtm.desc import discover

    def collect(*extra: str) -> list[str]:
        proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                               "-p", "no:xdist", "-p", "no:cacheprovider", "zdtm", *extra],
                              cwd=ROOT, capture_output=True, text=True, timeout=120,
                              check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return [ln for ln in proc.stdout.splitlines() if "::" in ln]

    expected = sorted(f"zdtm/{t.name}.c::{f}" for t in discover() for f in t.flavors)
    assert sorted(collect()) == expected
    assert sorted(collect("--zdtm-flavors=ns")) == [n for n in expected if n.endswith("::ns")]


def test_parallel_run_probes_the_engine_once(fake_dir: Path, tmp_path: Path) -> None:
    """-p N: the runner probes the engine once and every worker takes that probe (a
    probe per test cost a minute each in a software-emulated guest)."""
    calls = tmp_path / "calls"
    criu = tmp_path / "criu"
    criu.write_text(f"#!/bin/sh\necho \"$*\" >> {calls}\n"
                    "case \"$1\" in --version) echo 'Version: 0.0';;\n"
                    "check) echo 'fake criu: no kernel support'; exit 1;; esac\n")
    criu.chmod(0o755)
    res = runner("run", "--tests-dir", str(fake_dir), "-t", "ext/pass", "-t", "ext/skipper",
                 "--engine", "criu", "--criu-bin", str(criu), "-p", "2", "--no-strict")
    assert "0 passed, 0 failed, 5 skipped" in res.stdout, res.stdout
    assert res.stdout.count("criu check failed: fake criu: no kernel support") == 5, res.stdout
    checks = [ln for ln in calls.read_text().splitlines() if ln.startswith("check")]
    assert checks == ["check"], checks


def test_work_root_holds_the_logs_of_a_failed_test(fake_dir: Path, tmp_path: Path) -> None:
    """--work-root: the per-test work dirs go there; a failed test keeps its logs there
    (and nothing under the default work root)."""
    root = tmp_path / "work"
    before = set(DEFAULT_WORKROOT.glob("ext-fail-h-*"))
    proc = subprocess.run([sys.executable, str(ROOT / "runner.py"), "run", "--tests-dir",
                           str(fake_dir), "-t", "ext/fail", "--nocr", "--work-root", str(root)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    kept = list(root.glob("ext-fail-h-*"))
    assert len(kept) == 1 and f"logs kept in {kept[0]}" in proc.stdout
    assert set(DEFAULT_WORKROOT.glob("ext-fail-h-*")) == before
