"""Per-engine translation of a descriptor's criu options and feature names."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from zdtm.desc import TestDesc
from zdtm.drivers.base import Engine, Features, StepResult
from zdtm.drivers.criu import CriuEngine
from zdtm.drivers.translate import CrOptions, cr_options, missing_features


def _t(**fields: object) -> TestDesc:
    return TestDesc(name="ext/t", kind="external", binary=Path("/suite/static/t"),
                    **fields)  # type: ignore[arg-type]


def test_criu_gets_options_as_written() -> None:
    t = _t(opts=("--file-locks",), dopts=("--ext-mount-map", "/a:ZDTM"),
           ropts=("--tcp-close",), flags=frozenset({"crlib"}))
    got = cr_options("criu", t)
    assert got.dump == ("--file-locks", "--ext-mount-map", "/a:ZDTM",
                        "--libdir", "/suite/static/lib")
    assert got.restore == ("--file-locks", "--tcp-close", "--libdir", "/suite/static/lib")
    assert got.skip is None and got.notes == ()


@pytest.mark.parametrize("fields, reason", [
    ({"opts": ("--tcp-established",)}, "bundled engine: no --tcp-established"),
    ({"dopts": ("--ext-mount-map", "/a:ZDTM")}, "bundled engine: no --ext-mount-map"),
    ({"ropts": ("--manage-cgroups=full",)}, "bundled engine: no --manage-cgroups"),
    ({"opts": ("--shell-job", "--link-remap")}, "bundled engine: no --link-remap"),
    ({"flags": frozenset({"crlib"})}, "bundled engine: no --libdir (flag crlib"),
])
def test_bundled_refuses_what_it_lacks(fields: dict[str, object], reason: str) -> None:
    got = cr_options("bundled", _t(**fields))
    assert got.skip is not None and got.skip.startswith(reason)


def test_bundled_maps_equivalents_and_says_so() -> None:
    got = cr_options("bundled", _t(opts=("--shell-job",), dopts=("--track-mem",)))
    assert got.dump == ("--track-mem",) and got.restore == () and got.skip is None
    assert "bundled engine: --track-mem -> --track-mem (same option)" in got.notes
    assert any(n.startswith("bundled engine: --shell-job -> nothing (") for n in got.notes)
    assert cr_options("bundled", _t()) == CrOptions()


class _FakeBundled(Engine):
    """Only check() matters here."""

    name = "bundled"

    def available(self) -> str | None:
        return None

    def check(self) -> Features:
        return Features({"mem_track": True, "uffd": False}, {"uffd": "no /dev/userfaultfd"})

    def dump(self, root_pid: int, images_dir: Path, *, leave_running: bool,
             parent_images: Path | None, opts: Sequence[str], timeout: float) -> StepResult:
        raise AssertionError

    def pre_dump(self, root_pid: int, images_dir: Path, *, parent_images: Path | None,
                 opts: Sequence[str], timeout: float) -> StepResult:
        raise AssertionError

    def restore(self, images_dir: Path, *, leave_stopped: bool, opts: Sequence[str],
                timeout: float, lazy: bool) -> int:
        raise AssertionError


def test_bundled_feature_names() -> None:
    eng = _FakeBundled()
    assert missing_features(eng, ["mem_track"]) == ([], [])
    assert missing_features(eng, ["mem_dirty_track"]) == (
        [], ["bundled engine: feature mem_dirty_track -> mem_track"])
    assert missing_features(eng, ["uffd"]) == (["uffd (no /dev/userfaultfd)"], [])
    missing, _ = missing_features(eng, ["mnt_id", "mem_track"])
    assert missing == ["mnt_id (bundled engine: no such feature)"]


def test_criu_probes_feature_names(tmp_path: Path) -> None:
    """criu check --feature NAME for each name (a fake criu answering like the real one)."""
    fake = tmp_path / "criu"
    calls = tmp_path / "calls"
    fake.write_text(f"""#!/bin/sh
echo "$*" >> {calls}
case "$*" in
"check") echo "Looks good."; exit 0 ;;
"check --feature mnt_id") echo "mnt_id is supported"; exit 0 ;;
"check --feature mem_dirty_track") echo "mem_dirty_track is supported"; exit 0 ;;
"check --feature "*) echo "Feature $3 is not supported"; exit 1 ;;
esac
exit 0
""")
    os.chmod(fake, 0o755)
    eng = CriuEngine(fake)
    missing, notes = missing_features(eng, ["mnt_id", "timens", "mem_track"])
    assert missing == ["timens (criu check --feature timens: Feature timens is not supported)"]
    assert notes == ["criu engine: feature mem_track -> mem_dirty_track"]
    before = calls.read_text().count("--feature mnt_id")
    missing_features(eng, ["mnt_id"])  # probed once
    assert calls.read_text().count("--feature mnt_id") == before == 1
