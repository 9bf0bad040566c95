"""runner.py as a gate, end to end with small zdtm-protocol programs in nocr mode: results
file, baseline and compare, known failures, reruns, strict mode, shards and merge, the
console, usage errors, Ctrl-C; and the pytest side (shards, JUnit names)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.fake_support import ROOT, fake_suite, runner
from zdtm import cli, plumbing

BEHAVIOURS = {
    "pass": ("PASS", "{'flavor': 'h'}"),
    "pass2": ("PASS", "{'flavor': 'h ns'}"),
    "fail": ("FAIL", "{'flavor': 'h'}"),
    "flaky": ("FLAKY", "{'flavor': 'h'}"),
    "slow": ("HANG", "{'flavor': 'h', 'timeout': 30}"),
    "slow2": ("HANG", "{'flavor': 'h', 'timeout': 30}"),
}


@pytest.fixture(scope="module")
def fake_dir() -> Iterator[Path]:
    """A --tests-dir with one fake test binary per behaviour (and its .desc)."""
    with fake_suite(BEHAVIOURS, "zdtm-gate-") as d:
        yield d


def outcomes(path: Path) -> dict[tuple[str, str], str]:
    doc = json.loads(path.read_text())
    return {(c["test"], c["flavor"]): c["outcome"] for c in doc["cases"]}


def test_baseline_compare_and_known_failures(fake_dir: Path, tmp_path: Path) -> None:
    # a tests dir whose "victim" passes, then fails: the patch under test broke it
    d = tmp_path / "t"
    d.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(d, 0o755)
    for name in ("pass", "pass2"):
        shutil.copy(fake_dir / name, d / name)
        shutil.copy(fake_dir / f"{name}.desc", d / f"{name}.desc")
    shutil.copy(fake_dir / "pass", d / "victim")
    (d / "victim.desc").write_text("{'flavor': 'h'}\n")
    sel = ["--tests-dir", str(d), "-T", "^ext/", "-f", "h", "--nocr", "--keep-going"]
    base = runner("run", *sel, "--report", str(tmp_path / "base"))
    assert base.returncode == 0, base.stdout
    shutil.copy(fake_dir / "fail", d / "victim")

    new = runner("run", *sel, "--report", str(tmp_path / "new"),
                 "--baseline", str(tmp_path / "base" / "results.json"))
    assert new.returncode == 1, new.stdout
    assert "new failures (1):\n  ext/victim [h] stop: test FAIL: FAIL: fake_zdtm.c:" in new.stdout

    cmp = runner("compare", str(tmp_path / "base" / "results.json"),
                 str(tmp_path / "new" / "results.json"))
    assert cmp.returncode == 1
    lines = cmp.stdout.splitlines()
    i = lines.index("new failures (1):")
    assert lines[i + 1].startswith("  ext/victim [h] stop: test FAIL:")
    assert "still failing" not in cmp.stdout and lines[-1] == "gate: FAIL (1 reason(s))"
    same = runner("compare", str(tmp_path / "new" / "results.json"),
                  str(tmp_path / "new" / "results.json"))
    assert same.returncode == 0 and "still failing (1):" in same.stdout

    known = tmp_path / "known.yaml"
    known.write_text("- {test: ext/victim, flavor: h, engine: nocr, reason: bug 42}\n"
                     "- {test: ext/pass, reason: was broken once}\n")
    res = runner("run", *sel, "--known", str(known), "--report", str(tmp_path / "k"))
    assert res.returncode == 0, res.stdout
    assert "ext/victim [h] stop: test FAIL" in res.stdout and "(known: bug 42)" in res.stdout
    assert "known failures that passed (stale entry?) (1):" in res.stdout
    assert "new failures" not in res.stdout  # no baseline: nothing to call new
    assert "2 passed, 1 failed (1 known), 0 skipped" in res.stdout
    doc = json.loads((tmp_path / "k" / "results.json").read_text())
    assert [c["known"] for c in doc["cases"] if c["test"] == "ext/victim"] == ["bug 42"]
    cmp = runner("compare", str(tmp_path / "base" / "results.json"),
                 str(tmp_path / "new" / "results.json"), "--known", str(known))
    assert cmp.returncode == 0 and "known failures (1):" in cmp.stdout


def test_rerun_failures_flaky_and_failing(fake_dir: Path, tmp_path: Path) -> None:
    (fake_dir / "flaky.ran").unlink(missing_ok=True)
    res = runner("run", "--tests-dir", str(fake_dir), "-t", "ext/flaky", "-t", "ext/fail",
                 "--nocr", "--keep-going", "--rerun-failures", "2", "--report", str(tmp_path))
    assert "rerun 1/2 of ext/flaky [h] after: ext/flaky [h] stop: test FAIL" in res.stdout
    assert "FLAKY ext/flaky [h]" in res.stdout and "after 1 failed attempt(s)" in res.stdout
    assert res.returncode == 1  # ext/fail failed all three attempts
    doc = json.loads((tmp_path / "results.json").read_text())
    by_test = {c["test"]: c for c in doc["cases"]}
    assert by_test["ext/flaky"]["outcome"] == "flaky"
    assert [a["outcome"] for a in by_test["ext/flaky"]["attempts"]] == ["fail"]
    assert by_test["ext/fail"]["outcome"] == "fail"
    assert len(by_test["ext/fail"]["attempts"]) == 2
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert len(suite.findall("testcase[@classname='ext.flaky']/flakyFailure")) == 1
    assert len(suite.findall("testcase[@classname='ext.fail']/rerunFailure")) == 2
    assert "flaky (1):\n  ext/flaky [h]: passed after 1 failed attempt(s)" in res.stdout


def test_strict_fails_a_run_that_tested_nothing(fake_dir: Path) -> None:
    sel = ["run", "--tests-dir", str(fake_dir), "-t", "ext/pass", "--engine", "criu",
           "--criu-bin", "/bin/false"]
    res = runner(*sel)
    assert res.returncode == 1, res.stdout
    assert "0 passed, 0 failed, 1 skipped" in res.stdout
    assert ("strict: nothing ran: all 1 case(s) skipped, 1 with: criu engine unavailable"
            in res.stdout)
    assert runner(*sel, "--no-strict").returncode == 0


def test_shards_merge_into_the_unsharded_run(fake_dir: Path, tmp_path: Path) -> None:
    sel = ["--tests-dir", str(fake_dir), "-t", "ext/pass", "-t", "ext/pass2", "-t", "ext/fail",
           "--nocr", "--keep-going"]
    full = runner("run", *sel, "--report", str(tmp_path / "full"))
    assert full.returncode == 1
    for i in (1, 2):
        res = runner("run", *sel, "--shard", f"{i}/2", "--shard-durations",
                     str(tmp_path / "full" / "results.json"), "--report", str(tmp_path / f"s{i}"))
        assert f"shard {i}/2" in res.stdout.splitlines()[0]
    parts = [outcomes(tmp_path / f"s{i}" / "results.json") for i in (1, 2)]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    res = runner("merge", str(tmp_path / "s1" / "results.json"),
                 str(tmp_path / "s2" / "results.json"), "-o", str(tmp_path / "merged"))
    assert res.returncode == full.returncode == 1, res.stdout  # the same verdict
    assert "failed (1):\n  ext/fail [h] stop: test FAIL" in res.stdout
    assert outcomes(tmp_path / "merged" / "results.json") == outcomes(
        tmp_path / "full" / "results.json")
    junit = ET.parse(tmp_path / "merged" / "junit.xml").getroot()
    assert (junit.get("tests"), junit.get("failures")) == ("4", "1")
    assert "shard 2/2" in (tmp_path / "merged" / "summary.html").read_text()
    res = runner("merge", str(tmp_path / "s1" / "results.json"),
                 str(tmp_path / "s2" / "results.json"), "-o", str(tmp_path / "gated"),
                 "--baseline", str(tmp_path / "full" / "results.json"))
    assert res.returncode == 0 and "still failing (1):" in res.stdout, res.stdout
    dup = runner("merge", str(tmp_path / "s1" / "results.json"),
                 str(tmp_path / "s1" / "results.json"), "-o", str(tmp_path / "dup"))
    assert dup.returncode == 2 and "is in both" in dup.stdout


def test_console_counter_attribution_and_closing_list(fake_dir: Path) -> None:
    res = runner("run", "--tests-dir", str(fake_dir), "-t", "ext/pass2", "-t", "ext/fail",
                 "--nocr", "--keep-going", "-p", "2")
    lines = res.stdout.splitlines()
    assert "failed (1):" in lines, res.stdout
    assert "build: the ns init (make -C flavors nsinit), where stale" in lines
    # each result line ends with the counter: k of 3, minutes:seconds since the start
    counted = [re.search(r"^(PASS|FAIL) ext/.* \[(\d)/3 \d+:\d\d\]$", ln) for ln in lines]
    assert [m.group(2) for m in counted if m] == ["1", "2", "3"]
    # every line a worker printed names its case
    progress = [ln for ln in lines if "iter 1/1" in ln or ": start" in ln]
    assert progress and all(ln.startswith("ext/") for ln in progress), progress
    tail = lines[lines.index("failed (1):"):]
    assert tail[1].startswith("  ext/fail [h] stop: test FAIL: FAIL: fake_zdtm.c:")
    assert tail[-1] == "2 passed, 1 failed, 0 skipped"


@pytest.mark.parametrize("args", [["--report", "/proc/nope"], ["--engine-timeout", "0"],
                                  ["--engine-timeout", "inf"], ["--engine-timeout", "nan"],
                                  ["--shard", "3/2"]])
def test_usage_errors_before_anything_runs(args: list[str]) -> None:
    res = runner("run", "-t", "static/mem_anon", "--nocr", *args)
    assert res.returncode == 2, res.stdout
    assert "===" not in res.stdout and "Traceback" not in res.stdout
    if args[0] == "--report":
        assert res.stdout == ("runner.py: --report: cannot write reports to /proc/nope: "
                              "No such file or directory\n")


def test_non_root_is_told_up_front(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["run", "-t", "static/mem_anon", "--report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == ("runner.py: must run as root (ptrace, namespaces and C/R need it); "
                   "uid is 1000\n")
    assert not (tmp_path / "r").exists()


# A job started with & by a non-interactive shell (as CI may be) inherits SIGINT ignored,
# and Python then installs no KeyboardInterrupt handler; Ctrl-C at a terminal is the case
# tested, so the runner starts with SIGINT at its default (exec keeps SIG_DFL, not handlers).
_SIGINT_AS_AT_A_TERMINAL = [
    sys.executable, "-c",
    ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
     "os.execv(sys.executable, [sys.executable] + sys.argv[1:])"),
]


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_ctrl_c_stops_with_partial_summary_and_report(fake_dir: Path, tmp_path: Path,
                                                      parallel: str) -> None:
    name = f"slow{parallel.replace('1', '')}"  # one test per mode: parallel test workers
    before = set(plumbing.descendants(os.getpid()))
    proc = subprocess.Popen([*_SIGINT_AS_AT_A_TERMINAL, str(ROOT / "runner.py"), "run",
                             "--tests-dir", str(fake_dir), "-t", "ext/pass", "-t", f"ext/{name}", "-f", "h",
                             "--nocr", "-p", parallel, "--report", str(tmp_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line)
        text = "".join(seen)
        # ext/pass has its result; the slow one waits in its stop phase now
        if "\nPASS ext/pass [h]" in text and f"ext/{name} [h] iter 1/1: checks ok" in text:
            break
    proc.send_signal(signal.SIGINT)
    out = "".join(seen) + proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    assert "interrupted: " in out and "Traceback" not in out
    assert out.rstrip().endswith("1 passed, 0 failed, 0 skipped"), out
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["run"]["interrupted"] is True and doc["run"]["selected"] == 2
    assert [(c["test"], c["outcome"]) for c in doc["cases"]] == [("ext/pass", "pass")]
    assert set(plumbing.descendants(os.getpid())) <= before


def test_pytest_shards_split_the_items() -> None:
    def collect(*extra: str) -> set[str]:
        proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                               "-p", "no:xdist", "-p", "no:cacheprovider",
                               "zdtm/static/mem_anon.c", "zdtm/static/cwd.c", *extra],
                              cwd=ROOT, capture_output=True, text=True, timeout=120,
                              check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return {ln for ln in proc.stdout.splitlines() if "::" in ln}

    whole, one, two = collect(), collect("--zdtm-shard", "1/2"), collect("--zdtm-shard", "2/2")
    assert len(whole) == 6 and one | two == whole and not one & two
    assert len(one) == len(two) == 3


def test_pytest_and_runner_name_a_case_alike(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p",
                    "no:cacheprovider", "--zdtm-nocr", "zdtm/static/umask.c::h",
                    f"--junitxml={tmp_path / 'pytest.xml'}", "--zdtm-report",
                    str(tmp_path / "pytest")], cwd=ROOT, capture_output=True,
                   timeout=300, check=True)
    res = runner("run", "-t", "static/umask", "-f", "h", "--nocr", "--report", str(tmp_path))
    assert res.returncode == 0, res.stdout
    # pytest's results file is the runner's: same cases, mergeable, same JUnit names
    assert outcomes(tmp_path / "pytest" / "results.json") == outcomes(
        tmp_path / "results.json") == {("static/umask", "h"): "pass"}
    assert json.loads((tmp_path / "pytest" / "results.json").read_text())["run"]["command"][
        0] == "pytest"

    def names(path: Path) -> list[tuple[str | None, str | None]]:
        return [(c.get("classname"), c.get("name"))
                for c in ET.parse(path).getroot().iter("testcase")]

    assert names(tmp_path / "pytest.xml") == names(tmp_path / "junit.xml") == names(
        tmp_path / "pytest" / "junit.xml") == [
        ("static.umask", "h")]


def test_ci_example_runs_valid_runner_commands() -> None:
    """Every runner.py command of docs/ci/zdtm-shards.yml parses with runner.py's parser."""
    flow = yaml.safe_load((ROOT / "docs" / "ci" / "zdtm-shards.yml").read_text())
    shards = int(flow["env"]["SHARDS"])
    assert flow["jobs"]["shard"]["strategy"]["matrix"]["shard"] == list(range(1, shards + 1))
    commands = []
    for job in flow["jobs"].values():
        for step in job["steps"]:
            script = step.get("run", "").replace("\\\n", " ")
            commands += [ln.strip() for ln in script.splitlines() if "./runner.py" in ln]
    assert {shlex.split(c)[1 if c.startswith("sudo") else 0] for c in commands} == {
        "./runner.py"}
    subs = {"${{ matrix.shard }}": "2", "$SHARDS": str(shards), '"${durations[@]}"': "",
            '"${gate[@]}"': "--baseline b.json", "|| true": ""}
    parsed = []
    for c in commands:
        for old, new in subs.items():
            c = c.replace(old, new)
        argv = shlex.split(c)
        parsed.append(cli.build_parser().parse_args(argv[argv.index("./runner.py") + 1:]))
    run, merge = parsed
    assert (run.cmd, run.shard, run.all, str(run.report)) == ("run", (2, 4), True, "report-2")
    assert (merge.cmd, str(merge.baseline)) == ("merge", "b.json")


def test_pytest_strict_fails_a_session_that_tested_nothing() -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
           "--zdtm-engine", "criu", "--zdtm-criu-bin", "/bin/false", "zdtm/static/umask.c"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 1, res.stdout
    assert "zdtm strict: nothing ran: all 3 zdtm item(s) skipped" in res.stdout
    res = subprocess.run([*cmd, "--no-zdtm-strict"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stdout
