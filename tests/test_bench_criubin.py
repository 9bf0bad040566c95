"""bench/criubin.py: which criu the benchmark measures (--criu-bin, PATH, shared/ build.sh),
and bench/pagecache.py: the cold-cache eviction it relies on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(REPO))

from bench import criubin, pagecache


def _exe(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def _build_sh(shared: Path, prints: str, code: int = 0) -> Path:
    """A stand-in build.sh: build noise on stderr, a first line and the path on stdout."""
    return _exe(shared / "peers" / "criu" / "build.sh",
                f"#!/bin/sh\necho 'make: building' >&2\necho 'CRIU 4.2'\necho '{prints}'\n"
                f"echo 'build.sh: failed for a reason' >&2\nexit {code}\n")


def _no_path(name: str) -> str | None:
    return None


def test_explicit_binary_wins(tmp_path: Path) -> None:
    """--criu-bin is used as given even when PATH has a criu."""
    mine = _exe(tmp_path / "mine" / "criu")
    found = criubin.find_criu(str(mine), tmp_path / "checkout",
                              which=lambda n: "/usr/sbin/criu" if n == "criu" else None)
    assert (found.binary, found.source) == (str(mine), "--criu-bin")


def test_path_before_build_script(tmp_path: Path) -> None:
    """criu in PATH is preferred to building one."""
    root = tmp_path / "ws" / "checkout"
    _build_sh(tmp_path / "ws" / "shared", "/nonexistent")
    found = criubin.find_criu(None, root, which=lambda n: "/usr/sbin/criu")
    assert (found.binary, found.source) == ("/usr/sbin/criu", "PATH")


def test_build_script_last_line_is_the_binary(tmp_path: Path) -> None:
    """Without --criu-bin or PATH, build.sh beside the checkout is run and its last line
    of output taken; ../shared is looked at before ../../shared."""
    built = _exe(tmp_path / "opt" / "criu")
    near = _build_sh(tmp_path / "ws" / "shared", str(built))
    _build_sh(tmp_path / "shared", "/nonexistent")
    found = criubin.find_criu(None, tmp_path / "ws" / "checkout", which=_no_path)
    assert (found.binary, found.source, found.error) == (str(built), str(near), "")
    far = criubin.find_criu(None, tmp_path / "other" / "checkout", which=_no_path)
    assert far.binary is None and "/nonexistent" in far.error  # ../../shared's script


def test_build_script_failures_name_the_script(tmp_path: Path) -> None:
    """A failing build.sh gives its last stderr line; a printed path that is not an
    executable is refused."""
    script = _build_sh(tmp_path / "shared", "/opt/criu-4.2/criu", code=1)
    found = criubin.find_criu(None, tmp_path / "checkout", which=_no_path)
    assert found.binary is None
    assert found.error == f"{script}: exit 1: build.sh: failed for a reason"
    plain = tmp_path / "plain"
    plain.write_text("not a program")
    _build_sh(tmp_path / "shared", str(plain))
    found = criubin.find_criu(None, tmp_path / "checkout", which=_no_path)
    assert found.binary is None and "which is not an executable file" in found.error


def test_no_criu_anywhere_says_where_it_looked(tmp_path: Path) -> None:
    """Nothing found: one message naming both places build.sh was looked for."""
    root = tmp_path / "a" / "checkout"
    found = criubin.find_criu(None, root, which=_no_path)
    assert found.binary is None
    for place in criubin.build_scripts(root):
        assert str(place) in found.error
    assert "no --criu-bin, no criu in PATH" in found.error


def test_evict_drops_a_file_from_the_page_cache(tmp_path: Path) -> None:
    """A file just read is resident; after evict() mincore sees none of it left."""
    fstype = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], check=True,
                            capture_output=True, text=True).stdout.strip()
    if fstype in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is on {fstype}: its pages have no backing store to "
                    "be evicted to")
    path = tmp_path / "image"
    path.write_bytes(os.urandom(64 * pagecache.PAGE))
    path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert pagecache.resident_bytes(fd) == 64 * pagecache.PAGE
        assert pagecache.evict([path]) == 0
        assert pagecache.resident_bytes(fd) == 0
    finally:
        os.close(fd)
