"""Medians, the reference figures of DESIGN.md section 8, and the printed tables."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

MIB = 1 << 20
REF_LABEL = "CRIU 4.2 reference (DESIGN.md)"

# DESIGN.md section 8: wall time of the criu process, medians, on these machines.
# "size" is the workload size the figure was taken at; ratios are only printed when
# the benchmark ran the same size (figures are measured, never scaled).
REFERENCE = {
    "anon": {"dump_s": 1.6, "restore_s": 0.65, "size": ["--mib", "1024"]},
    "maps": {"dump_s": 2.2, "restore_s": 0.31, "size": ["--vmas", "30000"],
             "note": "reference process had 30,743 VMAs, 80 MiB"},
    "shm": {"dump_s": 0.08, "restore_s": 0.08, "size": ["--mib", "64"]},
    "lazy": {"restore_s": 0.02, "all_in_s": [0.4, 0.8], "size": ["--mib", "1024"]},
    "incremental": {"result": "fails: criu incremental dumps need soft-dirty, absent here"},
}


@dataclass
class Result:
    """All repetitions of one scenario x workload x engine."""

    scenario: str  # cycle | incremental | lazy | overhead | migrate | sweep
    workload: str
    describe: str
    engine: str
    size_args: list[str]
    samples: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unsupported: str | None = None  # the engine says it cannot: not run, not a failure
    chain_note: str = ""  # migrate: how the pre-dump chain was taken, or why not
    cold: bool = False  # the image was evicted from the page cache before each restore
    sweep: str = ""  # sweep: which one (memory | vmas | procs)
    units: int = 0  # sweep: the point's size in the sweep's unit

    def median(self, key: str) -> float | None:
        """Median of key over the repetitions that produced it."""
        vals = [s[key] for s in self.samples if s.get(key) is not None]
        return statistics.median(vals) if vals else None

    def median_sum(self, *keys: str) -> float | None:
        """Median over the repetitions of the sum of keys (e.g. dump_s + restore_s)."""
        vals = [sum(s[k] for k in keys) for s in self.samples
                if all(s.get(k) is not None for k in keys)]
        return statistics.median(vals) if vals else None

    def verified(self) -> str:
        """'yes' when every repetition's restored workload passed its own check."""
        done = [s for s in self.samples if "verified" in s]
        if not done:
            return "-"
        bad = [s["verify_detail"] for s in done if not s["verified"]]
        return f"NO ({len(bad)}/{len(done)}: {bad[0]})" if bad else f"yes ({len(done)})"

    def medians(self) -> dict[str, float]:
        """Median of every numeric figure."""
        keys = {k for s in self.samples for k, v in s.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return {k: self.median(k) for k in sorted(keys)}

    def to_json(self) -> dict:
        """Raw samples, medians and errors."""
        return {"scenario": self.scenario, "workload": self.workload,
                "describe": self.describe, "engine": self.engine,
                "size_args": self.size_args, "samples": self.samples,
                "medians": self.medians(), "errors": self.errors,
                "unsupported": self.unsupported, "cold": self.cold,
                "sweep": self.sweep, "units": self.units,
                "verified": self.verified()}


def not_measured(r: Result) -> list[str] | None:
    """A spanning row for a result without figures (unsupported or failed), else None."""
    if r.unsupported:
        return [r.workload, r.engine, f"not supported by the engine: {r.unsupported}"]
    if r.errors and not r.samples:
        return [r.workload, r.engine, "FAILED: " + r.errors[0]]
    return None


def reference_for(key: str, size_args: list[str]) -> dict | None:
    """The DESIGN.md figure for key when the benchmark ran at the reference size."""
    ref = REFERENCE.get(key)
    if ref is None or ref.get("size") != size_args:
        return None
    return ref


def fmt(v: float | None, spec: str = ".3f") -> str:
    """A figure, or '-' when there is none."""
    return "-" if v is None else format(v, spec)


def mbps(nbytes: float | None, secs: float | None) -> str:
    """10^6 bytes per second."""
    if not nbytes or not secs:
        return "-"
    return f"{nbytes / 1e6 / secs:.0f}"


def mib(nbytes: float | None) -> str:
    """bytes -> MiB text."""
    return "-" if nbytes is None else f"{nbytes / MIB:.1f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain left-aligned text table; a 3-cell row is (key, key, message spanning the rest)."""
    if not rows:
        return "(nothing measured)"
    full = [r for r in rows if len(r) == len(headers)]
    widths = [max(len(r[i]) for r in [headers, *full]) for i in range(len(headers))]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
           "  ".join("-" * w for w in widths)]
    for r in rows:
        if len(r) == len(headers):
            out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        else:
            lead = "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False))
            out.append(f"{lead}  {' | '.join(r[-1].splitlines())}")
    return "\n".join(out)


def cycle_table(results: list[Result], cold: bool = False) -> str:
    """workload, engine, dump s, restore s, CPU, MB/s, image MiB, RSS MiB, verified
    (ratios: bench/compare.py); cold: the rows whose image was evicted before restore."""
    rows = []
    cycles = [r for r in results if r.scenario == "cycle" and r.cold == cold]
    for wl in dict.fromkeys(r.workload for r in cycles):
        group = [r for r in cycles if r.workload == wl]
        ref = None if cold else reference_for(wl, group[0].size_args)
        criu = next((r for r in group if r.engine == "criu"), None)
        for r in group:
            rows.append(not_measured(r) or _cycle_row(r, cold))
        if (criu is None or not criu.samples) and ref is not None:
            rows.append([wl, REF_LABEL, fmt(ref["dump_s"]), fmt(ref["restore_s"]),
                         "-", "-", "-", "-", "-"])
    headers = ["workload", "engine", "dump s", "restore s", "CPU s d/r", "MB/s d/r",
               "image MiB", "RSS MiB d/r", "verified"]
    return table(headers + (["cache left MiB"] if cold else []), rows)


def _cycle_row(r: Result, cold: bool) -> list[str]:
    img = r.median("image_bytes")
    rss = (f"{fmt(_kib_to_mib(r.median('dump_rss_kib')), '.0f')}/"
           f"{fmt(_kib_to_mib(r.median('restore_rss_kib')), '.0f')}")
    cpu = f"{fmt(r.median('dump_cpu_s'), '.2f')}/{fmt(r.median('restore_cpu_s'), '.2f')}"
    return [r.workload, r.engine, fmt(r.median("dump_s")), fmt(r.median("restore_s")), cpu,
            f"{mbps(img, r.median('dump_s'))}/{mbps(img, r.median('restore_s'))}",
            mib(img), rss, r.verified()] + ([mib(r.median("cache_left_bytes"))] if cold else [])


def incremental_table(results: list[Result]) -> str:
    """pre-dump, then a dump of what changed since, then restore of the chain."""
    rows = []
    for r in results:
        if r.scenario != "incremental":
            continue
        if (row := not_measured(r)) is not None:
            rows.append(row)
            continue
        rows.append([r.workload, r.engine, fmt(r.median("predump_s")),
                     mib(r.median("predump_bytes")), mib(r.median("dirtied_bytes")),
                     fmt(r.median("dump_s")), mib(r.median("image_bytes")),
                     fmt(r.median("restore_s")), r.verified()])
    rows.append(["anon", REF_LABEL, REFERENCE["incremental"]["result"]])
    headers = ["workload", "engine", "pre-dump s", "pre MiB", "dirtied MiB", "dump s",
               "dump MiB", "restore s", "verified"]
    return table(headers, rows)


def lazy_table(results: list[Result]) -> str:
    """Lazy restore: when restore returns, when every page is in."""
    rows = []
    ref_shown = False
    for r in results:
        if r.scenario != "lazy":
            continue
        name = f"{r.workload}, cold cache" if r.cold else r.workload
        if (row := not_measured(r)) is not None:
            rows.append([name, *row[1:]])
        else:
            rows.append([name, r.engine, fmt(r.median("dump_s")),
                         fmt(r.median("daemon_ready_s")),
                         fmt(r.median("restore_s")), fmt(r.median("all_in_s")),
                         r.verified(), mib(r.median("cache_left_bytes"))])
        ref = reference_for("lazy", r.size_args)
        if ref is not None and not ref_shown:
            ref_shown = True
            lo, hi = ref["all_in_s"]
            rows.append([r.workload, REF_LABEL, "-", "-", fmt(ref["restore_s"]),
                         f"{lo}-{hi}", "-", "-"])
    # daemon ready: from the lazy-pages daemon's start to its socket (ours checks the
    # records, and each page only when it copies it); restore and all pages in count
    # from the restore's start.
    headers = ["workload", "engine", "dump s", "daemon ready s", "restore returns s",
               "all pages in s", "verified", "cache left MiB (cold)"]
    return table(headers, rows)


def overhead_table(results: list[Result]) -> str:
    """The harness's own time per iteration."""
    rows = []
    for r in results:
        if r.scenario != "overhead":
            continue
        if r.errors and not r.samples:
            rows.append([r.workload, "FAILED: " + r.errors[0]])
            continue
        rows.append([r.workload, fmt(r.median("runner_s")), fmt(r.median("engine_s")),
                     fmt(r.median("overhead_s")), fmt(r.median("nocr_s")),
                     fmt(r.median("per_iter_s"))])
    headers = ["test", "runner.py --iters 1 s", "engine dump+restore s",
               "harness overhead s", "runner.py --nocr s", "per extra iteration s"]
    return table(headers, rows)


def _kib_to_mib(kib: float | None) -> float | None:
    return None if kib is None else kib / 1024


def migrate_table(results: list[Result]) -> str:
    """Live migration: frozen time and bytes of a full dump against N pre-dumps + final
    dump, restore of each; then the goals of issue 17, met or not."""
    rows, goals = [], []
    for r in results:
        if r.scenario != "migrate":
            continue
        if (row := not_measured(r)) is not None:
            rows.append(row)
            continue
        full_f, final_f = r.median("full_frozen_s"), r.median("chain_final_frozen_s")
        rows.append([r.workload, r.engine, fmt(full_f), mib(r.median("full_bytes")),
                     fmt(r.median("full_restore_s")), r.chain_note,
                     fmt(r.median("chain_pre_frozen_max_s")), fmt(final_f),
                     mib(r.median("chain_final_bytes")), mib(r.median("chain_bytes")),
                     fmt(r.median("chain_restore_s")), r.verified()])
        if r.engine == "bundled" and full_f and final_f is not None:
            goals.append(_goals(r, full_f, final_f))
    headers = ["rate", "engine", "full: frozen s", "MiB", "restore s", "chain",
               "pre max frozen s", "final frozen s", "final MiB", "chain MiB",
               "chain restore s", "verified"]
    return "\n".join([table(headers, rows), *goals])


def _goals(r: Result, full_f: float, final_f: float) -> str:
    """Frozen time of the final dump against a tenth of the full dump's (the goal is for
    10 MiB/s), and the restore of the chain against that of the full image."""
    ok = final_f <= full_f / 10
    line = (f"{r.workload}: final dump frozen {final_f:.3f} s = {final_f / full_f:.1%} of "
            f"the full dump's {full_f:.3f} s (goal <= 10%"
            f"{' at 10 MiB/s' if r.workload != '10 MiB/s' else ''}: "
            f"{'met' if ok else 'NOT met'})")
    full_r, chain_r = r.median("full_restore_s"), r.median("chain_restore_s")
    if full_r and chain_r:
        line += (f"; restore of the chain {chain_r:.3f} s vs full image {full_r:.3f} s "
                 f"({chain_r / full_r:.2f}x)")
    return line
