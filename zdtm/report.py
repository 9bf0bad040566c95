"""Reports of a run, all rendered from its results (zdtm.results): results.json, JUnit XML
and one self-contained HTML page (inline CSS and JS, no external assets, stdlib only).
"""

from __future__ import annotations

import html
import os
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zdtm import results as results_file
from zdtm.result import ENGINE_LOG_PREFIX, FAIL, FLAKY, PASS, SKIP, TEST_LOG_PREFIX, Result
from zdtm.results import RunResults

RESULTS_NAME, JUNIT_NAME, HTML_NAME = "results.json", "junit.xml", "summary.html"


def totals(results: Sequence[Result]) -> str:
    """``N passed, N failed, N skipped`` (+ flaky and known ones when there are any)."""
    count = Counter(r.outcome for r in results)
    known = sum(1 for r in results if r.outcome == FAIL and r.known)
    failed = f"{count[FAIL]} failed" + (f" ({known} known)" if known else "")
    text = f"{count[PASS]} passed, {failed}, {count[SKIP]} skipped"
    return text + (f", {count[FLAKY]} flaky" if count[FLAKY] else "")


def allowed_totals(results: Sequence[Result]) -> str:
    """``N allowed deviation(s) in M run(s)``, or "" when no engine deviation was allowed."""
    runs = [r for r in results if r.allowed]
    if not runs:
        return ""
    return f"{sum(len(r.allowed) for r in runs)} allowed deviation(s) in {len(runs)} run(s)"


def classname(test: str) -> str:
    """The JUnit classname of a test (``static.maps06``), the same under runner.py and
    pytest (conftest.py sets it); the JUnit name is the flavour."""
    return test.replace("/", ".")


def case_name(r: Result) -> str:
    """The JUnit name of a case: its flavour (``ns@RELEASE`` under --kernel: one per kernel)."""
    return f"{r.flavor}@{r.kernel}" if r.kernel else r.flavor


def _rank(r: Result) -> int:
    """Order of the HTML rows: unexpected failures first, passes last."""
    if r.outcome == FAIL:
        return 1 if r.known else 0
    return {FLAKY: 2, SKIP: 3, PASS: 4}.get(r.outcome, 5)


def _meta_rows(run: dict[str, Any]) -> list[tuple[str, str]]:
    kernel = run.get("kernel") or {}
    engine = run.get("engine") or {}
    harness = run.get("harness") or {}
    commit = harness.get("commit") or "unknown"
    rows = [
        ("started", str(run.get("started"))), ("finished", str(run.get("finished"))),
        ("wall time", f"{run['wall_seconds']:.1f} s" if run.get("wall_seconds") is not None
         else "?"),
        ("host", str(run.get("host"))),
        ("kernel", (f"{kernel.get('release')} (taint {kernel.get('taint_start')} at start,"
                    f" {kernel.get('taint_end')} at end)")),
        ("engine", f"{engine.get('name')} {engine.get('version') or ''}".strip()),
        ("harness commit", commit + (" (modified)" if harness.get("dirty") else "")),
        ("command", " ".join(run.get("command") or [])
         + (" (first of the merged parts)" if run.get("shards") else "")),
    ]
    if run.get("shard"):
        rows.append(("shard", str(run["shard"])))
    if run.get("interrupted"):
        rows.append(("interrupted", "yes: only the cases that finished are listed"))
    for i, s in enumerate(run.get("shards") or [], 1):
        where = f"{s.get('file')}: host {s.get('host')}, {s.get('wall_seconds')} s"
        label = f"shard {s['shard']}" if s.get("shard") else f"merged part {i}"
        rows.append((label, (f"{where}, started {s.get('started')}, "
                            f"{' '.join(s.get('command') or [])}")))
    return rows


def _suite_time(run: RunResults) -> float:
    wall = run.run.get("wall_seconds")
    return float(wall) if wall is not None else sum(r.duration for r in run.cases)


def junit_xml(run: RunResults) -> ET.ElementTree:
    """One <testsuite name="zdtm"> with a <testcase> per test x flavour.

    The suite time is the run's wall time (not the sum of the cases, which overlap under -p).
    A flaky case passes with one <flakyFailure> per failed attempt (surefire's convention).
    """
    results = run.cases
    count = Counter(r.outcome for r in results)
    suite = ET.Element("testsuite", name="zdtm", tests=str(len(results)),
                       failures=str(count[FAIL]), errors="0", skipped=str(count[SKIP]),
                       time=f"{_suite_time(run):.3f}",
                       timestamp=str(run.run.get("started") or ""),
                       hostname=str(run.run.get("host") or ""))
    props = ET.SubElement(suite, "properties")
    for name, value in _meta_rows(run.run):
        ET.SubElement(props, "property", name=name, value=value)
    for r in results:
        _junit_case(suite, r)
    ET.indent(suite)
    return ET.ElementTree(suite)


def _junit_case(suite: ET.Element, r: Result) -> None:
    case = ET.SubElement(suite, "testcase", classname=classname(r.test), name=case_name(r),
                         time=f"{r.duration:.3f}")
    props = ET.SubElement(case, "properties")
    ET.SubElement(props, "property", name="engine", value=r.engine)
    if r.kernel:
        ET.SubElement(props, "property", name="kernel", value=r.kernel)
    ET.SubElement(props, "property", name="iterations", value=str(r.iterations))
    for note in r.notes:
        ET.SubElement(props, "property", name="note", value=note)
    for allowed in r.allowed:
        ET.SubElement(props, "property", name="allowed", value=allowed)
    if r.outcome == FAIL:
        known = f" (known: {r.known})" if r.known else ""
        fail = ET.SubElement(case, "failure", type=str(r.kind or ""),
                             message=f"{r.phase}: {r.kind}: {r.message}{known}")
        fail.text = "\n".join(r.details)
    elif r.outcome == SKIP:
        ET.SubElement(case, "skipped", message=r.message)
    # earlier attempts (--rerun-failures), named as surefire does
    tag = "flakyFailure" if r.outcome == FLAKY else "rerunFailure"
    for a in (Result.from_dict(a) for a in r.attempts):
        earlier = ET.SubElement(case, tag, type=str(a.kind or ""),
                                message=f"{a.phase}: {a.kind}: {a.message}")
        earlier.text = "\n".join(a.details)


CSS = """
body { font-family: sans-serif; margin: 1em 2em; }
table { border-collapse: collapse; }
td, th { border: 1px solid #bbb; padding: 2px 8px; text-align: left; vertical-align: top; }
table.meta th { background: #f4f4f4; }
tr.pass { background: #dfd; } tr.fail { background: #fcc; } tr.known { background: #fed; }
tr.flaky { background: #ffc; } tr.skip { background: #eee; }
pre { margin: 0; white-space: pre-wrap; font-size: 85%; }
#filter label { margin-right: 1em; }
"""

# Filter rows by outcome: each checkbox shows or hides the rows of its class; a link to
# summary.html#hide=pass,skip opens the page with those outcomes hidden.
JS = """
function applyFilter() {
  document.querySelectorAll('#filter input').forEach(function (box) {
    document.querySelectorAll('tr.' + box.value).forEach(function (row) {
      row.style.display = box.checked ? '' : 'none';
    });
  });
}
var hidden = (location.hash.match(/hide=([a-z,]*)/) || [null, ''])[1].split(',');
document.querySelectorAll('#filter input').forEach(function (box) {
  box.checked = hidden.indexOf(box.value) < 0;
  box.addEventListener('change', applyFilter);
});
applyFilter();
"""


def _row_class(r: Result) -> str:
    return "known" if r.outcome == FAIL and r.known else str(r.outcome)


def _block(title: str, lines: Sequence[str]) -> str:
    if not lines:
        return ""
    return (f"<details><summary>{html.escape(title)} ({len(lines)})</summary>"
            f"<pre>{html.escape(chr(10).join(lines))}</pre></details>")


def _case_row(r: Result) -> str:
    e = html.escape
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in r.phase_seconds.items())
    extra = [f"<br><i>{e('; '.join(r.notes))}</i>" if r.notes else "",
             f"<br><b>known:</b> {e(r.known)}" if r.known else "",
             _block("problems", r.problems()), _block("engine steps", r.timings), _block("allowed deviations", r.allowed),
             _block("engine log", r.log_tail(ENGINE_LOG_PREFIX)),
             _block("test log", r.log_tail(TEST_LOG_PREFIX)),
             _block("earlier attempts", [Result.from_dict(a).headline() for a in r.attempts])]
    cells = [r.test, case_name(r), r.engine, str(r.outcome), str(r.phase or ""),
             str(r.kind or ""), str(r.iterations), f"{r.duration:.1f}", timings]
    tds = "".join(f"<td>{e(c)}</td>" for c in cells)
    return (f'<tr class="{_row_class(r)}">{tds}<td>{e(r.message)}{"".join(extra)}</td></tr>')


def html_summary(run: RunResults) -> str:
    """The HTML page: metadata, totals, failures first, a filter by outcome."""
    e = html.escape
    cases = sorted(run.cases, key=_rank)  # sorted() is stable: run order within a rank
    present = Counter(_row_class(r) for r in cases)
    boxes = "".join(f'<label><input type="checkbox" value="{c}" checked> {c} ({present[c]})'
                    "</label>" for c in ("fail", "known", "flaky", "skip", "pass")
                    if present[c])
    meta = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _meta_rows(run.run))
    head = ("<tr><th>test</th><th>flavour</th><th>engine</th><th>outcome</th><th>phase</th>"
            "<th>kind</th><th>iterations</th><th>seconds</th><th>timings</th>"
            "<th>message</th></tr>")
    rows = "\n".join(_case_row(r) for r in cases)
    title = e(f"zdtm run: {totals(run.cases)}")
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{CSS}</style></head><body>\n<h1>{title}</h1>\n"
            f'<table class="meta">{meta}</table>\n'
            f'<p id="filter">show: {boxes}</p>\n'
            f'<table class="cases">{head}\n{rows}\n</table>\n'
            f"<script>{JS}</script></body></html>\n")


def check_writable(directory: Path) -> str | None:
    """None when reports can be written to ``directory`` (made if missing), else why not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".zdtm-probe-"):
            pass
    except OSError as exc:
        return f"{directory}: {exc.strerror or exc}"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory}: not writable"
    return None


def write_reports(run: RunResults, directory: Path) -> list[Path]:
    """Write results.json, junit.xml and summary.html into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / RESULTS_NAME, directory / JUNIT_NAME, directory / HTML_NAME]
    results_file.save(run, paths[0])
    junit_xml(run).write(paths[1], encoding="utf-8", xml_declaration=True)
    paths[2].write_text(html_summary(run))
    return paths
