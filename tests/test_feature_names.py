"""Engine feature names: the engine defines them (``python -m engine check``), the harness only
uses them. Every name a descriptor, the lifecycle or a driver's mapping mentions must be one
the engine reports, and every capability the engine's dump and restore declare must have an
answer under criu: a misspelled or renamed name would otherwise make tests SKIP, or run
where they should not, without anyone noticing.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

import engine.dump
import engine.restore
from zdtm import FLAVORS, ROOT_DIR
from zdtm.desc import TestDesc, discover, discover_external
from zdtm.drivers.base import Features
from zdtm.drivers.bundled import BundledEngine
from zdtm.drivers.criu import FEATURES as CRIU_FEATURES
from zdtm.drivers.nocr import NoCREngine
from zdtm.drivers.translate import CRIU_TO_BUNDLED
from zdtm.lifecycle import RunOptions, cr_unavailable


@pytest.fixture(scope="module")
def reported() -> set[str]:
    """The names the bundled engine reports, asked the way the harness asks them."""
    engine = BundledEngine()
    assert engine.available() is None, engine.available()
    return set(engine.check().features)


class _Recording(Features):
    """Features that refuse nothing and remember every name asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def refused(self, wanted: Sequence[str]) -> list[str]:
        self.asked.update(wanted)
        return []


class _AskedEngine(NoCREngine):
    """An engine whose check() records what the lifecycle asks of it."""

    def __init__(self) -> None:
        self.features = _Recording()

    def check(self) -> Features:
        return self.features


def _declared(tests: list[TestDesc]) -> set[str]:
    return {name for t in tests for name in (*t.feature, *t.crfail_unless)}


def test_descriptors_name_reported_features(reported: set[str]) -> None:
    """``feature:`` and ``crfail_unless:`` of every descriptor of this suite and of
    tests/real name features the engine reports."""
    used = _declared(discover()) | _declared(discover_external(ROOT_DIR / "tests" / "real"))
    assert used, "no descriptor names a feature: the test proves nothing"
    assert sorted(used - reported) == []


def test_lifecycle_asks_reported_features(reported: set[str]) -> None:
    """The C/R steps the lifecycle asks for, in every flavour and mode, are reported names
    (dump, restore, pre_dump, lazy_pages, flavor_*, lazy_pages_*)."""
    engine = _AskedEngine()
    for flavor, norst, pre, lazy in itertools.product(FLAVORS, (False, True), (0, 1),
                                                      (False, True)):
        assert cr_unavailable(engine, RunOptions(norst=norst, pre=pre, lazy=lazy),
                              flavor) is None
    asked = engine.features.asked
    assert {"dump", "restore", "pre_dump", "lazy_pages", "flavor_uns"} <= asked
    assert sorted(asked - reported) == []


def test_driver_mappings_name_reported_features(reported: set[str]) -> None:
    """The criu driver's map (harness name -> criu probe) and the translation of criu's
    names for the bundled engine use only reported names."""
    assert sorted(set(CRIU_FEATURES) - reported) == []
    assert sorted(set(CRIU_TO_BUNDLED.values()) - reported) == []


def test_engine_capabilities_have_a_criu_answer(reported: set[str]) -> None:
    """Everything the engine's dump and restore declare is reported, and the criu driver
    answers it too (a probe, or None: every criu has it)."""
    declared = set(engine.dump.features()) | set(engine.restore.features())
    assert declared <= reported
    assert sorted(declared - set(CRIU_FEATURES)) == []
