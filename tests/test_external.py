"""Another project's suite, unchanged (--tests-dir): the fixture tests/data/peer_suite.

The suite has its own zdtm-protocol library, a Makefile with per-test start rules, a hook, a
checkskip, descriptors in CRIU's dialect (a Python expression, a tab-indented one, a broken
one) and a script that is not a zdtm-protocol test.  Runs use the bundled engine (real C/R).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from zdtm import ROOT_DIR, external, plumbing
from zdtm.desc import TestDesc, discover_external
from zdtm.drivers.bundled import BundledEngine
from zdtm.external import _args_of_command, mounts_under, start_plan
from zdtm.lifecycle import RunOptions, cr_unavailable, run_test
from zdtm.result import CHECK_FAILED, FAIL, HARNESS_ERROR, PASS, SKIP, TEST_FAIL, TIMEOUT, Result

SUITE = Path(__file__).resolve().parent / "data" / "peer_suite"


@pytest.fixture(scope="module")
def suite() -> Iterator[Path]:
    """A built copy of the peer suite (tests may change the copy)."""
    base = Path(tempfile.mkdtemp(prefix="zdtm-peer-"))
    os.chmod(base, 0o755)  # uns runs the test as uid 100000
    dst = base / "suite"
    try:
        shutil.copytree(SUITE, dst)
        subprocess.run(["make", "-s", "-C", str(dst), "clean", "all"], check=True,
                       timeout=300, stdout=subprocess.DEVNULL)
        yield dst
    finally:
        shutil.rmtree(base)


@pytest.fixture(scope="module")
def engine() -> BundledEngine:
    eng = BundledEngine()
    why = cr_unavailable(eng, RunOptions())
    if why:
        pytest.skip(why)
    return eng


def _tests(directory: Path) -> dict[str, TestDesc]:
    return {t.short: t for t in discover_external(directory)}


def _run(suite: Path, engine: BundledEngine, name: str, tmp_path: Path,
         **opts: object) -> Result:
    return run_test(_tests(suite)[name], "h", engine,
                    RunOptions(workroot=tmp_path / "work", **opts))  # type: ignore[arg-type]


def _nothing_left(tmp_path: Path) -> None:
    assert plumbing.descendants(os.getpid()) == []
    assert mounts_under(tmp_path) == []


# ---- point 1: listing and running go on past a broken descriptor --------------------------


def test_runner_list_goes_on_and_shows_how_each_test_starts(suite: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT_DIR / "runner.py"), "list", "--tests-dir",
                          str(suite)], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert re.search(r"ERROR .*broken\.desc:3: lambda is not allowed", text)
    assert re.search(r"ext/argtest .*start: --envname=PEER_ENV_00 --mask=0345 "
                     r"\[Makefile rule\]", text)
    assert re.search(r"ext/filedir .*--dirname=filedir.dir.test --filename=filedir.test "
                     r"\[binary declares --dirname and --filename", text)
    assert re.search(r"ext/statetest .*SKIP: not a zdtm-protocol test", text)
    assert re.search(r"ext/tcpopt .*opts: --tcp-established", text)
    for name in ("archx", "dironly", "featx", "hooked", "notify", "plain", "pyexpr",
                 "skipme", "tabbed"):
        assert f"ext/{name} " in text


def test_broken_descriptor_is_that_tests_harness_error(suite: Path, engine: BundledEngine,
                                                       tmp_path: Path) -> None:
    r = _run(suite, engine, "broken", tmp_path)
    assert (r.outcome, r.phase, r.kind) == (FAIL, "build", HARNESS_ERROR)
    assert re.search(r"broken\.desc:3: lambda is not allowed", r.message)


# ---- point 2: the dialect; point 4: translation for the bundled engine --------------------


@pytest.mark.parametrize("name, reason", [
    ("archx", "arch: the test is for aarch64, this machine is"),
    ("tcpopt", "bundled engine: no --tcp-established"),
    ("featx", "engine lacks feature(s): mnt_id (bundled engine: no such feature)"),
    ("skipme", "skipme.checkskip exited 1: peer probe: the frobnicator is absent"),
    ("statetest", "not a zdtm-protocol test: a script with no start rule"),
])
def test_suite_skips_with_reasons(suite: Path, engine: BundledEngine, tmp_path: Path,
                                  name: str, reason: str) -> None:
    if name == "archx" and os.uname().machine == "aarch64":
        pytest.skip("the fixture's arch test targets aarch64, which this machine is")
    r = _run(suite, engine, name, tmp_path)
    assert r.outcome == SKIP, r.summary()
    assert reason in r.message


@pytest.mark.parametrize("name", ["plain", "pyexpr", "tabbed", "argtest", "dironly", "filedir"])
def test_suite_tests_pass_with_cr(suite: Path, engine: BundledEngine, tmp_path: Path,
                                  name: str) -> None:
    r = _run(suite, engine, name, tmp_path)
    assert r.outcome == PASS, r.summary() + "\n" + "\n".join(r.details)
    assert r.iterations == 1
    if name == "pyexpr":  # dopts '--track-' + 'mem': mapped, and the mapping shown
        assert "bundled engine: --track-mem -> --track-mem (same option)" in r.notes
    _nothing_left(tmp_path)


# ---- point 3: start arguments --------------------------------------------------------------


def test_start_plans(suite: Path) -> None:
    tests = _tests(suite)
    assert start_plan(tests["argtest"]).args[2:] == ("--envname=PEER_ENV_00", "--mask=0345")
    assert start_plan(tests["dironly"]).args[2:] == ("--dirname=dironly.test",)
    assert start_plan(tests["plain"]).args == ("--pidfile=plain.pid", "--outfile=plain.out")
    both = start_plan(tests["filedir"])
    assert both.args[2:] == ("--dirname=filedir.dir.test", "--filename=filedir.test")
    assert both.source.startswith("binary declares --dirname and --filename")


def test_start_rule_read_even_with_a_stale_pidfile(suite: Path, tmp_path: Path) -> None:
    copy = tmp_path / "s"
    shutil.copytree(suite, copy, symlinks=True)
    (copy / "argtest.pid").write_text("1\n")  # left by a run of the suite's own runner
    # a generated makefile (like a suite's .d files): -B would remake it, even under -n
    (copy / "gen.d").write_text("")
    with open(copy / "Makefile", "a") as mk:
        mk.write("-include gen.d\ngen.d: argtest.c\n\ttouch remade-gen.d\n")
    plan = start_plan(_tests(copy)["argtest"])
    assert plan.args[2:] == ("--envname=PEER_ENV_00", "--mask=0345")
    assert not (copy / "argtest.out").exists()  # make printed, ran nothing
    assert not (copy / "remade-gen.d").exists()


def test_rule_commands_that_are_not_a_plain_start() -> None:
    assert _args_of_command("./x --pidfile=x.pid --outfile=x.out --a=1 'b c'", "x") == (
        ("--a=1", "b c"), "Makefile rule")
    assert _args_of_command("x --pidfile x.pid --outfile x.out -v", "x")[0] == ("-v",)
    for cmd in ("./x --pidfile=x.pid && echo hi", "./y --pidfile=y.pid", "./x `date`",
                "./x 'unclosed"):
        args, why = _args_of_command(cmd, "x")
        assert args is None and why


def test_without_its_makefile_rule_the_test_cannot_start(suite: Path, engine: BundledEngine,
                                                         tmp_path: Path) -> None:
    """The Makefile's arguments are what make argtest pass: without them it fails at start."""
    bare = tmp_path / "bare"
    bare.mkdir()
    os.chmod(tmp_path, 0o755)
    shutil.copy(suite / "argtest", bare / "argtest")
    r = run_test(_tests(bare)["argtest"], "h", engine, RunOptions(workroot=tmp_path / "w"))
    assert (r.outcome, r.phase, r.kind) == (FAIL, "start", TEST_FAIL)
    assert "mandatory flag --envname not given" in "\n".join([r.message, *r.details])


# ---- point 5: hooks, checkskip, deadlines, mounts ------------------------------------------


def _hook_log(log: Path) -> list[tuple[str, str, str]]:
    rows = [ln.split() for ln in log.read_text().splitlines()]
    return [(phase, pid, img) for phase, pid, img in rows]


def test_hook_runs_at_each_phase(suite: Path, engine: BundledEngine, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "hook.log"
    monkeypatch.setenv("PEER_HOOK_LOG", str(log))
    r = _run(suite, engine, "hooked", tmp_path, pre=1)
    assert r.outcome == PASS, r.summary() + "\n" + "\n".join(r.details)
    calls = _hook_log(log)
    assert [c[0] for c in calls] == ["--post-start", "--post-pre-dump", "--pre-dump",
                                     "--pre-restore", "--post-restore", "--clean"]
    images = {phase: img for phase, _pid, img in calls}
    assert images["--post-pre-dump"] == images["--pre-restore"] == "img=set"
    assert images["--post-restore"] == "img=set" and images["--pre-dump"] == "img="
    assert all(pid != "pid=0" for phase, pid, _ in calls if phase != "--post-start")
    _nothing_left(tmp_path)


def test_hook_failure_fails_the_test_with_its_output(suite: Path, engine: BundledEngine,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "hook.log"
    monkeypatch.setenv("PEER_HOOK_LOG", str(log))
    monkeypatch.setenv("PEER_HOOK_FAIL", "--pre-restore")
    r = _run(suite, engine, "hooked", tmp_path)
    assert (r.outcome, r.phase, r.kind) == (FAIL, "restore", TEST_FAIL)
    assert r.message == "hooked.hook --pre-restore exited 3"
    assert "hook: hooked.hook: failing --pre-restore on purpose" in r.details
    assert [c[0] for c in _hook_log(log)][-1] == "--clean"  # clean runs in every outcome
    _nothing_left(tmp_path)


def test_mount_left_by_a_hook_is_unmounted_and_reported(suite: Path, engine: BundledEngine,
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEER_HOOK_MOUNT", "1")
    r = _run(suite, engine, "hooked", tmp_path)
    assert (r.outcome, r.kind) == (FAIL, CHECK_FAILED), r.summary()
    assert re.search(r"left behind: mount \S+/mnt \(unmounted\)", r.message)
    _nothing_left(tmp_path)


def _tiny_suite(suite: Path, tmp_path: Path, scripts: dict[str, str]) -> Path:
    d = tmp_path / "tiny"
    d.mkdir()
    os.chmod(tmp_path, 0o755)
    shutil.copy(suite / "plain", d / "plain")
    for name, body in scripts.items():
        (d / name).write_text(body)
        os.chmod(d / name, 0o755)
    return d


def test_checkskip_has_a_deadline(suite: Path, engine: BundledEngine, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    d = _tiny_suite(suite, tmp_path, {"plain.checkskip": "#!/bin/sh\necho probing\nsleep 60\n"})
    monkeypatch.setattr(external, "SCRIPT_TIMEOUT", 1.0)
    r = run_test(_tests(d)["plain"], "h", engine, RunOptions(workroot=tmp_path / "w"))
    assert (r.outcome, r.phase, r.kind) == (FAIL, "start", TIMEOUT)
    assert "plain.checkskip: no answer" in r.message and r.details == ["probing"]
    _nothing_left(tmp_path)


def test_hook_has_a_deadline(suite: Path, engine: BundledEngine, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    hook = '#!/bin/sh\n[ "$1" = --pre-dump ] && sleep 60\nexit 0\n'
    d = _tiny_suite(suite, tmp_path, {"plain.hook": hook})
    monkeypatch.setattr(external, "SCRIPT_TIMEOUT", 1.0)
    r = run_test(_tests(d)["plain"], "h", engine, RunOptions(workroot=tmp_path / "w"))
    assert (r.outcome, r.phase, r.kind) == (FAIL, "dump", TIMEOUT)
    assert r.message.startswith("plain.hook --pre-dump: no answer")
    _nothing_left(tmp_path)


def test_what_hooks_leave_running_is_ended(suite: Path, engine: BundledEngine,
                                          tmp_path: Path) -> None:
    """Daemons a hook starts (another session) go with the test, --clean's included."""
    hook = '#!/bin/sh\nsetsid sleep 300 < /dev/null > /dev/null 2>&1 &\nexit 0\n'
    d = _tiny_suite(suite, tmp_path, {"plain.hook": hook})
    r = run_test(_tests(d)["plain"], "h", engine, RunOptions(workroot=tmp_path / "w"))
    assert r.outcome == FAIL and r.kind == CHECK_FAILED  # leaks of the harness's children
    _nothing_left(tmp_path)


def test_pre_dump_notify(suite: Path, engine: BundledEngine, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Flag pre-dump-notify: notified after each pre-dump (the test fails if never)."""
    monkeypatch.setenv("PEER_MIN_NOTIFY", "1")
    r = _run(suite, engine, "notify", tmp_path, pre=1)
    assert r.outcome == PASS, r.summary() + "\n" + "\n".join(r.details)
    r = _run(suite, engine, "notify", tmp_path)  # no pre-dump: never notified
    assert (r.outcome, r.kind) == (FAIL, TEST_FAIL)
    assert "notified 0 times" in r.message


def test_pre_dump_notify_to_a_test_without_the_fds(suite: Path, engine: BundledEngine,
                                                   tmp_path: Path) -> None:
    d = _tiny_suite(suite, tmp_path, {})
    (d / "plain.desc").write_text("{'flags': 'pre-dump-notify'}\n")
    r = run_test(_tests(d)["plain"], "h", engine, RunOptions(workroot=tmp_path / "w", pre=1))
    assert (r.outcome, r.phase, r.kind) == (FAIL, "pre-dump", TEST_FAIL)
    assert "pre-dump notify: pid" in r.message and "No such file" in r.message
    _nothing_left(tmp_path)


# ---- the runner path over the whole suite --------------------------------------------------


def test_runner_run_over_the_suite(suite: Path, engine: BundledEngine) -> None:
    """Every test runs or reports its own problem; the only harness error is the broken one."""
    out = subprocess.run([sys.executable, str(ROOT_DIR / "runner.py"), "run", "--tests-dir",
                          str(suite), "-T", "^ext/", "-f", "h", "--keep-going"],
                         capture_output=True, text=True, timeout=900, check=False)
    lines = [ln for ln in out.stdout.splitlines() if re.match(r"(PASS|FAIL|SKIP) ext/", ln)]
    names = sorted(t.short for t in discover_external(suite) if "h" in t.flavors)
    assert sorted(ln.split()[1].removeprefix("ext/") for ln in lines) == names
    harness = [ln for ln in lines if "harness error" in ln]
    assert len(harness) == 1 and "ext/broken" in harness[0]
    assert [ln for ln in lines if ln.startswith("FAIL")] == harness, out.stdout
    assert out.returncode == 1


def test_pytest_collects_and_runs_the_suite(suite: Path, engine: BundledEngine) -> None:
    """pytest --zdtm-tests-dir=DIR: each test x flavour is an item, run like ours."""
    cmd = [sys.executable, "-m", "pytest", f"--zdtm-tests-dir={suite}", "conftest.py",
           "-p", "no:cacheprovider", "-q", "-rA", "--zdtm-flavors=h", "--zdtm-iters=1"]
    listed = subprocess.run([*cmd, "--co"], capture_output=True, text=True, cwd=ROOT_DIR,
                            timeout=300, check=False)
    items = [ln for ln in listed.stdout.splitlines() if "::" in ln]
    assert len(items) == len([t for t in discover_external(suite) if "h" in t.flavors])
    ran = subprocess.run([*cmd, "-k", "plain or broken or tcpopt"], capture_output=True,
                         text=True, cwd=ROOT_DIR, timeout=600, check=False)
    out = ran.stdout
    assert re.search(r"PASSED \S*plain::h", out), out
    assert re.search(r"FAILED \S*broken::h - ext/broken \[h\]: build: harness error", out)
    assert "bundled engine: no --tcp-established" in out
    assert "1 failed, 1 passed, 1 skipped" in out
