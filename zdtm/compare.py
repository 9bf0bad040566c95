"""Compare a run with a baseline run: what did this patch break?

Cases are matched by (test, flavour).  A failure that is known (zdtm.known) is listed apart
and never gates; a flaky case (failed, then passed on a rerun) is listed and never gates.
The gate fails on new failures, and on cases that passed in the baseline and are skipped
now (unless new skips are allowed): a patch that makes a test skip hides what it breaks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from zdtm.known import KnownReport
from zdtm.result import FAIL, FLAKY, PASS, SKIP, Result


@dataclass
class Comparison:
    """Each case of the new run, sorted by what changed since the baseline."""

    new_failures: list[Result] = field(default_factory=list)
    still_failing: list[Result] = field(default_factory=list)
    fixed: list[Result] = field(default_factory=list)
    newly_skipped: list[tuple[Result, Result]] = field(default_factory=list)  # (base, new)
    flaky: list[Result] = field(default_factory=list)
    known: list[Result] = field(default_factory=list)
    not_run: list[Result] = field(default_factory=list)  # in the baseline only
    known_report: KnownReport | None = None

    def gating(self, allow_new_skips: bool = False) -> list[str]:
        """Why the gate fails (empty: it passes)."""
        why = [f"new failure: {r.headline()}" for r in self.new_failures]
        if not allow_new_skips:
            why += [f"newly skipped (passed in the baseline): {n.headline()}"
                    for b, n in self.newly_skipped if b.outcome in (PASS, FLAKY)]
        return why

    def lines(self) -> list[str]:
        """The comparison as console lines, one section per category that has cases."""
        out: list[str] = []
        section = functools.partial(_section, out)
        section("new failures", [r.headline() for r in self.new_failures])
        section("newly skipped", [f"{n.headline()} (was {b.outcome})"
                                  for b, n in self.newly_skipped])
        section("still failing", [r.headline() for r in self.still_failing])
        section("fixed", [r.ident for r in self.fixed])
        section("flaky", [f"{r.ident}: passed after {len(r.attempts)} failed attempt(s); "
                          f"first: {Result.from_dict(r.attempts[0]).headline()}"
                          for r in self.flaky if r.attempts])
        section("known failures", [f"{r.headline()} (known: {r.known})" for r in self.known])
        if self.known_report is not None:
            out += known_lines(self.known_report)
        section("in the baseline, not run now", [r.ident for r in self.not_run])
        return out


def _section(out: list[str], title: str, items: list[str]) -> None:
    if items:
        out.append(f"{title} ({len(items)}):")
        out.extend(f"  {item}" for item in items)


def known_lines(report: KnownReport) -> list[str]:
    """What the known-failures file found beyond the failures: stale and expired entries."""
    out: list[str] = []
    _section(out, "known failures that passed (stale entry?)",
             [f"{r.ident} {r.outcome}: {e.reason}" for r, e in report.passing])
    _section(out, "expired known-failure entries (ignored)",
             [f"{e.describe()}: expired {e.expires}" for e in report.expired])
    return out


def compare(base: list[Result], new: list[Result],
            known_report: KnownReport | None = None) -> Comparison:
    """Sort ``new`` against ``base`` (``known`` already set on the new results)."""
    before = {r.key: r for r in base}
    now = {r.key for r in new}
    c = Comparison(known_report=known_report)
    for r in new:
        b = before.get(r.key)
        if r.outcome == FAIL:
            if r.known:
                c.known.append(r)
            elif b is not None and b.outcome == FAIL:
                c.still_failing.append(r)
            else:
                c.new_failures.append(r)
        elif r.outcome == FLAKY:
            c.flaky.append(r)
        elif r.outcome == PASS and b is not None and b.outcome == FAIL:
            c.fixed.append(r)
        elif r.outcome == SKIP and b is not None and b.outcome != SKIP:
            c.newly_skipped.append((b, r))
    c.not_run = [b for b in base if b.key not in now]
    return c
