"""The build backend (checkout_backend.py): editable installs are setuptools' own; a wheel
or sdist is refused up front, saying to run from the checkout, so that `pip install .` never
puts top-level packages named engine and flavors into a site-packages."""

from __future__ import annotations

import tomllib

import pytest
from setuptools import build_meta

import checkout_backend
from tests.fake_support import ROOT

EDITABLE = ("get_requires_for_build_editable", "prepare_metadata_for_build_editable",
            "build_editable")
REFUSED = ("get_requires_for_build_wheel", "prepare_metadata_for_build_wheel", "build_wheel",
           "get_requires_for_build_sdist", "build_sdist")


def test_pyproject_builds_with_the_checkout_backend() -> None:
    system = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    assert system["build-backend"] == "checkout_backend"
    assert system["backend-path"] == ["."]


@pytest.mark.parametrize("hook", REFUSED)
def test_wheels_and_sdists_are_refused(hook: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        getattr(checkout_backend, hook)("/nonexistent")
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "runs from its checkout" in err and "pip install -e" in err, err


def test_editable_installs_are_setuptools() -> None:
    for hook in EDITABLE:
        assert getattr(checkout_backend, hook) is getattr(build_meta, hook), hook
