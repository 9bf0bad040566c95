"""Engine drivers: the bundled engine, an installed criu, and none (--nocr)."""

from __future__ import annotations

from pathlib import Path

from zdtm.drivers.base import Engine, EngineFailure, Features, StepResult

__all__ = ["Engine", "EngineFailure", "Features", "StepResult", "make_engine"]


def make_engine(name: str, *, criu_bin: str | Path | None = None) -> Engine:
    """Build the driver called ``name``: bundled, criu or nocr."""
    if name == "bundled":
        from zdtm.drivers.bundled import BundledEngine
        return BundledEngine()
    if name == "criu":
        from zdtm.drivers.criu import CriuEngine
        return CriuEngine(criu_bin)
    if name == "nocr":
        from zdtm.drivers.nocr import NoCREngine
        return NoCREngine()
    raise ValueError(f"unknown engine {name!r} (bundled, criu or nocr)")
