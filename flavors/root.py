"""The root of its own that a namespaced test tree lives in (flavours ns and uns).

Everything the tree maps or holds open must live in the tree's own mount namespace, or a
real engine cannot dump it (CRIU: "Can't lookup mount=N for fd=-3"): nsinit bind-mounts
the test's work directory onto itself and pivots into it.  This module fills that
directory beforehand, as host root: copies of the test binary, nsinit and the shared
libraries the test loads (at the paths its ELF interpreter looks for them), a /proc mount
point and the /dev nodes tests open.  The engine is told about the root (criu gets it as
``--root`` on restore).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from flavors.base import StartError

BIN_DIR = ".bin"
# character devices a test may open (major, minor), made with mknod by the harness: a
# process in a user namespace cannot create device nodes itself
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
           "urandom": (1, 9), "tty": (5, 0)}
LDD_TIMEOUT = 30.0


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


def install(root: Path, binary: Path) -> str:
    """Copy ``binary`` and the libraries it loads into ``root``; its path inside the root.

    A script brings its interpreter when the ``#!`` line names one by absolute path (copied
    to that path with its libraries); one found through ``/usr/bin/env`` would need a whole
    language runtime in the root, so it is refused with that reason.
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


def _interpreter(path: Path) -> str | None:
    """The absolute interpreter of a ``#!`` script, None for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.readline(256)
    except OSError as exc:
        raise StartError("setup", f"cannot read {path}: {exc.strerror}") from None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].decode(errors="replace").split()
    if not words or not words[0].startswith("/") or words[0].endswith("/env"):
        raise StartError("setup", f"{path} is a script run by '{' '.join(words)}': in the "
                                  "ns/uns flavours the test tree has a root of its own "
                                  "holding only the test, its interpreter when named by "
                                  "absolute path, and their libraries")
    return words[0]


def shared_libraries(binary: Path) -> list[str]:
    """Absolute paths of the interpreter and libraries ``binary`` loads (ldd; none if static)."""
    try:
        proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                              timeout=LDD_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StartError("setup", f"ldd {binary}: {exc}") from None
    libs = []
    for line in proc.stdout.splitlines():
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        words = line.split()
        path = words[2] if "=>" in words and len(words) > 2 else words[0] if words else ""
        if path.startswith("/"):
            libs.append(path)
    return libs


def _copy(src: Path, dst: Path) -> None:
    """A regular-file copy (symlinks resolved), mode 0755, parents made searchable."""
    if dst.exists():
        return
    missing = [p for p in reversed(dst.parents) if not p.exists()]
    for d in missing:
        d.mkdir(mode=0o755)
        os.chmod(d, 0o755)
    try:
        shutil.copyfile(src, dst)
    except OSError as exc:
        raise StartError("setup", f"cannot copy {src} into the test's root: {exc}") from None
    os.chmod(dst, 0o755)
