"""Test descriptors: read NAME.desc files and discover the tests.

A descriptor is a YAML mapping beside the test source (CRIU's one-line dict literals such as
``{'flavor': 'h ns', 'flags': 'excl'}`` are valid YAML flow mappings). It is read with
``yaml.safe_load`` only; nothing in it is ever evaluated as code.

Keys (all optional):

``flavor``   flavours the test supports, a subset of ``h ns uns`` (string or list)
``flags``    ``excl noauto crfail suid nolazy reqrst ...`` (string or list)
``opts``     extra engine options for dump and restore (string or list)
``ropts``    extra engine options for restore only (string or list)
``feature``  engine/kernel features required, as named by the engine's ``check --json``
``timeout``  seconds the test may take to start and to stop (positive int)
``file``     true: start the test with ``--filename=NAME.test``
``dir``      true: start the test with ``--dirname=NAME.test``
``arch``, ``deps``, ``sysctl``   CRIU keys, accepted and ignored
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zdtm import FLAVORS, ZDTM_DIR

#: Flags this harness acts on, with what they do.
FLAG_MEANING = {
    "excl": "runs alone, never beside another test",
    "noauto": "only run when named explicitly (not by -a or the default pytest run)",
    "crfail": "dump is expected to fail; the run passes when it does",
    "nolazy": "not run with --lazy-pages",
    "reqrst": "needs a restore: skipped with --norst",
    "nouns": "never run in the uns flavour",
    "suid": "needs root (the harness runs every test as root)",
}
#: CRIU flags accepted in external descriptors without an effect here.
CRIU_ONLY_FLAGS = {"nouser", "norst", "samens", "sock", "nodump", "noauto_lazy"}
KNOWN_FLAGS = frozenset(FLAG_MEANING) | CRIU_ONLY_FLAGS
KNOWN_KEYS = frozenset(
    {"flavor", "flags", "opts", "ropts", "feature", "timeout", "file", "dir",
     "arch", "deps", "sysctl"}
)
KINDS = ("static", "transition")
DEFAULT_TIMEOUT = 30


class DescError(ValueError):
    """A descriptor is malformed; the message names the file."""


@dataclass(frozen=True)
class TestDesc:
    """Everything the harness needs to know about one test program."""

    __test__ = False  # not a pytest test class despite the name

    name: str                      # "static/maps06", or "ext/NAME" for --tests-dir binaries
    kind: str                      # "static", "transition" or "external"
    binary: Path
    source: Path | None = None     # NAME.c (None for external binaries)
    desc_path: Path | None = None
    flavors: tuple[str, ...] = FLAVORS
    flags: frozenset[str] = field(default_factory=frozenset)
    opts: tuple[str, ...] = ()
    ropts: tuple[str, ...] = ()
    feature: tuple[str, ...] = ()
    timeout: int = DEFAULT_TIMEOUT
    needs_file: bool = False
    needs_dir: bool = False

    @property
    def short(self) -> str:
        """The bare test name (``maps06``)."""
        return self.name.rsplit("/", 1)[-1]

    @property
    def build_target(self) -> str | None:
        """Make target relative to zdtm/ (``static/maps06``), None for prebuilt binaries."""
        return None if self.kind == "external" else self.name

    def start_args(self) -> list[str]:
        """The zdtm-protocol command line (without the binary), relative to the work dir."""
        args = [f"--pidfile={self.short}.pid", f"--outfile={self.short}.out"]
        if self.needs_file:
            args.append(f"--filename={self.short}.test")
        if self.needs_dir:
            args.append(f"--dirname={self.short}.test")
        return args


def _words(value: Any, key: str, where: Path) -> tuple[str, ...]:
    """Accept a space-separated string or a list of strings (CRIU uses both)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(w for v in value for w in v.split())
    raise DescError(f"{where}: '{key}' must be a string or a list of strings, "
                    f"not {type(value).__name__}")


def _bool(value: Any, key: str, where: Path) -> bool:
    if isinstance(value, bool):
        return value
    raise DescError(f"{where}: '{key}' must be true or false, not {value!r}")


def parse_desc(text: str, where: Path) -> dict[str, Any]:
    """Parse and validate descriptor text; returns the TestDesc fields it sets.

    Raises DescError naming ``where`` for YAML errors, unknown keys, flavours or flags, and
    values of the wrong type.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DescError(f"{where}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DescError(f"{where}: must be a mapping, not {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in KNOWN_KEYS)
    if unknown:
        raise DescError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(KNOWN_KEYS))}")
    out: dict[str, Any] = {}
    if "flavor" in data:
        flavors = _words(data["flavor"], "flavor", where)
        bad = [f for f in flavors if f not in FLAVORS]
        if bad or not flavors:
            raise DescError(f"{where}: unknown flavour(s) {bad or '(empty)'}; "
                            f"known: {' '.join(FLAVORS)}")
        out["flavors"] = tuple(f for f in FLAVORS if f in flavors)
    if "flags" in data:
        flags = frozenset(_words(data["flags"], "flags", where))
        bad = sorted(flags - KNOWN_FLAGS)
        if bad:
            raise DescError(f"{where}: unknown flag(s) {', '.join(bad)}; "
                            f"known: {' '.join(sorted(KNOWN_FLAGS))}")
        out["flags"] = flags
    for key in ("opts", "ropts", "feature"):
        if key in data:
            out[key] = _words(data[key], key, where)
    if "timeout" in data:
        timeout = data["timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
            raise DescError(f"{where}: 'timeout' must be a positive integer, not {timeout!r}")
        out["timeout"] = timeout
    if "file" in data:
        out["needs_file"] = _bool(data["file"], "file", where)
    if "dir" in data:
        out["needs_dir"] = _bool(data["dir"], "dir", where)
    if out.get("needs_file") and out.get("needs_dir"):
        raise DescError(f"{where}: 'file' and 'dir' cannot both be true")
    return out


def load_desc(desc_path: Path) -> dict[str, Any]:
    """Read one NAME.desc (missing file: defaults)."""
    try:
        text = desc_path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise DescError(f"{desc_path}: cannot read: {exc.strerror}") from None
    return parse_desc(text, desc_path)


def _is_test_source(path: Path) -> bool:
    """A NAME.c under static/ or transition/ is a test when it defines main()."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return re.search(r"\bint\s+main\s*\(", text) is not None


def discover(zdtm_dir: Path = ZDTM_DIR) -> list[TestDesc]:
    """All C tests of zdtm/static and zdtm/transition, sorted by name."""
    tests = []
    for kind in KINDS:
        base = zdtm_dir / kind
        if not base.is_dir():
            continue
        for src in sorted(base.glob("*.c")):
            if not _is_test_source(src):
                continue
            desc_path = src.with_suffix(".desc")
            fields = load_desc(desc_path)
            tests.append(TestDesc(name=f"{kind}/{src.stem}", kind=kind,
                                  binary=src.with_suffix(""), source=src,
                                  desc_path=desc_path if desc_path.exists() else None,
                                  **fields))
    return tests


def _declares_option(binary: Path, option: str) -> bool:
    """Whether a prebuilt zdtm binary declares a command-line option.

    zdtm test libraries keep option names as C strings, so a binary that accepts
    --filename holds the NUL-terminated string "filename".
    """
    try:
        return (option.encode() + b"\0") in binary.read_bytes()
    except OSError:
        return False


def discover_external(tests_dir: Path) -> list[TestDesc]:
    """zdtm-protocol binaries in ``tests_dir`` (e.g. CRIU's built tests), one level deep.

    Each executable regular file is a test; an optional NAME.desc beside it is read like ours.
    When the descriptor says nothing about --filename/--dirname, the binary is inspected for
    the option names it declares.
    """
    tests_dir = Path(tests_dir).resolve()
    if not tests_dir.is_dir():
        raise DescError(f"{tests_dir}: --tests-dir is not a directory")
    tests = []
    for binary in sorted(tests_dir.iterdir()):
        if (not binary.is_file() or binary.suffix or not os.access(binary, os.X_OK)):
            continue
        desc_path = binary.with_suffix(".desc")
        fields = load_desc(desc_path)
        if "needs_file" not in fields and "needs_dir" not in fields:
            fields["needs_file"] = _declares_option(binary, "filename")
            fields["needs_dir"] = (not fields["needs_file"]
                                   and _declares_option(binary, "dirname"))
        tests.append(TestDesc(name=f"ext/{binary.name}", kind="external", binary=binary,
                              desc_path=desc_path if desc_path.exists() else None, **fields))
    return tests


def normalise_name(name: str) -> str:
    """Accept ``static/maps06``, ``zdtm/static/maps06`` and ``zdtm/static/maps06.c``."""
    name = name.strip().rstrip("/")
    name = name.removeprefix("./")
    name = name.removeprefix("zdtm/")
    for suffix in (".c", ".desc"):
        name = name.removesuffix(suffix)
    return name


def select(tests: Iterable[TestDesc], *, names: Iterable[str] = (), include: str | None = None,
           exclude: str | None = None, all_tests: bool = False) -> list[TestDesc]:
    """Pick tests by explicit names, an include regex and/or -a, minus an exclude regex.

    Explicitly named tests run even when flagged ``noauto``; -a and regex selection skip
    them. An unknown explicit name raises DescError.
    """
    tests = list(tests)
    by_name = {t.name: t for t in tests}
    chosen: dict[str, TestDesc] = {}
    for raw in names:
        name = normalise_name(raw)
        if name not in by_name:
            # let "maps06" mean "static/maps06" when unambiguous
            matches = [t for t in tests if t.short == name]
            if len(matches) != 1:
                raise DescError(f"no such test: {raw}")
            name = matches[0].name
        chosen[name] = by_name[name]
    if include or all_tests:
        pattern = re.compile(include) if include else None
        for t in tests:
            if "noauto" in t.flags:
                continue
            if pattern is None or pattern.search(t.name):
                chosen.setdefault(t.name, t)
    if exclude:
        pattern = re.compile(exclude)
        chosen = {k: v for k, v in chosen.items() if not pattern.search(k)}
    return sorted(chosen.values(), key=lambda t: t.name)
