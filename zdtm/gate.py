"""The gate's verdict on a run: reruns of failures, strict mode, baseline, exit status.

Exit status of ``runner.py run`` (and of ``compare``):

- with a baseline: 1 on new failures (and on new skips of cases that passed, unless
  allowed); failures the baseline already had, known failures and flaky cases do not gate;
- without one: 1 on any failure that is not known;
- strict (the default): also 1 when nothing ran, i.e. every selected case was skipped
  (for example because the engine is unavailable): a gate must never turn green having
  tested nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from zdtm.compare import Comparison
from zdtm.result import FAIL, FLAKY, PASS, SKIP, Result


def with_reruns(run_once: Callable[[], Result], reruns: int,
                on_rerun: Callable[[Result, int], None] | None = None) -> Result:
    """Run, and rerun a failure up to ``reruns`` times.

    A case that fails and then passes is FLAKY (never PASS); every failed attempt is kept
    in ``attempts``.  A rerun that skips ends the reruns: the last failure stands.
    """
    r = run_once()
    attempts: list[Result] = []
    while r.outcome == FAIL and len(attempts) < reruns:
        attempts.append(r)
        if on_rerun is not None:
            on_rerun(r, len(attempts))
        r = run_once()
    if not attempts:
        return r
    if r.outcome == SKIP:
        r = attempts.pop()
        r.notes.append("a rerun was skipped; this is the last failed attempt")
    elif r.outcome == PASS:
        r.outcome = FLAKY
    r.attempts = [a.to_dict() for a in attempts]
    return r


def nothing_ran(results: Sequence[Result]) -> str | None:
    """Why a strict gate refuses this run (no case passed or failed), else None."""
    if any(r.outcome in (PASS, FAIL, FLAKY) for r in results):
        return None
    if not results:
        return "strict: nothing ran"
    reasons = Counter(r.message for r in results)
    top, n = reasons.most_common(1)[0]
    more = f" (and {len(reasons) - 1} other reason(s))" if len(reasons) > 1 else ""
    return f"strict: nothing ran: all {len(results)} case(s) skipped, {n} with: {top}{more}"


@dataclass
class Verdict:
    """Exit status of a run and the lines that say why."""

    status: int
    reasons: list[str]


def verdict(results: Sequence[Result], *, strict: bool, comparison: Comparison | None,
            allow_new_skips: bool = False) -> Verdict:
    """The gate's decision (see the module docstring)."""
    if comparison is not None:
        reasons = comparison.gating(allow_new_skips)
    else:
        reasons = [f"failed: {r.headline()}" for r in results
                   if r.outcome == FAIL and not r.known]
    if strict:
        empty = nothing_ran(results)
        if empty:
            reasons.append(empty)
    return Verdict(1 if reasons else 0, reasons)
