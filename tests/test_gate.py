"""The gate's parts on plain data: compare, known failures, reruns, strict, shards, merge,
and the validation of results files."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from zdtm import known, shard
from zdtm import results as results_file
from zdtm.compare import compare
from zdtm.gate import nothing_ran, verdict, with_reruns
from zdtm.result import FAIL, FLAKY, PASS, SKIP, Result
from zdtm.results import ResultsError, RunResults


def case(test: str, outcome: str = PASS, flavor: str = "h", engine: str = "bundled",
         duration: float = 1.0) -> Result:
    r = Result(test=test, flavor=flavor, engine=engine, duration=duration)
    if outcome == FAIL:
        r.fail("dump", "engine error", f"{test} broke")
    elif outcome == SKIP:
        r.skip("start", "bundled engine unavailable: no ptrace")
    elif outcome == FLAKY:
        first = case(test, FAIL, flavor, engine)
        r.outcome, r.attempts = FLAKY, [first.to_dict()]
    return r


def test_compare_sorts_every_change() -> None:
    base = [case("s/newfail"), case("s/still", FAIL), case("s/fixed", FAIL), case("s/skipped"),
            case("s/same"), case("s/gone"), case("s/flaky"), case("s/skip_of_fail", FAIL)]
    new = [case("s/newfail", FAIL), case("s/still", FAIL), case("s/fixed"),
           case("s/skipped", SKIP), case("s/same"), case("s/flaky", FLAKY),
           case("s/brand_new", FAIL), case("s/skip_of_fail", SKIP)]
    c = compare(base, new)
    assert [r.test for r in c.new_failures] == ["s/newfail", "s/brand_new"]
    assert [r.test for r in c.still_failing] == ["s/still"]
    assert [r.test for r in c.fixed] == ["s/fixed"]
    assert [n.test for _, n in c.newly_skipped] == ["s/skipped", "s/skip_of_fail"]
    assert [r.test for r in c.flaky] == ["s/flaky"]
    assert [r.test for r in c.not_run] == ["s/gone"]
    gate = c.gating()
    assert gate == ["new failure: s/newfail [h] dump: engine error: s/newfail broke",
                    "new failure: s/brand_new [h] dump: engine error: s/brand_new broke",
                    ("newly skipped (passed in the baseline): s/skipped [h] (bundled engine "
                    "unavailable: no ptrace)")]
    assert len(c.gating(allow_new_skips=True)) == 2
    text = "\n".join(c.lines())
    assert "new failures (2):" in text and "flaky (1):" in text and "fixed (1):" in text


def test_compare_unchanged_run_passes_the_gate() -> None:
    base = [case("s/a"), case("s/b", FAIL), case("s/c", SKIP)]
    c = compare(base, [case("s/a"), case("s/b", FAIL), case("s/c", SKIP)])
    assert c.gating() == [] and [r.test for r in c.still_failing] == ["s/b"]


def _known_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "known.yaml"
    path.write_text(text)
    return path


def test_known_failures_are_apart_and_stale_entries_reported(tmp_path: Path) -> None:
    path = _known_file(tmp_path, """
- {test: s/a, flavor: h, engine: bundled, reason: bug 12}
- {test: s/b, reason: bug 13}
- {test: s/c, reason: old bug, expires: 2020-01-01}
- {test: s/d, engine: criu, reason: criu only}
""")
    entries = known.load(path)
    new = [case("s/a", FAIL), case("s/b"), case("s/c", FAIL), case("s/d", FAIL)]
    report = known.apply(entries, new, today=dt.date(2026, 12, 4))
    assert [r.test for r in report.known] == ["s/a"] and new[0].known == "bug 12"
    assert [(r.test, e.reason) for r, e in report.passing] == [("s/b", "bug 13")]
    assert [e.test for e in report.expired] == ["s/c"]
    c = compare([case("s/a"), case("s/b"), case("s/c"), case("s/d")], new, report)
    assert [r.test for r in c.known] == ["s/a"]
    assert [r.test for r in c.new_failures] == ["s/c", "s/d"]  # expired; other engine
    text = "\n".join(c.lines())
    assert "known failures that passed (stale entry?) (1):" in text
    assert "expired known-failure entries (ignored) (1):" in text
    # without a baseline, the verdict ignores the known failure only
    v = verdict(new, strict=True, comparison=None)
    assert v.status == 1 and len(v.reasons) == 2


@pytest.mark.parametrize(("text", "error"), [
    ("- {test: s/a}", "entry 1: 'reason' is required"),
    ("- {test: s/a, reason: x, flavour: h}", "entry 1: unknown key(s) ['flavour']"),
    ("- {test: s/a, reason: x, expires: soon}", "'expires' must be a date"),
    ("{test: s/a}", "must be a YAML list"),
    ("- [", "not YAML"),
])
def test_known_file_errors_name_file_and_entry(tmp_path: Path, text: str, error: str) -> None:
    path = _known_file(tmp_path, text)
    with pytest.raises(known.KnownError) as exc:
        known.load(path)
    assert str(exc.value).startswith(str(path)) and error in str(exc.value)


def test_reruns_make_flaky_never_pass() -> None:
    outcomes = iter([FAIL, FAIL, PASS])
    seen: list[int] = []
    r = with_reruns(lambda: case("s/a", next(outcomes)), 3, lambda _r, n: seen.append(n))
    assert r.outcome == FLAKY and len(r.attempts) == 2 and seen == [1, 2]
    assert all(a["outcome"] == "fail" for a in r.attempts)
    always = with_reruns(lambda: case("s/a", FAIL), 2)
    assert always.outcome == FAIL and len(always.attempts) == 2
    assert with_reruns(lambda: case("s/a", FAIL), 0).attempts == []
    outcomes = iter([FAIL, SKIP])
    skipped = with_reruns(lambda: case("s/a", next(outcomes)), 3)
    assert skipped.outcome == FAIL and skipped.attempts == []
    assert "a rerun was skipped" in skipped.notes[-1]


def test_strict_refuses_a_run_where_nothing_ran() -> None:
    skipped = [case("s/a", SKIP), case("s/b", SKIP)]
    assert nothing_ran([]) == "strict: nothing ran"
    assert "all 2 case(s) skipped, 2 with: bundled engine unavailable" in nothing_ran(skipped)
    assert verdict(skipped, strict=True, comparison=None).status == 1
    assert verdict(skipped, strict=False, comparison=None).status == 0
    assert verdict([*skipped, case("s/c")], strict=True, comparison=None).status == 0
    # with a baseline, nothing ran still fails a strict gate
    assert verdict(skipped, strict=True, comparison=compare(skipped, skipped)).status == 1


def test_shards_partition_deterministically_and_balance() -> None:
    keys = [(f"s/t{i}", f) for i in range(7) for f in ("h", "ns")]
    parts = shard.assign(keys, 3)
    assert sorted(k for p in parts for k in p) == sorted(keys)  # each case exactly once
    assert parts == shard.assign(list(keys), 3)
    assert [len(p) for p in parts] == [5, 5, 4]
    # one long case gets a shard of its own; the unknown ones count as the median
    seconds = {k: 1.0 for k in keys} | {("s/t0", "h"): 20.0}
    parts = shard.assign(keys, 2, seconds)
    assert parts[0] == [("s/t0", "h")] and len(parts[1]) == 13
    assert shard.select(keys, (2, 2), seconds) == parts[1]
    assert shard.parse("2/5") == (2, 5)
    for bad in ("0/2", "3/2", "x", "1/0", "1/2/3"):
        with pytest.raises(ValueError):
            shard.parse(bad)


def _doc(tmp_path: Path, name: str, cases: list[Result], host: str = "m1") -> Path:
    meta = results_file.start_metadata(engine="bundled", engine_version="in-tree",
                                       argv=["run"], options={}, shard=name)
    results_file.finish_metadata(meta, selected=len(cases), interrupted=False)
    meta["host"] = host
    path = tmp_path / f"{name.replace('/', '-')}.json"
    results_file.save(RunResults(meta, cases), path)
    return path


def test_durations_of_a_results_file_balance_the_shards(tmp_path: Path) -> None:
    """The durations of an earlier run are keyed as the shards' cases are, (test, flavour)."""
    keys = [(f"s/t{i}", "h") for i in range(4)]
    path = _doc(tmp_path, "", [case(t, duration=20.0 if t == "s/t3" else 1.0)
                               for t, _ in keys])
    seconds = results_file.durations(results_file.load(path))
    assert seconds[("s/t3", "h")] == 20.0
    assert shard.assign(keys, 2, seconds) == [[("s/t3", "h")], keys[:3]]


def test_merge_joins_shards_and_refuses_a_case_twice(tmp_path: Path) -> None:
    a = _doc(tmp_path, "1/2", [case("s/a"), case("s/b", FAIL)], host="m1")
    b = _doc(tmp_path, "2/2", [case("s/c", SKIP)], host="m2")
    merged = results_file.merge([(str(a), results_file.load(a)),
                                 (str(b), results_file.load(b))])
    assert [r.test for r in merged.cases] == ["s/a", "s/b", "s/c"]
    assert merged.run["selected"] == 3 and merged.run["shard"] is None
    assert [s["host"] for s in merged.run["shards"]] == ["m1", "m2"]
    with pytest.raises(ResultsError, match=r"s/a \[h\] is in both"):
        results_file.merge([("x", results_file.load(a)), ("y", results_file.load(a))])


def test_results_file_validation_names_file_and_field(tmp_path: Path) -> None:
    path = _doc(tmp_path, "1/1", [case("s/a")])
    doc = json.loads(path.read_text())
    bad = tmp_path / "bad.json"
    for mutate, error in [
        (lambda d: d.update(version=99), "results schema version 99"),
        (lambda d: d.update(schema="x"), "not a zdtm results file"),
        (lambda d: d["cases"][0].update(outcome="great"), "case 0: bad or missing field"),
        (lambda d: d["cases"][0].pop("logs"), "case 0: bad or missing field"),
    ]:
        copy = json.loads(json.dumps(doc))
        mutate(copy)
        bad.write_text(json.dumps(copy))
        with pytest.raises(ResultsError) as exc:
            results_file.load(bad)
        assert str(exc.value).startswith(str(bad)) and error in str(exc.value)
    bad.write_text("{")
    with pytest.raises(ResultsError, match="not JSON"):
        results_file.load(bad)
