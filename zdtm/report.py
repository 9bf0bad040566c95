"""Reports of a run: JUnit XML (always) and an HTML summary (when jinja2 is installed)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from zdtm.result import FAIL, PASS, SKIP, Result

HTML_TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>zdtm run: {{ totals }}</title>
<style>
body { font-family: sans-serif; margin: 1em 2em; }
table { border-collapse: collapse; }
td, th { border: 1px solid #bbb; padding: 2px 8px; text-align: left; vertical-align: top; }
.pass { background: #dfd; } .fail { background: #fdd; } .skip { background: #eee; }
pre { margin: 0; white-space: pre-wrap; font-size: 85%; }
</style></head><body>
<h1>zdtm run</h1>
<p>{{ totals }}</p>
<table>
<tr><th>test</th><th>flavour</th><th>engine</th><th>outcome</th><th>phase</th><th>kind</th>
<th>iterations</th><th>seconds</th><th>message</th></tr>
{% for r in results %}
<tr class="{{ r.outcome }}"><td>{{ r.test }}</td><td>{{ r.flavor }}{% if r.kernel %} @{{ r.kernel }}{% endif %}</td><td>{{ r.engine }}</td>
<td>{{ r.outcome }}</td><td>{{ r.phase or "" }}</td><td>{{ r.kind or "" }}</td>
<td>{{ r.iterations }}</td><td>{{ "%.1f"|format(r.duration) }}</td>
<td>{{ r.message }}{% if r.notes %}<br><i>{{ r.notes|join("; ") }}</i>{% endif %}
{% if r.details %}<pre>{{ r.details|join("\\n") }}</pre>{% endif %}</td></tr>
{% endfor %}
</table></body></html>
"""


def totals(results: Sequence[Result]) -> str:
    """``N passed, N failed, N skipped``"""
    count = Counter(r.outcome for r in results)
    return f"{count[PASS]} passed, {count[FAIL]} failed, {count[SKIP]} skipped"


def junit_xml(results: Sequence[Result]) -> ET.ElementTree:
    """One <testsuite name="zdtm"> with a <testcase> per test x flavour."""
    count = Counter(r.outcome for r in results)
    suite = ET.Element("testsuite", name="zdtm", tests=str(len(results)),
                       failures=str(count[FAIL]), errors="0", skipped=str(count[SKIP]),
                       time=f"{sum(r.duration for r in results):.3f}")
    for r in results:
        name = f"{r.flavor}@{r.kernel}" if r.kernel else r.flavor  # one case per kernel
        case = ET.SubElement(suite, "testcase", classname=r.test.replace("/", "."),
                             name=name, time=f"{r.duration:.3f}")
        props = ET.SubElement(case, "properties")
        ET.SubElement(props, "property", name="engine", value=r.engine)
        if r.kernel:
            ET.SubElement(props, "property", name="kernel", value=r.kernel)
        ET.SubElement(props, "property", name="iterations", value=str(r.iterations))
        for note in r.notes:
            ET.SubElement(props, "property", name="note", value=note)
        if r.outcome == FAIL:
            fail = ET.SubElement(case, "failure", type=r.kind or "",
                                 message=f"{r.phase}: {r.kind}: {r.message}")
            fail.text = "\n".join(r.details)
        elif r.outcome == SKIP:
            ET.SubElement(case, "skipped", message=r.message)
    ET.indent(suite)
    return ET.ElementTree(suite)


def html_summary(results: Sequence[Result]) -> str | None:
    """The HTML page, or None when jinja2 is not installed (runner.py needs only stdlib)."""
    try:
        import jinja2
    except ImportError:
        return None
    env = jinja2.Environment(autoescape=True)
    return env.from_string(HTML_TEMPLATE).render(results=results, totals=totals(results))


def write_reports(results: Sequence[Result], directory: Path) -> list[Path]:
    """Write junit.xml (and summary.html when possible) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    xml_path = directory / "junit.xml"
    junit_xml(results).write(xml_path, encoding="utf-8", xml_declaration=True)
    written = [xml_path]
    html = html_summary(results)
    if html is not None:
        html_path = directory / "summary.html"
        html_path.write_text(html)
        written.append(html_path)
    return written
