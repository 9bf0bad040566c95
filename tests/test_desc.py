"""The .desc reader: YAML only, validated, with defaults; discovery and selection."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from zdtm.desc import (
    DEFAULT_TIMEOUT,
    DescError,
    TestDesc,
    discover,
    discover_external,
    normalise_name,
    parse_desc,
    select,
)
from zdtm.external import start_plan

WHERE = Path("static/x.desc")


def test_criu_style_dict_literal() -> None:
    got = parse_desc("{'flavor': 'h ns', 'flags': 'excl crfail', 'opts': '--tcp-established',"
                     " 'feature': 'uffd mem_dirty_track', 'timeout': 60}", WHERE)
    assert got == {"flavors": ("h", "ns"), "flags": frozenset({"excl", "crfail"}),
                   "opts": ("--tcp-established",), "feature": ("uffd", "mem_dirty_track"),
                   "timeout": 60}


def test_lists_and_file_dir_keys() -> None:
    assert parse_desc("flavor: [uns, h]\nfile: true\n", WHERE) == {
        "flavors": ("h", "uns"), "needs_file": True}
    assert parse_desc("{'dir': true}", WHERE) == {"needs_dir": True}


def test_empty_desc_gives_defaults() -> None:
    assert parse_desc("", WHERE) == {}
    t = TestDesc(name="static/x", kind="static", binary=Path("/x"))
    assert t.flavors == ("h", "ns", "uns") and t.timeout == DEFAULT_TIMEOUT
    assert t.start_args() == ["--pidfile=x.pid", "--outfile=x.out"]


@pytest.mark.parametrize("text, needle", [
    ("{'flavor': 'h vm'}", "unknown flavour(s) ['vm']"),
    ("{'flavor': ''}", "unknown flavour(s) (empty)"),
    ("{'flags': 'excl sometimes'}", "unknown flag(s) sometimes"),
    ("{'flavour': 'h'}", "unknown key 'flavour'"),
    ("{'timeout': 'ten'}", "'timeout' must be a positive integer or a numeric string"),
    ("{'timeout': 0}", "'timeout' must be a positive integer"),
    ("{'timeout': true}", "'timeout' must be a positive integer"),
    ("{'file': 'yes please'}", "'file' must be true or false"),
    ("{'opts': 5}", "'opts' must be a string or a list of strings, not int"),
    ("{'arch': 64}", "'arch' must be a machine name"),
    ("[1, 2]", "must be a mapping, not list"),
    ("{'flavor': 'h'", "not a valid Python literal: '{' was never closed"),
    ("flavor: [h", "not valid YAML nor a Python literal"),
])
def test_bad_descs_name_the_file(text: str, needle: str) -> None:
    with pytest.raises(DescError) as exc:
        parse_desc(text, WHERE)
    assert str(exc.value).startswith(f"{WHERE}:1: ")
    assert needle in str(exc.value)


def test_errors_name_the_line() -> None:
    text = "{\n\t'flavor': 'h',\n\t'flags': 'excl sometimes',\n}\n"
    with pytest.raises(DescError, match=r"^static/x.desc:3: unknown flag\(s\) sometimes"):
        parse_desc(text, WHERE)
    with pytest.raises(DescError, match=r"^static/x.desc:3: lambda is not allowed"):
        parse_desc("{\n 'flavor': 'h',\n 'opts': lambda: 1}\n", WHERE)
    with pytest.raises(DescError, match=r"^static/x.desc:2: subscript 'os.uname\(\)\[4\]' is not allowed"):
        parse_desc("{'flavor': 'h',\n 'arch': os.uname()[4]}\n", WHERE)


def test_criu_dialect() -> None:
    """Tabs, string timeouts, dopts/ropts/arch/deps, CRIU flags, Python expressions."""
    text = ("{\n\t'flavor':\t'h ns',\n\t'timeout':\t'60',\n\t'flags':\t'suid crlib "
            "pre-dump-notify nouser',\n\t'dopts': '--ext-mount-map ' + 'a:b',\n"
            "\t'ropts': ' '.join(['--tcp-close', '--link-remap']),\n\t'arch': 'x86_64',\n"
            "\t'deps': ['/bin/sh'],\n}\n")
    assert parse_desc(text, WHERE) == {
        "flavors": ("h", "ns"), "timeout": 60,
        "flags": frozenset({"suid", "crlib", "pre-dump-notify", "nouser"}),
        "dopts": ("--ext-mount-map", "a:b"), "ropts": ("--tcp-close", "--link-remap"),
        "arch": "x86_64", "deps": ("/bin/sh",)}
    assert parse_desc("{'timeout': '%d' % 45, 'flavor': str('h')}", WHERE) == {
        "timeout": 45, "flavors": ("h",)}


def test_foreign_suite_keys_and_flags_are_notes() -> None:
    """Another project's descriptor: unknown keys and flags are listed, not errors."""
    got = parse_desc("{'flags': 'excl newflag', 'kernel': '6.0'}", WHERE, strict=False)
    assert got == {"flags": frozenset({"excl"}),
                   "notes": ("unknown flag(s) ignored: newflag", "unknown key ignored: kernel")}


def test_file_and_dir_both() -> None:
    t = TestDesc(name="ext/x", kind="external", binary=Path("/x"), needs_file=True,
                 needs_dir=True)
    assert t.start_args()[2:] == ["--dirname=x.dir.test", "--filename=x.test"]


def test_no_code_is_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"!!python/object/apply:os.system ['touch {marker}']"
    with pytest.raises(DescError, match="not valid YAML"):
        parse_desc(text, WHERE)
    with pytest.raises(DescError, match="call of __import__"):
        parse_desc(f"__import__('os').system('touch {marker}')", WHERE)
    assert not marker.exists()
    assert not marker.exists()


def _tree(tmp_path: Path) -> Path:
    z = tmp_path / "zdtm"
    (z / "static").mkdir(parents=True)
    (z / "transition").mkdir()
    (z / "static" / "a.c").write_text("int main(void) { return 0; }\n")
    (z / "static" / "a.desc").write_text("{'flavor': 'h', 'flags': 'excl', 'file': true}\n")
    (z / "static" / "b.c").write_text("int main(int argc, char **argv) { return 0; }\n")
    (z / "static" / "helper.c").write_text("int helper(void) { return 1; }\n")
    (z / "transition" / "c.c").write_text("int main (void) { return 0; }\n")
    (z / "transition" / "c.desc").write_text("{'flags': 'noauto'}\n")
    return z


def test_discover(tmp_path: Path) -> None:
    tests = discover(_tree(tmp_path))
    assert [t.name for t in tests] == ["static/a", "static/b", "transition/c"]
    a = tests[0]
    assert a.flavors == ("h",) and a.flags == {"excl"} and a.needs_file
    assert a.binary == tmp_path / "zdtm" / "static" / "a" and a.build_target == "static/a"
    assert a.start_args()[-1] == "--filename=a.test"
    assert tests[1].desc_path is None and tests[1].flavors == ("h", "ns", "uns")
    assert tests[2].kind == "transition"


def test_discover_reports_bad_desc_and_goes_on(tmp_path: Path) -> None:
    z = _tree(tmp_path)
    (z / "static" / "b.desc").write_text("{'flavor': 'x'}\n")
    tests = {t.name: t for t in discover(z)}
    assert sorted(tests) == ["static/a", "static/b", "transition/c"]
    assert tests["static/b"].problem is not None
    assert re.search(r"static/b.desc:1: unknown flavour", tests["static/b"].problem)
    assert tests["static/a"].problem is None


def test_select(tmp_path: Path) -> None:
    tests = discover(_tree(tmp_path))
    names = lambda ts: [t.name for t in ts]
    assert names(select(tests, all_tests=True)) == ["static/a", "static/b"]  # noauto out
    assert names(select(tests, names=["zdtm/transition/c"])) == ["transition/c"]
    assert names(select(tests, names=["b"])) == ["static/b"]
    assert names(select(tests, include="^static/", exclude="a$")) == ["static/b"]
    with pytest.raises(DescError, match="no such test: static/zz"):
        select(tests, names=["static/zz"])


def test_normalise_name() -> None:
    for raw in ("static/maps06", "zdtm/static/maps06", "./zdtm/static/maps06.c",
                "zdtm/static/maps06.desc"):
        assert normalise_name(raw) == "static/maps06"


def test_external_tests(tmp_path: Path) -> None:
    """Without a Makefile: the descriptor, else the options the binary declares."""
    for name, body in (("uses_file", b"\0filename\0pidfile\0"), ("uses_dir", b"\0dirname\0"),
                       ("uses_both", b"\0dirname\0filename\0"), ("plain", b"\0pidfile\0")):
        p = tmp_path / name
        p.write_bytes(b"\x7fELF" + body)
        os.chmod(p, 0o755)
    for name in ("x.hook", "x.checkskip", "lib.so"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        os.chmod(tmp_path / name, 0o755)
    (tmp_path / "plain.desc").write_text("{'flavor': 'h ns', 'dir': true}\n")
    (tmp_path / "uses_dir.desc").write_text("{'flavor': 'h ns'\n")
    (tmp_path / "notes.txt").write_text("not a test\n")
    tests = {t.name: t for t in discover_external(tmp_path)}
    assert sorted(tests) == ["ext/plain", "ext/uses_both", "ext/uses_dir", "ext/uses_file"]
    args = {n: list(start_plan(t).args[2:]) for n, t in tests.items()}
    assert args["ext/uses_file"] == ["--filename=uses_file.test"]
    assert args["ext/uses_dir"] == ["--dirname=uses_dir.test"]
    assert args["ext/uses_both"] == ["--dirname=uses_both.dir.test", "--filename=uses_both.test"]
    assert args["ext/plain"] == ["--dirname=plain.test"]  # from the descriptor
    assert "no Makefile" in start_plan(tests["ext/plain"]).source
    plain = tests["ext/plain"]
    assert plain.flavors == ("h", "ns") and plain.build_target is None
    assert tests["ext/uses_dir"].problem.startswith(f"{tmp_path}/uses_dir.desc:")
    with pytest.raises(DescError, match="is not a directory"):
        discover_external(tmp_path / "missing")


def test_repository_descs_are_valid() -> None:
    """Every .desc of the C tests in this tree parses (a bad one breaks collection)."""
    tests = discover()
    assert tests, "no zdtm tests found"
    for t in tests:
        assert t.source is not None and t.source.exists()
        assert t.problem is None, t.problem
