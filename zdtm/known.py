"""Known failures: a YAML list of cases expected to fail, each with its reason.

    - test: static/maps06      # test name as the runner prints it (required)
      flavor: uns              # h, ns, uns or "*" (default "*": every flavour)
      engine: criu             # bundled, criu, nocr or "*" (default "*")
      reason: criu restores the shared mapping through a memfd (required)
      expires: 2027-01-31      # optional: after this date the entry no longer applies

A failure matching an entry is "known": reported apart, it does not fail the gate.  A
known case that passes is reported too (the entry may be stale), and so is an expired entry.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from zdtm.result import FAIL, SKIP, Result

ANY = "*"
_KEYS = {"test", "flavor", "engine", "reason", "expires"}


class KnownError(ValueError):
    """A known-failures file that cannot be used; the message names the file and entry."""


@dataclass(frozen=True)
class KnownFailure:
    """One entry of the file."""

    test: str
    flavor: str
    engine: str
    reason: str
    expires: dt.date | None = None

    def matches(self, r: Result) -> bool:
        """True when the entry is about ``r``'s test, flavour and engine."""
        return (self.test == r.test and self.flavor in (ANY, r.flavor)
                and self.engine in (ANY, r.engine))

    def expired(self, today: dt.date) -> bool:
        """True after the expiry date."""
        return self.expires is not None and today > self.expires

    def describe(self) -> str:
        """``static/a [h] engine criu``"""
        return f"{self.test} [{self.flavor}] engine {self.engine}"


def _entry(path: Path, i: int, raw: object) -> KnownFailure:
    where = f"{path}: entry {i + 1}"
    if not isinstance(raw, dict):
        raise KnownError(f"{where}: must be a mapping with test and reason")
    unknown = set(raw) - _KEYS
    if unknown:
        raise KnownError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(_KEYS)}")
    for key in ("test", "reason"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise KnownError(f"{where}: '{key}' is required (a non-empty string)")
    expires = raw.get("expires")
    if expires is not None and not isinstance(expires, dt.date):
        try:
            expires = dt.date.fromisoformat(str(expires))
        except ValueError:
            raise KnownError(f"{where}: 'expires' must be a date (YYYY-MM-DD), "
                             f"not {expires!r}") from None
    return KnownFailure(test=raw["test"], flavor=str(raw.get("flavor", ANY)),
                        engine=str(raw.get("engine", ANY)), reason=raw["reason"].strip(),
                        expires=expires)


def load(path: Path) -> list[KnownFailure]:
    """Read a known-failures file (an empty file is an empty list)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise KnownError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise KnownError(f"{path}: not YAML: {exc}") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise KnownError(f"{path}: must be a YAML list of entries")
    return [_entry(path, i, raw) for i, raw in enumerate(data)]


@dataclass
class KnownReport:
    """What the known-failures file did to a set of results."""

    known: list[Result]                 # failures the file expects
    passing: list[tuple[Result, KnownFailure]]  # expected to fail but did not
    expired: list[KnownFailure]         # entries past their date (ignored)


def reason_for(entries: Sequence[KnownFailure], r: Result,
               today: dt.date | None = None) -> str | None:
    """The reason of the first unexpired entry matching a failed ``r``, else None."""
    today = today or dt.date.today()
    if r.outcome != FAIL:
        return None
    return next((e.reason for e in entries if e.matches(r) and not e.expired(today)), None)


def apply(entries: Sequence[KnownFailure], results: Sequence[Result],
          today: dt.date | None = None) -> KnownReport:
    """Set ``known`` on each failure an unexpired entry matches; say what else it found."""
    today = today or dt.date.today()
    live = [e for e in entries if not e.expired(today)]
    report = KnownReport([], [], [e for e in entries if e.expired(today)])
    for r in results:
        entry = next((e for e in live if e.matches(r)), None)
        if entry is None:
            r.known = None
        elif r.outcome == FAIL:
            r.known = entry.reason
            report.known.append(r)
        else:
            r.known = None
            if r.outcome != SKIP:
                report.passing.append((r, entry))
    return report
