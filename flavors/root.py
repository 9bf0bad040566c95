"""The root of its own that a namespaced test tree lives in (flavours ns and uns).

Everything the tree maps or holds open must live in the tree's own mount namespace, or a
real engine cannot dump it (CRIU: "Can't lookup mount=N for fd=-3"): nsinit bind-mounts
the test's work directory onto itself and pivots into it.  This module fills that
directory beforehand, as host root: copies of the test binary, nsinit and the shared
libraries the test loads (at the paths its ELF interpreter looks for them), a /proc mount
point and the /dev nodes tests open.  The engine is told about the root (criu gets it as
``--root`` on restore).

A Python script started through ``#!/usr/bin/env python3`` runs under the harness's own
interpreter, installed at its host path with its standard library (hard links where the
file system allows, so a run costs no copy) and the libraries of its extension modules;
the ``.py`` modules beside the script go beside it.  Other programs a test runs are named
by its descriptor's ``deps`` (absolute paths, installed at the same path with their
libraries by the flavour; one missing on the host is left out, for the test to report).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

from flavors.base import StartError

BIN_DIR = ".bin"
# character devices a test may open (major, minor), made with mknod by the harness: a
# process in a user namespace cannot create device nodes itself
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
           "urandom": (1, 9), "tty": (5, 0)}
LDD_TIMEOUT = 30.0
_PYTHON = re.compile(r"python(3(\.\d+)?)?")
# parts of the standard library no test program imports
_STDLIB_SKIP = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip",
                "lib2to3", "config-3"}


def make_root(root: Path) -> None:
    """The fixed skeleton: /proc and /dev/pts mount points, /dev nodes (/dev/ptmx a link
    into the tree's own devpts), the binaries directory."""
    for d in ("proc", "dev", "dev/pts", BIN_DIR):
        (root / d).mkdir(mode=0o755, exist_ok=True)
        os.chmod(root / d, 0o755)  # whatever the umask: uid 100000 must enter them
    if not (root / "dev" / "ptmx").is_symlink():
        os.symlink("pts/ptmx", root / "dev" / "ptmx")
    for name, (major, minor) in DEVICES.items():
        node = root / "dev" / name
        if not node.exists():
            os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(node, 0o666)


def install_test(root: Path, binary: Path) -> list[str]:
    """Install the test ``binary`` into ``root``; the words that start it inside (a
    Python script run through env: the interpreter, then the script)."""
    words = _shebang(binary)
    if words and words[0].endswith("/env") and len(words) == 2 and _PYTHON.fullmatch(
            words[1]):
        inside = f"/{BIN_DIR}/{binary.name}"
        _copy(binary, root / inside.lstrip("/"))
        for module in binary.parent.glob("*.py"):
            _copy(module, root / BIN_DIR / module.name)
        return [_install_python(root), inside]
    return [install(root, binary)]


def install_at(root: Path, binary: Path) -> None:
    """Copy ``binary`` to its own path in ``root``, with the libraries it loads."""
    _copy(binary, root / str(binary).lstrip("/"))
    for lib in shared_libraries(binary):
        _copy(Path(lib), root / lib.lstrip("/"))


def _install_python(root: Path) -> str:
    """The harness's interpreter and standard library in ``root``; its path."""
    python = os.path.realpath(sys.executable)
    install_at(root, Path(python))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    extensions = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP
                       and not d.startswith("config-")]
        for name in filenames:
            src = Path(dirpath, name)
            _link(src, root / str(src).lstrip("/"))
            if name.endswith(".so"):
                extensions.append(src)
    for lib in shared_libraries(*extensions):
        _copy(Path(lib), root / lib.lstrip("/"))
    return python


def install(root: Path, binary: Path) -> str:
    """Copy ``binary`` and the libraries it loads into ``root``; its path inside the root.

    A script brings its interpreter when the ``#!`` line names one by absolute path (copied
    to that path with its libraries); one found through ``/usr/bin/env`` (other than a
    Python script, see install_test) would need a whole language runtime in the root, so
    it is refused with that reason.
    """
    inside = f"/{BIN_DIR}/{binary.name}"
    _copy(binary, root / inside.lstrip("/"))
    interpreter = _interpreter(binary)
    if interpreter is not None:
        _copy(Path(interpreter), root / interpreter.lstrip("/"))
        binary = Path(interpreter)
    for lib in shared_libraries(binary):
        _copy(Path(lib), root / lib.lstrip("/"))
    return inside


def _shebang(path: Path) -> list[str] | None:
    """The words of a script's ``#!`` line, None for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.readline(256)
    except OSError as exc:
        raise StartError("setup", f"cannot read {path}: {exc.strerror}") from None
    if not head.startswith(b"#!"):
        return None
    return head[2:].decode(errors="replace").split()


def _interpreter(path: Path) -> str | None:
    """The absolute interpreter of a ``#!`` script, None for anything else."""
    words = _shebang(path)
    if words is None:
        return None
    if not words or not words[0].startswith("/") or words[0].endswith("/env"):
        raise StartError("setup", f"{path} is a script run by '{' '.join(words)}': in the "
                                  "ns/uns flavours the test tree has a root of its own "
                                  "holding only the test, its interpreter when named by "
                                  "absolute path, and their libraries")
    return words[0]


def shared_libraries(*binaries: Path) -> list[str]:
    """Absolute paths of the interpreter and libraries the binaries load (ldd; none if
    static)."""
    if not binaries:
        return []
    try:
        proc = subprocess.run(["ldd", *map(str, binaries)], capture_output=True, text=True,
                              timeout=LDD_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StartError("setup", f"ldd {binaries[0]}...: {exc}") from None
    libs = []
    for line in proc.stdout.splitlines():
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0] if words else ""
        if path.startswith("/") and not path.endswith(":"):  # (not a file's heading)
            libs.append(path)
    return libs


def _copy(src: Path, dst: Path) -> None:
    """A regular-file copy (symlinks resolved), mode 0755, parents made searchable."""
    if dst.exists():
        return
    _make_parents(dst)
    try:
        shutil.copyfile(src, dst)
    except OSError as exc:
        raise StartError("setup", f"cannot copy {src} into the test's root: {exc}") from None
    os.chmod(dst, 0o755)


def _make_parents(dst: Path) -> None:
    for d in [p for p in reversed(dst.parents) if not p.exists()]:
        d.mkdir(mode=0o755)
        os.chmod(d, 0o755)  # whatever the umask


def _link(src: Path, dst: Path) -> None:
    """A hard link of ``src`` at ``dst`` (a copy across file systems), parents made as
    _copy does; the file's own mode is kept (it is the host's file)."""
    if dst.exists():
        return
    _make_parents(dst)
    try:
        os.link(src, dst)
    except OSError:
        _copy(src, dst)
