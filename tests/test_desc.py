"""The .desc reader: YAML only, validated, with defaults; discovery and selection."""

from __future__ import annotations

import os
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
    ("{'flavour': 'h'}", "unknown key(s) flavour"),
    ("{'timeout': '10'}", "'timeout' must be a positive integer"),
    ("{'timeout': 0}", "'timeout' must be a positive integer"),
    ("{'timeout': true}", "'timeout' must be a positive integer"),
    ("{'file': 'yes please'}", "'file' must be true or false"),
    ("{'file': true, 'dir': true}", "'file' and 'dir' cannot both be true"),
    ("{'opts': 5}", "'opts' must be a string or a list of strings, not int"),
    ("[1, 2]", "must be a mapping, not list"),
    ("{'flavor': 'h'", "not valid YAML"),
])
def test_bad_descs_name_the_file(text: str, needle: str) -> None:
    with pytest.raises(DescError) as exc:
        parse_desc(text, WHERE)
    assert str(exc.value).startswith(f"{WHERE}: ")
    assert needle in str(exc.value)


def test_no_code_is_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"!!python/object/apply:os.system ['touch {marker}']"
    with pytest.raises(DescError, match="not valid YAML"):
        parse_desc(text, WHERE)
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


def test_discover_reports_bad_desc(tmp_path: Path) -> None:
    z = _tree(tmp_path)
    (z / "static" / "b.desc").write_text("{'flavor': 'x'}\n")
    with pytest.raises(DescError, match=r"static/b.desc: unknown flavour"):
        discover(z)


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
    for name, body in (("uses_file", b"\0filename\0pidfile\0"), ("uses_dir", b"\0dirname\0"),
                       ("plain", b"\0pidfile\0")):
        p = tmp_path / name
        p.write_bytes(b"\x7fELF" + body)
        os.chmod(p, 0o755)
    (tmp_path / "plain.desc").write_text("{'flavor': 'h ns', 'dir': true}\n")
    (tmp_path / "notes.txt").write_text("not a test\n")
    tests = {t.name: t for t in discover_external(tmp_path)}
    assert sorted(tests) == ["ext/plain", "ext/uses_dir", "ext/uses_file"]
    assert tests["ext/uses_file"].needs_file and not tests["ext/uses_file"].needs_dir
    assert tests["ext/uses_dir"].needs_dir and not tests["ext/uses_dir"].needs_file
    plain = tests["ext/plain"]
    assert plain.needs_dir and plain.flavors == ("h", "ns") and plain.build_target is None
    with pytest.raises(DescError, match="is not a directory"):
        discover_external(tmp_path / "missing")


def test_repository_descs_are_valid() -> None:
    """Every .desc of the C tests in this tree parses (a bad one breaks collection)."""
    tests = discover()
    assert tests, "no zdtm tests found"
    for t in tests:
        assert t.source is not None and t.source.exists()
