"""JUnit XML and HTML reports, and the console summary line."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from zdtm.report import html_summary, junit_xml, totals, write_reports
from zdtm.result import CHECK_FAILED, Result


def _results() -> list[Result]:
    ok = Result(test="static/maps06", flavor="h", engine="bundled", iterations=3, duration=1.5)
    bad = Result(test="static/mem_anon", flavor="ns", engine="bundled", duration=0.5)
    bad.fail("check", CHECK_FAILED, "iteration 1: 1 problem(s): fd: fd 5 leaked <&>",
             ["fd: pid 1 fd 5 leaked: /dev/null", "maps: pid 1 vma 7f00-7f01 lost"])
    skipped = Result(test="static/umask", flavor="uns", engine="criu")
    skipped.skip("start", "criu engine unavailable: criu check failed")
    nocr = Result(test="static/umask", flavor="h", engine="nocr", notes=["nocr: no C/R"])
    return [ok, bad, skipped, nocr]


def test_totals() -> None:
    assert totals(_results()) == "2 passed, 1 failed, 1 skipped"
    assert totals([]) == "0 passed, 0 failed, 0 skipped"


def test_junit_xml() -> None:
    suite = junit_xml(_results()).getroot()
    assert suite.tag == "testsuite"
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "1")
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
    notes = [p.get("value") for p in cases[3].iter("property") if p.get("name") == "note"]
    assert notes == ["nocr: no C/R"]


def test_write_reports(tmp_path: Path) -> None:
    written = write_reports(_results(), tmp_path / "r")
    assert written[0] == tmp_path / "r" / "junit.xml"
    assert ET.parse(written[0]).getroot().get("tests") == "4"
    pytest.importorskip("jinja2", reason="HTML summary needs jinja2 (optional extra [html])")
    assert written[1] == tmp_path / "r" / "summary.html"


def test_html_escapes_and_lists_everything() -> None:
    pytest.importorskip("jinja2", reason="HTML summary needs jinja2 (optional extra [html])")
    html = html_summary(_results())
    assert html is not None
    assert "2 passed, 1 failed, 1 skipped" in html
    assert "fd 5 leaked &lt;&amp;&gt;" in html  # escaped, not raw markup
    assert html.count('<tr class="') == 4


def test_result_round_trip_and_first_failure_wins() -> None:
    r = Result(test="static/a", flavor="h", engine="bundled")
    r.fail("dump", "engine error", "seize failed")
    r.fail("stop", "timeout", "no verdict")
    assert (r.phase, r.kind, r.message) == ("dump", "engine error", "seize failed")
    assert r.details == ["also in stop (timeout): no verdict"]
    assert Result.from_dict(r.to_dict()) == r
    assert r.summary() == "FAIL static/a [h] dump: engine error: seize failed"
