"""Test descriptors: read NAME.desc files and discover the tests.

A descriptor is a mapping beside the test, in the dialect of CRIU's zdtm suite: a Python
dict literal (tabs, numeric strings, and a few expressions such as ``'a' + 'b'`` or
``' '.join([...])``, read by zdtm.desc_expr without eval()) or YAML (``yaml.safe_load``;
our own descriptors use both forms).  Nothing in it is ever run as code.

Keys (all optional):

``flavor``   flavours the test supports, a subset of ``h ns uns`` (string or list)
``flags``    ``excl noauto crfail suid nolazy reqrst crlib pre-dump-notify pty rawnet ...``
``opts``     extra engine options for pre-dump, dump and restore (string or list)
``dopts``    extra engine options for pre-dump and dump only
``ropts``    extra engine options for restore only
``feature``  engine/kernel features required (the engine's names, or criu's: see
             zdtm.drivers.translate)
``crfail_unless``  features (same names) whose absence is why a ``crfail`` test's dump
             must fail: an engine that has them all runs the test as a plain C/R test
``timeout``  seconds the test may take to start and to stop (int or numeric string)
``file``     true: start the test with ``--filename=NAME.test``
``dir``      true: start the test with ``--dirname=NAME.test`` (``NAME.dir.test`` with file)
``arch``     the one machine (``uname -m``) the test is for; SKIP on any other
``deps``     programs the test runs, absolute paths (``a|b``: the first that exists),
             installed into the tree's own root in the ns/uns flavours
``sysctl``   a CRIU key, accepted without effect here

A descriptor that cannot be read does not stop discovery: the test is listed with its
``problem`` (file, line, what is wrong) and its runs are harness errors naming it.
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
from zdtm.desc_expr import ExprError, evaluate

#: Flags this harness acts on, with what they do.
FLAG_MEANING = {
    "excl": "runs alone, never beside another test",
    "noauto": "only run when named explicitly (not by -a or the default pytest run)",
    "crfail": "dump is expected to fail; the run passes when it does (when it does not, "
              "the run fails and the restored tree is judged once)",
    "nolazy": "not run with --lazy-pages",
    "reqrst": "needs a restore: skipped with --norst",
    "nouns": "never run in the uns flavour",
    "suid": "needs root (the harness runs every test as root)",
    "crlib": "criu gets --libdir DIR/lib (its plugins beside the test); other engines SKIP",
    "pre-dump-notify": "after each pre-dump the test is notified through its fds 100/101",
    "pty": "opens ptys: in flavour h it holds the machine's pty lock (zdtm/hostlocks.py)",
    "rawnet": "packet or raw IP sockets on loopback: in flavour h it holds the machine's "
              "rawnet lock (zdtm/hostlocks.py)",
}
#: CRIU flags accepted without an effect here (they select modes this harness lacks).
CRIU_ONLY_FLAGS = {"nouser", "norst", "samens", "sock", "nodump", "noauto_lazy",
                   "noremotelazy"}
KNOWN_FLAGS = frozenset(FLAG_MEANING) | CRIU_ONLY_FLAGS
KNOWN_KEYS = frozenset(
    {"flavor", "flags", "opts", "dopts", "ropts", "feature", "crfail_unless", "timeout",
     "file", "dir", "arch", "deps", "sysctl"}
)
KINDS = ("static", "transition")
DEFAULT_TIMEOUT = 30


class DescError(ValueError):
    """A descriptor is malformed; the message names the file and line."""


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
    dopts: tuple[str, ...] = ()
    ropts: tuple[str, ...] = ()
    feature: tuple[str, ...] = ()
    crfail_unless: tuple[str, ...] = ()
    timeout: int = DEFAULT_TIMEOUT
    needs_file: bool = False
    needs_dir: bool = False
    arch: str | None = None
    deps: tuple[str, ...] = ()  # programs installed into the ns/uns root
    problem: str | None = None     # the descriptor could not be read: why (file:line: ...)
    notes: tuple[str, ...] = ()    # descriptor content accepted without effect

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
        if self.needs_dir:
            # with both, the directory gets its own name (as CRIU's suite does)
            suffix = ".dir.test" if self.needs_file else ".test"
            args.append(f"--dirname={self.short}{suffix}")
        if self.needs_file:
            args.append(f"--filename={self.short}.test")
        return args


def _line_of(text: str, key: Any) -> int:
    """The first line of ``text`` naming ``key`` (1 when it cannot be found)."""
    for number, line in enumerate(text.splitlines(), 1):
        if str(key) in line:
            return number
    return 1


def _words(value: Any, key: str) -> tuple[str, ...]:
    """Accept a space-separated string or a list of strings (CRIU uses both)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(w for v in value for w in v.split())
    raise ValueError(f"'{key}' must be a string or a list of strings, "
                     f"not {type(value).__name__}")


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"'{key}' must be true or false, not {value!r}")


def _timeout(value: Any) -> int:
    """CRIU writes timeouts as ints or as numeric strings (``'60'``)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"'timeout' must be a positive integer or a numeric string, "
                         f"not {value!r}")
    return value


def _load_mapping(text: str, where: Path) -> Any:
    """The descriptor's value: a Python literal expression first (CRIU's dialect), YAML next.

    Python is tried first because CRIU reads its descriptors with eval(); a text that is not
    Python, or uses a construct outside desc_expr's subset, is tried as YAML (our own block
    mappings, ``true``/``false``).  When both fail, the error is the one that says most.
    """
    expr_error: ExprError | None = None
    try:
        return evaluate(text)
    except SyntaxError as exc:
        if text.lstrip().startswith("{"):  # meant as CRIU's dict literal: say it in Python
            expr_error = ExprError(exc.lineno or 1, (exc.offset or 1) - 1,
                                   f"not a valid Python literal: {exc.msg}")
    except ExprError as exc:
        expr_error = exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        if expr_error is not None:
            raise DescError(f"{where}:{expr_error.line}: {expr_error.problem}") from None
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DescError(f"{where}:{line}: not valid YAML nor a Python literal: "
                        f"{what}") from None
    if expr_error is not None and not isinstance(data, dict):
        # Python that is no mapping YAML would read: the refused construct says most
        raise DescError(f"{where}:{expr_error.line}: {expr_error.problem}")
    return data


def parse_desc(text: str, where: Path, *, strict: bool = True) -> dict[str, Any]:
    """Parse and validate descriptor text; returns the TestDesc fields it sets.

    Raises DescError naming ``where`` and the line for syntax errors, values of the wrong
    type and (``strict``, our own tests) unknown keys, flavours or flags.  Not strict (another
    project's suite), unknown keys and flags are returned as ``notes`` instead.
    """
    data = _load_mapping(text, where)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DescError(f"{where}:1: must be a mapping, not {type(data).__name__}")
    out: dict[str, Any] = {}
    notes: list[str] = []
    for key in data:
        try:
            _read_key(key, data[key], out, notes, strict)
        except ValueError as exc:
            raise DescError(f"{where}:{_line_of(text, key)}: {exc}") from None
    if notes:
        out["notes"] = tuple(notes)
    return out


def _read_key(key: Any, value: Any, out: dict[str, Any], notes: list[str],
              strict: bool) -> None:
    """Store one descriptor entry into ``out`` (ValueError: what is wrong with it)."""
    if key == "flavor":
        flavors = _words(value, key)
        bad = [f for f in flavors if f not in FLAVORS]
        if bad or not flavors:
            raise ValueError(f"unknown flavour(s) {bad or '(empty)'}; "
                             f"known: {' '.join(FLAVORS)}")
        out["flavors"] = tuple(f for f in FLAVORS if f in flavors)
    elif key == "flags":
        flags = frozenset(_words(value, key))
        bad = sorted(flags - KNOWN_FLAGS)
        if bad and strict:
            raise ValueError(f"unknown flag(s) {', '.join(bad)}; "
                             f"known: {' '.join(sorted(KNOWN_FLAGS))}")
        if bad:
            notes.append(f"unknown flag(s) ignored: {' '.join(bad)}")
        out["flags"] = flags - frozenset(bad)
    elif key in ("opts", "dopts", "ropts", "feature", "crfail_unless"):
        out[key] = _words(value, key)
    elif key == "timeout":
        out["timeout"] = _timeout(value)
    elif key in ("file", "dir"):
        out["needs_" + key] = _bool(value, key)
    elif key == "arch":
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"'arch' must be a machine name such as x86_64, not {value!r}")
        out["arch"] = value.strip()
    elif key == "deps":
        out["deps"] = tuple(_words(value, key))
    elif key in KNOWN_KEYS:
        pass  # sysctl: CRIU's own setup of its ns root; nothing to do here
    elif strict:
        raise ValueError(f"unknown key {key!r}; known: {', '.join(sorted(KNOWN_KEYS))}")
    else:
        notes.append(f"unknown key ignored: {key}")


def load_desc(desc_path: Path, *, strict: bool = True) -> dict[str, Any]:
    """Read one NAME.desc (missing file: defaults); DescError when it cannot be read."""
    try:
        text = desc_path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise DescError(f"{desc_path}:1: cannot read: {why}") from None
    return parse_desc(text, desc_path, strict=strict)


def desc_fields(desc_path: Path, *, strict: bool = True) -> dict[str, Any]:
    """load_desc, but an unreadable descriptor becomes the test's ``problem``.

    Discovery never stops at one test: the others are listed and run, and this one's runs
    report the problem.
    """
    try:
        return load_desc(desc_path, strict=strict)
    except DescError as exc:
        return {"problem": str(exc)}


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
            tests.append(TestDesc(name=f"{kind}/{src.stem}", kind=kind,
                                  binary=src.with_suffix(""), source=src,
                                  desc_path=desc_path if desc_path.exists() else None,
                                  **desc_fields(desc_path)))
    return tests


def discover_external(tests_dir: Path) -> list[TestDesc]:
    """The tests of another project's suite: its executable files, one level deep.

    ``NAME.checkskip``, ``NAME.hook`` and files with a suffix (``.so``, ``.c``...) are not
    tests.  A descriptor that cannot be read becomes the test's ``problem``.
    """
    tests_dir = Path(tests_dir).resolve()
    if not tests_dir.is_dir():
        raise DescError(f"{tests_dir}: --tests-dir is not a directory")
    tests = []
    for binary in sorted(tests_dir.iterdir()):
        if (binary.is_symlink() or not binary.is_file() or binary.suffix
                or not os.access(binary, os.X_OK)):
            continue
        desc_path = beside(binary, ".desc")
        tests.append(TestDesc(name=f"ext/{binary.name}", kind="external", binary=binary,
                              desc_path=desc_path if desc_path.exists() else None,
                              **desc_fields(desc_path, strict=False)))
    return tests


def beside(binary: Path, suffix: str) -> Path:
    """NAME.desc, NAME.hook... of a binary (not with_suffix(): names may contain dots)."""
    return binary.with_name(binary.name + suffix)


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
