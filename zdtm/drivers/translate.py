"""Engine options and feature names of a descriptor, translated for each engine.

Descriptors of CRIU's suite speak criu: ``opts``/``dopts``/``ropts`` hold criu command-line
options and ``feature`` holds ``criu check --feature`` names.  For criu (and any engine other
than the bundled one) options go as written.  For the bundled engine each option is mapped
to an equivalent, or the test SKIPs naming it ("bundled engine: no --tcp-established");
feature names are mapped to the bundled engine's check names, and a name with no equivalent
SKIPs with that name in the reason.  Every mapping used is shown as a note of the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from zdtm.desc import TestDesc
from zdtm.drivers.base import Engine
from zdtm.drivers.criu import FEATURES as CRIU_FEATURES
from zdtm.drivers.criu import feature_options as criu_feature_options

_INHERITS_SESSION = ("the bundled engine always restores a session or process group led "
                     "from outside the tree as inherited (docs/ARCHITECTURE.md, restore)")
#: criu option -> (bundled engine options, dump only?, why they are equivalent)
BUNDLED_OPTIONS: dict[str, tuple[tuple[str, ...], bool, str]] = {
    "--track-mem": (("--track-mem",), True, "same option"),
    "--shell-job": ((), False, _INHERITS_SESSION),
    "-j": ((), False, _INHERITS_SESSION),
}
#: ``criu check --feature`` name -> the bundled engine's ``check --json`` name (same meaning)
CRIU_TO_BUNDLED = {
    "mem_dirty_track": "mem_track",
    "uffd": "uffd",
    "userns": "userns",
    "clone3_set_tid": "clone3_set_tid",
    "get_rseq_conf": "ptrace_rseq_config",
}


@dataclass(frozen=True)
class CrOptions:
    """The options one engine gets for a test, or why it cannot run it."""

    dump: tuple[str, ...] = ()      # pre-dump and dump
    restore: tuple[str, ...] = ()
    skip: str | None = None
    notes: tuple[str, ...] = ()     # mappings used, shown with the result


def cr_options(engine_name: str, test: TestDesc) -> CrOptions:
    """Options for pre-dump/dump and restore of ``test`` with the engine ``engine_name``."""
    dump = (*test.opts, *test.dopts)
    restore = (*test.opts, *test.ropts)
    if engine_name == "bundled":
        return _for_bundled(test, dump, restore)
    if "crlib" in test.flags:
        # CRIU's suite keeps the plugins its crlib tests need in lib/ beside them
        libdir = ("--libdir", str(test.binary.parent / "lib"))
        dump, restore = (*dump, *libdir), (*restore, *libdir)
    if engine_name == "criu":
        implied = tuple(o for o in criu_feature_options(test.feature) if o not in dump)
        notes = tuple(f"criu engine: {o} (test feature)" for o in implied)
        dump, restore = (*dump, *implied), (*restore, *implied)
        return CrOptions(dump, restore, notes=notes)
    return CrOptions(dump, restore)


def _for_bundled(test: TestDesc, dump: Sequence[str], restore: Sequence[str]) -> CrOptions:
    if "crlib" in test.flags:
        return CrOptions(skip="bundled engine: no --libdir (flag crlib: criu plugins)")
    notes: list[str] = []
    mapped = []
    for side in (dump, restore):
        out: list[str] = []
        for word in side:
            if not word.startswith("-"):
                continue  # the value of an option already refused or mapped
            name = word.split("=", 1)[0]
            if name not in BUNDLED_OPTIONS:
                return CrOptions(skip=f"bundled engine: no {name}")
            options, dump_only, why = BUNDLED_OPTIONS[name]
            if not (dump_only and side is restore):
                out += options
            note = f"bundled engine: {name} -> {' '.join(options) or 'nothing'} ({why})"
            if note not in notes:
                notes.append(note)
        mapped.append(tuple(out))
    return CrOptions(mapped[0], mapped[1], notes=tuple(notes))


def missing_features(engine: Engine, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(missing features with reasons, notes on name mappings) of ``engine`` for ``names``."""
    if engine.name == "bundled":
        return _bundled_missing(engine, names)
    if engine.name == "criu":
        # the criu driver maps harness names itself (criu.FEATURES, the one home of that
        # mapping) and probes any other name as a criu feature
        notes = [f"criu engine: feature {n} -> {CRIU_FEATURES[n]}" for n in names
                 if CRIU_FEATURES.get(n) not in (None, n)]
        return engine.missing_features(names), notes
    return engine.missing_features(names), []


def _bundled_missing(engine: Engine, names: Sequence[str]) -> tuple[list[str], list[str]]:
    known = engine.check().features
    missing: list[str] = []
    notes: list[str] = []
    for name in names:
        if name in known:
            missing += engine.missing_features([name])
        elif name in CRIU_TO_BUNDLED:
            ours = CRIU_TO_BUNDLED[name]
            notes.append(f"bundled engine: feature {name} -> {ours}")
            missing += engine.missing_features([ours])
        else:
            missing.append(f"{name} (bundled engine: no such feature)")
    return missing, notes
