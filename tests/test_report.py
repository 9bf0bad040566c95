"""Reports rendered from a results file: JUnit XML, the HTML page, the console totals."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from zdtm import results as results_file
from zdtm.report import html_summary, junit_xml, totals, write_reports
from zdtm.result import CHECK_FAILED, FAIL, FLAKY, Kind, Outcome, Phase, Result
from zdtm.results import RunResults


def _results() -> list[Result]:
    ok = Result(test="static/maps06", flavor="h", engine="bundled", iterations=3, duration=1.5,
                phase_seconds={"dump": 0.5, "restore": 0.25},
                timings=["dump 0.50s, frozen 0.40s"],
                allowed=["maps: shared anon mapping restored through a memfd"])
    bad = Result(test="static/mem_anon", flavor="ns", engine="bundled", duration=0.5)
    bad.fail("check", CHECK_FAILED, "iteration 1: 1 problem(s): fd: fd 5 leaked <&>",
             ["fd: pid 1 fd 5 leaked: /dev/null", "maps: pid 1 vma 7f00-7f01 lost",
              "engine: last engine line", "outfile: last test line"])
    skipped = Result(test="static/umask", flavor="uns", engine="criu")
    skipped.skip("start", "criu engine unavailable: criu check failed")
    nocr = Result(test="static/umask", flavor="h", engine="nocr", notes=["nocr: no C/R"])
    return [ok, bad, skipped, nocr]


def _run(cases: list[Result]) -> RunResults:
    meta = results_file.start_metadata(engine="bundled", engine_version="in-tree",
                                       argv=["run", "-a"], options={"iters": 1})
    results_file.finish_metadata(meta, selected=len(cases), interrupted=False)
    meta["wall_seconds"] = 42.0
    return RunResults(meta, cases)


def _flaky() -> Result:
    first = Result(test="static/cwd", flavor="h", engine="bundled")
    first.fail("stop", "test FAIL", "FAIL: cwd moved")
    flaky = Result(test="static/cwd", flavor="h", engine="bundled", iterations=1,
                   outcome=FLAKY, attempts=[first.to_dict()])
    return flaky


def test_enums_compare_as_their_strings() -> None:
    assert Outcome.PASS == "pass" and Phase.PRE_DUMP == "pre-dump"
    assert Kind.ENGINE_ERROR == "engine error"
    assert json.dumps([Outcome.FAIL, Kind.TIMEOUT]) == '["fail", "timeout"]'


def test_totals() -> None:
    assert totals(_results()) == "2 passed, 1 failed, 1 skipped"
    assert totals([]) == "0 passed, 0 failed, 0 skipped"
    known = _results()
    known[1].known = "tracked upstream"
    assert totals([*known, _flaky()]) == "2 passed, 1 failed (1 known), 1 skipped, 1 flaky"


def test_junit_xml() -> None:
    suite = junit_xml(_run(_results())).getroot()
    assert suite.tag == "testsuite"
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "1")
    assert suite.get("time") == "42.000"  # wall time, not the sum of the cases
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["engine"] == "bundled in-tree" and props["command"] == "runner.py run -a"
    cases = suite.findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("static.maps06", "h"), ("static.mem_anon", "ns"), ("static.umask", "uns"),
        ("static.umask", "h")]
    failure = cases[1].find("failure")
    assert failure is not None
    assert failure.get("type") == CHECK_FAILED
    assert failure.get("message", "").startswith("check: check failed: iteration 1")
    assert "fd 5 leaked: /dev/null" in (failure.text or "")
    assert cases[2].find("skipped").get("message").startswith("criu engine unavailable")
    assert cases[0].find("failure") is None and cases[0].find("skipped") is None
    allowed = [p.get("value") for p in cases[0].iter("property") if p.get("name") == "allowed"]
    assert allowed == ["maps: shared anon mapping restored through a memfd"]
    notes = [p.get("value") for p in cases[3].iter("property") if p.get("name") == "note"]
    assert notes == ["nocr: no C/R"]


def test_junit_flaky_keeps_the_failed_attempt() -> None:
    case = junit_xml(_run([_flaky()])).getroot().find("testcase")
    assert case.find("failure") is None
    flaky = case.find("flakyFailure")
    assert flaky is not None and flaky.get("message") == "stop: test FAIL: FAIL: cwd moved"


def test_write_reports(tmp_path: Path) -> None:
    written = write_reports(_run(_results()), tmp_path / "r")
    assert [p.name for p in written] == ["results.json", "junit.xml", "summary.html"]
    assert ET.parse(written[1]).getroot().get("tests") == "4"
    again = results_file.load(written[0])
    assert [r.key for r in again.cases] == [r.key for r in _results()]


def test_html_shows_metadata_failures_first_and_a_filter() -> None:
    cases = [*_results(), _flaky()]
    page = html_summary(_run(cases))
    assert "2 passed, 1 failed, 1 skipped, 1 flaky" in page
    assert "fd 5 leaked &lt;&amp;&gt;" in page  # escaped, not raw markup
    for field in ("host", "kernel", "engine", "harness commit", "command", "wall time"):
        assert f"<th>{field}</th>" in page
    assert "42.0 s" in page and "bundled in-tree" in page
    rows = re.findall(r'<tr class="(\w+)">', page)
    assert rows == ["fail", "flaky", "skip", "pass", "pass"]  # failures first
    boxes = re.findall(r'<input type="checkbox" value="(\w+)"', page)
    assert boxes == ["fail", "flaky", "skip", "pass"]
    assert "addEventListener('change'" in page and "<script src" not in page
    assert "allowed deviations (1)" in page and "engine log (1)" in page
    assert "test log (1)" in page and "earlier attempts (1)" in page


def test_result_round_trip_and_first_failure_wins() -> None:
    r = Result(test="static/a", flavor="h", engine="bundled")
    r.fail("dump", "engine error", "seize failed")
    r.fail("stop", "timeout", "no verdict")
    assert (r.phase, r.kind, r.message) == ("dump", "engine error", "seize failed")
    assert r.details == ["also in stop (timeout): no verdict"]
    assert Result.from_dict(r.to_dict()) == r
    assert r.summary() == "FAIL static/a [h] dump: engine error: seize failed"
    assert r.outcome == FAIL


def test_results_file_keeps_logs_apart_from_problems(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    results_file.save(_run(_results()), path)
    doc = json.loads(path.read_text())
    assert (doc["schema"], doc["version"]) == ("zdtm-results", 1)
    for key in ("started", "finished", "wall_seconds", "host", "kernel", "engine", "harness",
                "command", "options"):
        assert key in doc["run"], key
    bad = doc["cases"][1]
    assert bad["problems"] == ["fd: pid 1 fd 5 leaked: /dev/null",
                               "maps: pid 1 vma 7f00-7f01 lost"]
    assert bad["logs"] == {"engine": ["last engine line"], "test": ["last test line"]}
    assert doc["cases"][0]["phase_seconds"] == {"dump": 0.5, "restore": 0.25}
    assert doc["cases"][0]["steps"] == ["dump 0.50s, frozen 0.40s"]
    loaded = results_file.load(path)
    assert [c.to_dict() for c in loaded.cases] == [c.to_dict() for c in _results()]


def test_html_filter_hides_rows_in_a_browser(tmp_path: Path) -> None:
    """The page's own script, run by a headless browser: #hide=pass,skip hides those rows."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium installed to run the page's script")
    page = tmp_path / "summary.html"
    page.write_text(html_summary(_run([*_results(), _flaky()])))
    dom = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                          "--dump-dom", f"{page.as_uri()}#hide=pass,skip"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rows = re.findall(r'<tr class="(\w+)"( style="display: none;")?>', dom)
    assert sorted(rows) == [("fail", ""), ("flaky", ""), ("pass", ' style="display: none;"'),
                            ("pass", ' style="display: none;"'),
                            ("skip", ' style="display: none;"')]


def test_summary_names_allowed_deviations_once() -> None:
    r = Result(test="static/pipe_data", flavor="h", engine="criu", iterations=1,
               duration=0.4, outcome=Outcome.PASS,
               allowed=["iteration 1: fds: pipe size"], notes=["a note"])
    line = r.summary()
    assert line.count("allowed deviation") == 1, line
    assert "(1 allowed deviation(s))" in line and "[a note]" in line
