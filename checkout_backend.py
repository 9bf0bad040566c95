"""Build backend of zdtm-harness (pyproject.toml): setuptools, for editable installs only.

The harness runs from its checkout: it builds its C tests and the ns flavour's init in
place and runs its engine as ``python -m engine`` from there, and its packages ``engine`` and
``flavors`` have names too generic for a shared site-packages. So ``pip install -e .`` (what
bootstrap.sh does, into .venv) is setuptools' own, and ``pip install .`` (a wheel) or an
sdist is refused up front with what to do instead, before anything is installed.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from setuptools import build_meta as _setuptools

REFUSAL = ("zdtm-harness runs from its checkout: it builds its C tests and the ns flavour's "
           "init in place, and a wheel would install top-level packages named 'engine' and "
           "'flavors'. Refusing to build a wheel or sdist. In the checkout run ./bootstrap.sh "
           "(a .venv with an editable install), or in a virtualenv: pip install -e '.[test]'")

get_requires_for_build_editable = _setuptools.get_requires_for_build_editable
prepare_metadata_for_build_editable = _setuptools.prepare_metadata_for_build_editable
build_editable = _setuptools.build_editable


def _refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
    """Any wheel or sdist hook: print why and fail the build."""
    print(REFUSAL, file=sys.stderr)
    raise SystemExit(1)


# `pip install .` calls get_requires_for_build_wheel first: it fails there
get_requires_for_build_wheel = _refuse
prepare_metadata_for_build_wheel = _refuse
build_wheel = _refuse
get_requires_for_build_sdist = _refuse
build_sdist = _refuse
