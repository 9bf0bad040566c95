"""bench/compare.py: the ratio table (ours / CRIU) and the sweeps' per-unit costs, from
fake samples. Nothing is measured here."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(REPO))

from bench import compare, report
from bench.report import Result
from bench.schedule import SWEEP_KINDS


def _result(engine: str, samples: list[dict], workload: str = "anon",
            size: list[str] | None = None, scenario: str = "cycle", cold: bool = False,
            sweep: str = "", units: int = 0) -> Result:
    r = Result(scenario, workload, f"{workload} thing", engine, size or ["--mib", "64"],
               cold=cold, sweep=sweep, units=units)
    r.samples = samples
    return r


def _dr(*pairs: tuple[float, float]) -> list[dict]:
    return [{"dump_s": d, "restore_s": r, "verified": True, "verify_detail": "PASS",
             "rep": i + 1} for i, (d, r) in enumerate(pairs)]


def _row(text: str, label: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(label))
    return line[len(label):].split()


def test_ratio_row_is_ours_over_criu_of_medians() -> None:
    """dump and restore: ratio of the medians; dump+restore: of the medians of per-rep
    sums (ours 2.0, 2.5, 2.25 -> 2.25; criu 1.5, 1.0, 1.25 -> 1.25)."""
    ours = _result("bundled", _dr((1.0, 1.0), (0.5, 2.0), (2.0, 0.25)))
    criu = _result("criu", _dr((0.5, 1.0), (0.25, 0.75), (1.0, 0.25)))
    rows = compare.cycle_rows([ours, criu], cold=False)
    # rep by rep: 2.0 / 1.5, 2.5 / 1.0, 2.25 / 1.25
    assert rows == [["anon thing", "2.00", "1.33", "1.80", "1.33-2.50", "1.000/1.000/2.250",
                     "0.500/0.750/1.250", ""]]


def test_ratio_table_rows_for_every_workload_cold_apart() -> None:
    """Every workload gets a row; cold results are rows of their own, labelled."""
    results = [
        _result("bundled", _dr((2.0, 3.0))), _result("criu", _dr((1.0, 1.0))),
        _result("bundled", _dr((0.3, 0.2)), "tree"), _result("criu", _dr((0.1, 0.1)), "tree"),
        _result("bundled", _dr((2.0, 4.0)), cold=True),
        _result("criu", _dr((1.0, 2.0)), cold=True),
    ]
    text = compare.ratio_tables(results)
    assert _row(text, "anon thing, cold cache")[:3] == ["2.00", "2.00", "2.00"]
    assert _row(text, "anon thing ")[:3] == ["2.00", "3.00", "2.50"]
    assert _row(text, "tree thing")[:3] == ["3.00", "2.00", "2.50"]


def test_criu_missing_or_failed_gives_no_ratio() -> None:
    """A criu that failed leaves '-' and says why; no criu at a non-reference size too."""
    ours = _result("bundled", _dr((1.0, 1.0)))
    criu = _result("criu", [])
    criu.errors.append("dump: Error (criu/cr-dump.c:1): can't dump")
    (row,) = compare.cycle_rows([ours, criu], cold=False)
    assert row[1:5] == ["-", "-", "-", "-"] and row[6] == "FAILED"
    assert "criu: dump: Error (criu/cr-dump.c:1): can't dump" in row[7]
    (alone,) = compare.cycle_rows([ours], cold=False)
    assert alone[1:5] == ["-", "-", "-", "-"] and alone[6] == "not run"


def test_reference_stands_in_only_at_its_size_and_warm() -> None:
    """Without a measured criu, the DESIGN.md figures (1.6 s / 0.65 s at 1 GiB) are used
    at the reference size, marked; never for cold rows."""
    ours = _result("bundled", _dr((3.2, 1.3)), size=["--mib", "1024"])
    (row,) = compare.cycle_rows([ours], cold=False)
    assert row[1:5] == ["2.00", "2.00", "2.00", "-"]  # (no reps of the reference)
    assert report.REF_LABEL in row[7]
    cold = _result("bundled", _dr((3.2, 1.3)), size=["--mib", "1024"], cold=True)
    (cold_row,) = compare.cycle_rows([cold], cold=True)
    assert cold_row[1:4] == ["-", "-", "-"]


def test_unverified_restore_is_noted() -> None:
    """A row whose restored workload failed its own check says so next to its ratios."""
    ours = _result("bundled", _dr((1.0, 1.0)))
    ours.samples[0].update(verified=False, verify_detail="FAIL: anon word 3 wrong")
    (row,) = compare.cycle_rows([ours, _result("criu", _dr((1.0, 1.0)))], cold=False)
    assert "bundled: restored workload failed its check" in row[7]


def test_lazy_row_ready_resume_and_all_in() -> None:
    """Lazy: the restore cell is daemon ready / resume / all pages in, each ours over
    criu."""
    keys = ("dump_s", "daemon_ready_s", "restore_s", "all_in_s")
    ours = _result("bundled", [dict(zip(keys, (1.0, 0.01, 0.2, 1.5), strict=True))],
                   scenario="lazy")
    criu = _result("criu", [dict(zip(keys, (0.5, 0.02, 0.1, 0.5), strict=True))],
                   scenario="lazy")
    (row,) = compare.lazy_rows([ours, criu], cold=False)
    assert row[:3] == ["lazy: anon thing", "2.00", "0.50 / 2.00 / 3.00"]
    assert row[3:5] == ["1.000/0.010/0.200/1.500", "0.500/0.020/0.100/0.500"]


def test_slope_is_least_squares() -> None:
    """Exact on a line; needs two distinct x."""
    k, c = compare.slope([(1000.0, 0.12), (2000.0, 0.14), (4000.0, 0.18)]) or (0.0, 0.0)
    assert abs(k - 2e-5) < 1e-12 and abs(c - 0.1) < 1e-9
    assert compare.slope([(5.0, 1.0), (5.0, 2.0)]) is None
    assert compare.slope([]) is None


def test_sweep_table_per_unit_costs() -> None:
    """Per-unit cost per engine (us per VMA here), marginal per point, and ours/criu."""
    kind = SWEEP_KINDS["vmas"]
    results = []
    for n in (1000, 3000, 10000):
        for eng, per_vma in (("bundled", 20e-6), ("criu", 10e-6)):
            results.append(_result(eng, _dr((0.1 + per_vma * n, 0.05 + per_vma / 2 * n)),
                                   f"{n} VMAs", scenario="sweep", sweep="vmas", units=n))
    text = compare.sweep_table(kind, results)
    assert "bundled: dump 20 us/VMA (+0.100 s at 0), restore 10 us/VMA (+0.050 s at 0)" \
        in text, text
    assert "criu: dump 10 us/VMA" in text
    assert "ours/criu per unit: dump 2.00, restore 2.00" in text
    # marginal cost from 1000 to 3000 VMAs: (0.16 - 0.12) / 2000 s = 20 us
    assert _row(text, "3000 VMAs")[:5] == ["bundled", "0.160", "0.080", "20", "10"]
    assert _row(text, "1000 VMAs")[3:5] == ["-", "-"]
    # dump+restore ours / criu on our row: (0.12 + 0.06) / (0.11 + 0.055)
    assert _row(text, "1000 VMAs")[5:7] == ["1.09", "(1.09-1.09)"]
    assert "dump+restore at or below criu at 0 of 3 points; above: 1000 VMAs 1.09 " \
           "(1.09-1.09), 3000 VMAs 1.23 (1.23-1.23), 10000 VMAs 1.50 (1.50-1.50)" in text


def test_sweep_ratio_needs_positive_slopes() -> None:
    """A slope at or below 0 (noise on a busy machine) gives no per-unit ratio."""
    kind = SWEEP_KINDS["procs"]
    results = [_result(e, _dr((d, d)), f"{n} processes", scenario="sweep", sweep="procs",
                       units=n)
               for n, pairs in ((1, (("bundled", 0.5), ("criu", 0.1))),
                                (10, (("bundled", 0.4), ("criu", 0.2))))
               for e, d in pairs]
    text = compare.sweep_table(kind, results)
    assert "bundled: dump -11.1 ms/process" in text, text
    assert "ours/criu per unit: dump - (a slope <= 0: noise" in text


def test_paired_ratios_pair_reps_not_positions() -> None:
    """Rep i of ours is divided by rep i of criu (engines run in turn); a rep one side
    lacks (it failed) pairs with nothing."""
    ours = _result("bundled", _dr((1.0, 1.0), (3.0, 1.0), (1.0, 2.0)))
    criu = _result("criu", _dr((1.0, 1.0), (2.0, 2.0), (1.0, 0.5)))
    del criu.samples[1]  # its rep 2 failed
    assert compare.paired_ratios(ours, criu) == [1.0, 2.0]
    assert compare.spread([1.0, 2.0]) == "1.00-2.00" and compare.spread([]) == "-"
    assert compare.paired_ratios(ours, None) == []


def test_sweep_names_the_points_above_criu() -> None:
    """The summary counts the points whose dump+restore median is at or below criu's and
    names the others with their ratio; our row shows the rep-by-rep range."""
    kind = SWEEP_KINDS["procs"]
    reps = {1: (((0.1, 0.1), (0.12, 0.1), (0.1, 0.12)), ((0.2, 0.2), (0.2, 0.25), (0.2, 0.2))),
            10: (((0.5, 0.55), (0.5, 0.55), (0.5, 0.5)), ((0.5, 0.5),) * 3)}
    results = [_result(e, _dr(*pairs), f"{n} processes", scenario="sweep", sweep="procs",
                       units=n)
               for n, (ours, theirs) in reps.items()
               for e, pairs in (("bundled", ours), ("criu", theirs))]
    text = compare.sweep_table(kind, results)
    assert "dump+restore at or below criu at 1 of 2 points; above: 10 processes 1.05 " \
        "(1.00-1.05)" in text, text
    # 1 process: medians of the sums 0.22 / 0.40; reps 0.20/0.40, 0.22/0.45, 0.22/0.40
    assert _row(text, "1 processes")[5:7] == ["0.55", "(0.49-0.55)"], text
    assert _row(text, "10 processes")[5:7] == ["1.05", "(1.00-1.05)"], text
