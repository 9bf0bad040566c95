"""Side by side with CRIU: the ratio table (ours / CRIU) and the sweeps' per-unit costs.

Formatting only, over report.Result; nothing here measures. Ratios are ours / CRIU, as in
issue 14 and DESIGN.md section 8: below 1 the bundled engine took less time.
"""

from __future__ import annotations

from bench.report import REF_LABEL, Result, fmt, reference_for, table
from bench.schedule import SweepKind

RATIO_HEADERS = ["workload", "dump", "restore", "dump+restore", "d+r by rep",
                 "ours s d/r/d+r", "criu s d/r/d+r", "note"]
LAZY_HEADERS = ["workload", "dump", "ready / resume / all pages in",
                "ours s d/ready/resume/all-in", "criu s d/ready/resume/all-in", "note"]
D_R = ("dump_s", "restore_s")


def ratio(ours: float | None, theirs: float | None) -> str:
    """ours / theirs to two decimals, '-' when either is missing."""
    if not ours or not theirs:
        return "-"
    return f"{ours / theirs:.2f}"


def paired_ratios(ours: Result | None, criu: Result | None,
                  keys: tuple[str, ...] = D_R) -> list[float]:
    """ours / criu of the sum of keys, rep by rep: the engines run in turn (A B A B), so
    rep i of each was measured one right after the other, in the same machine state."""
    if ours is None or criu is None:
        return []
    theirs = {s["rep"]: sum(s[k] for k in keys) for s in criu.samples
              if "rep" in s and all(s.get(k) is not None for k in keys)}
    return [sum(s[k] for k in keys) / theirs[s["rep"]] for s in ours.samples
            if s.get("rep") in theirs and theirs[s["rep"]] > 0
            and all(s.get(k) is not None for k in keys)]


def spread(ratios: list[float]) -> str:
    """The lowest and highest of per-rep ratios ('0.91-1.03'), '-' without any: how far
    the medians' ratio may be noise."""
    if not ratios:
        return "-"
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def _pick(results: list[Result], scenario: str, cold: bool) -> list[tuple[str, Result | None,
                                                                          Result | None]]:
    """(workload, bundled, criu) per workload of one scenario, in the order measured."""
    mine = [r for r in results if r.scenario == scenario and r.cold == cold]
    out = []
    for wl in dict.fromkeys(r.workload for r in mine):
        group = {r.engine: r for r in mine if r.workload == wl}
        out.append((wl, group.get("bundled"), group.get("criu")))
    return out


def _figures(r: Result | None, keys: tuple[str, ...], total: bool) -> str:
    """Medians of keys (and of their per-rep sum) as a/b/c, or why there are none."""
    if r is None:
        return "not run"
    if r.unsupported:
        return "unsupported"
    if not r.samples:
        return "FAILED" if r.errors else "-"
    vals = [fmt(r.median(k)) for k in keys]
    if total:
        vals.append(fmt(r.median_sum(*keys)))
    return "/".join(vals)


def _note(ours: Result | None, criu: Result | None, ref: bool) -> str:
    """What makes a row's ratios weaker: a side that failed, did not verify, or the
    reference standing in for a criu that did not run."""
    notes = []
    for r in (ours, criu):
        if r is None:
            continue
        if r.errors:
            notes.append(f"{r.engine}: {r.errors[0].splitlines()[0][:80]}")
        elif r.verified().startswith("NO"):
            notes.append(f"{r.engine}: restored workload failed its check")
    if ref:
        notes.append(f"criu = {REF_LABEL}")
    return "; ".join(notes)


def _label(r: Result | None, wl: str, cold: bool) -> str:
    text = r.describe if r is not None else wl
    return f"{text}, cold cache" if cold else text


def cycle_rows(results: list[Result], cold: bool) -> list[list[str]]:
    """One row per cycle workload: dump, restore and dump+restore ratios, and the range
    of the dump+restore ratios rep by rep (paired_ratios).

    A criu that produced no samples is replaced by the DESIGN.md reference when the run
    used the reference size (warm rows only: the reference was taken warm)."""
    rows = []
    for wl, ours, criu in _pick(results, "cycle", cold):
        if ours is None:
            continue  # criu alone: nothing to compare
        ref = None if cold or (criu is not None and criu.samples) else \
            reference_for(wl, ours.size_args)
        if ref is not None:
            c_d, c_r = ref["dump_s"], ref["restore_s"]
            c_dr, c_text = c_d + c_r, f"{fmt(c_d)}/{fmt(c_r)}/{fmt(c_d + c_r)}"
        else:
            c_d, c_r = _med(criu, "dump_s"), _med(criu, "restore_s")
            c_dr = criu.median_sum(*D_R) if criu is not None else None
            c_text = _figures(criu, D_R, True)
        rows.append([_label(ours, wl, cold), ratio(ours.median("dump_s"), c_d),
                     ratio(ours.median("restore_s"), c_r),
                     ratio(ours.median_sum(*D_R), c_dr),
                     spread(paired_ratios(ours, None if ref is not None else criu)),
                     _figures(ours, D_R, True), c_text, _note(ours, criu, ref is not None)])
    return rows


def lazy_rows(results: list[Result], cold: bool) -> list[list[str]]:
    """Lazy restore: dump ratio, then daemon ready (its start to its socket) / resume
    (restore returns) / all pages in."""
    rows = []
    keys = ("dump_s", "daemon_ready_s", "restore_s", "all_in_s")
    for wl, ours, criu in _pick(results, "lazy", cold):
        if ours is None:
            continue
        both = " / ".join(ratio(ours.median(k), _med(criu, k)) for k in keys[1:])
        rows.append([f"lazy: {_label(ours, wl, cold)}",
                     ratio(ours.median("dump_s"), _med(criu, "dump_s")), both,
                     _figures(ours, keys, False), _figures(criu, keys, False),
                     _note(ours, criu, False)])
    return rows


def _med(r: Result | None, key: str) -> float | None:
    return r.median(key) if r is not None else None


def ratio_tables(results: list[Result]) -> str:
    """The table of issue 14: every workload, warm then cold, then lazy restore."""
    cycle = cycle_rows(results, False) + cycle_rows(results, True)
    lazy = lazy_rows(results, False) + lazy_rows(results, True)
    parts = [table(RATIO_HEADERS, cycle)]
    if lazy:
        parts.append(table(LAZY_HEADERS, lazy))
    return "\n\n".join(parts)


def slope(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares (slope, intercept) of y over x; None with fewer than 2 distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    k = sum((x - mx) * (y - my) for x, y in points) / sxx
    return k, my - k * mx


def _series(results: list[Result], engine: str, key: str) -> list[tuple[float, float]]:
    """(units, median of key) of one engine's points that have the figure."""
    out = []
    for r in sorted((r for r in results if r.engine == engine), key=lambda r: r.units):
        v = r.median(key)
        if v is not None:
            out.append((float(r.units), v))
    return out


def _marginal(series: list[tuple[float, float]], units: int, scale: float) -> str:
    """Cost per unit from the previous point to this one (shows where growth bends)."""
    idx = next((i for i, (x, _) in enumerate(series) if x == units), None)
    if not idx:
        return "-"
    (x0, y0), (x1, y1) = series[idx - 1], series[idx]
    return f"{(y1 - y0) / (x1 - x0) * scale:.3g}"


def sweep_table(kind: SweepKind, results: list[Result]) -> str:
    """Per point and engine: dump and restore medians, marginal per-unit costs and (on our
    row) the dump+restore ratio with its range rep by rep; how many points are at or
    below CRIU's time; then each engine's least-squares per-unit cost (its fixed part is
    the intercept), and ours/criu."""
    mine = sorted((r for r in results if r.scenario == "sweep" and r.sweep == kind.name),
                  key=lambda r: (r.units, r.engine != "bundled"))
    engines = list(dict.fromkeys(r.engine for r in mine))
    series = {(e, k): _series(mine, e, k) for e in engines for k in D_R}
    rows = []
    for r in mine:
        if r.unsupported or not r.samples:
            why = f"unsupported: {r.unsupported}" if r.unsupported else \
                "FAILED: " + (r.errors[0] if r.errors else "no sample")
            rows.append([f"{r.units} {kind.unit}", r.engine, why])
            continue
        rows.append([f"{r.units} {kind.unit}", r.engine, fmt(r.median("dump_s")),
                     fmt(r.median("restore_s")),
                     _marginal(series[r.engine, "dump_s"], r.units, kind.cost_scale),
                     _marginal(series[r.engine, "restore_s"], r.units, kind.cost_scale),
                     _point_ratio(r, mine), r.verified()])
    headers = ["point", "engine", "dump s", "restore s", f"dump {kind.cost_unit}",
               f"restore {kind.cost_unit}", "d+r ours/criu (by rep)", "verified"]
    lines = [table(headers, rows), "", _at_or_below(kind, mine)]
    fits: dict[tuple[str, str], tuple[float, float] | None] = {
        key: slope(pts) for key, pts in series.items()}
    for e in engines:
        lines.append(f"{e}: " + ", ".join(_fit_text(k, fits[e, k], kind) for k in D_R))
    if {"bundled", "criu"} <= set(engines):
        lines.append("ours/criu per unit: " + ", ".join(
            f"{k[:-2]} {_fit_ratio(fits['bundled', k], fits['criu', k])}" for k in D_R))
    return "\n".join(lines)


def _criu_at(r: Result, results: list[Result]) -> Result | None:
    """CRIU's result at the sweep point of `r`."""
    return next((c for c in results if c.engine == "criu" and c.units == r.units), None)


def _point_ratio(r: Result, results: list[Result]) -> str:
    """On our row: dump+restore ours / criu of the medians, and its range rep by rep."""
    criu = _criu_at(r, results) if r.engine == "bundled" else None
    if criu is None:
        return ""
    value = ratio(r.median_sum(*D_R), criu.median_sum(*D_R))
    return f"{value} ({spread(paired_ratios(r, criu))})" if value != "-" else "-"


def _at_or_below(kind: SweepKind, results: list[Result]) -> str:
    """How many points' dump+restore median is at or below CRIU's, naming those above
    with their range rep by rep (a range across 1: some reps below CRIU, some above)."""
    medians = [(r, r.median_sum(*D_R), c.median_sum(*D_R)) for r in results
               if r.engine == "bundled" and (c := _criu_at(r, results)) is not None]
    measured = [(r, ours, theirs) for r, ours, theirs in medians if ours and theirs]
    if not measured:
        return "dump+restore against criu: no point with both engines measured"
    above = [f"{r.units} {kind.unit} {_point_ratio(r, results)}"
             for r, ours, theirs in measured if ours > theirs]
    return (f"dump+restore at or below criu at {len(measured) - len(above)} of "
            f"{len(measured)} points" + (f"; above: {', '.join(above)}" if above else ""))


def _fit_text(key: str, fit: tuple[float, float] | None, kind: SweepKind) -> str:
    if fit is None:
        return f"{key[:-2]} -"
    k, c = fit
    return f"{key[:-2]} {k * kind.cost_scale:.3g} {kind.cost_unit} ({c:+.3f} s at 0)"


def _fit_ratio(ours: tuple[float, float] | None, criu: tuple[float, float] | None) -> str:
    """Ratio of the slopes; none when a slope is not above 0 (that is noise, not a cost)."""
    if ours is None or criu is None:
        return "-"
    if ours[0] <= 0 or criu[0] <= 0:
        return "- (a slope <= 0: noise, more reps or points needed)"
    return f"{ours[0] / criu[0]:.2f}"
