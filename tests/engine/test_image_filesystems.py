"""Images on tmpfs, ramfs, overlayfs and ext4: O_DIRECT where it works, buffered where not.

Each filesystem is mounted in a private mount namespace of a shell that runs the engine
(`unshare -m`), so nothing is left mounted when it exits. ramfs refuses O_DIRECT on every
kernel (as tmpfs did before 6.6); ENGINE_FAULT=no-direct-io makes the engine see every
filesystem so, the way overlayfs on an old tmpfs behaves (accepts O_DIRECT at open, fails
every I/O with EINVAL). The test program's own verdict after dump -> restore says whether
its memory came back.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.images import directio
from engine.images.imgdir import ImageDir
from tests.engine import cr_support as cr

#: shell lines that mount each filesystem kind at $D (in the shell's own mount namespace)
MOUNTS = {
    "ext4": "",  # tmp_path itself (the test machine's disk)
    "tmpfs": "mount -t tmpfs -o size=256m zdtm-tmpfs \"$D\"",
    "ramfs": "mount -t ramfs zdtm-ramfs \"$D\"",
    "overlay": ("mount -t tmpfs -o size=256m zdtm-ovl-base \"$D\" && mkdir \"$D/l\" \"$D/u\" "
                "\"$D/w\" \"$D/m\" && mount -t overlay zdtm-ovl -o lowerdir=\"$D/l\","
                "upperdir=\"$D/u\",workdir=\"$D/w\" \"$D/m\" && D=\"$D/m\""),
}

if shutil.which("unshare") is None:  # util-linux
    pytest.skip("unshare(1) is not installed", allow_module_level=True)


def _start_in_mount(kind: str, where: Path, script: str, env: dict[str, str] | None = None
                    ) -> subprocess.Popen[str]:
    """Start `script` (sh, $D = the mounted dir, $PY = this Python) in a new mount
    namespace where a `kind` filesystem is mounted at `where`."""
    where.mkdir(exist_ok=True)
    mount = MOUNTS[kind]
    body = f"set -e; D={shlex.quote(str(where))}; PY={shlex.quote(sys.executable)}; " \
           f"{mount + '; ' if mount else ''}cd {shlex.quote(str(cr.ROOT))}; {script}"
    full_env = dict(os.environ)
    full_env.pop("ENGINE_FAULT", None)
    full_env.update(env or {})
    return subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", body],
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc: subprocess.Popen[str], timeout: float = 2 * cr.ENGINE_TIMEOUT
            ) -> tuple[int, str, str]:
    """Wait for the shell (killed by pid past the deadline): status, stdout, stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def _probe_script() -> str:
    """Python printing what directio finds in $D: write-direct, read-direct."""
    code = ("import os, sys; from engine.images import directio as d; "
            "p = os.path.join(sys.argv[1], 'probe'); "
            "fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600); "
            "w = d.enable_direct_write(fd); os.write(fd, b'x' * 8192); d.close_quietly(fd); "
            "r = d.open_direct_read(p); print(w, r >= 0, os.path.getsize(p))")
    return f"\"$PY\" -c {shlex.quote(code)} \"$D\""


@pytest.mark.parametrize(("kind", "fault", "expect"), [
    ("tmpfs", "", None),  # O_DIRECT on tmpfs depends on the kernel (6.6+)
    ("ramfs", "", "False False 8192"),
    ("tmpfs", "no-direct-io", "False False 8192"),
    ("ext4", "no-direct-io", "False False 8192"),
])
def test_direct_io_probe(kind: str, fault: str, expect: str | None, tmp_path: Path) -> None:
    """The probe sees what the filesystem (or the fault condition) allows, and a refused
    O_DIRECT leaves a working buffered descriptor and an empty file behind the probe."""
    rc, out, err = _finish(_start_in_mount(kind, tmp_path / "mnt", _probe_script(),
                                           env={"ENGINE_FAULT": fault}))
    assert rc == 0, err
    if expect is None:
        write, read, size = out.split()
        assert size == "8192" and write == read
    else:
        assert out.strip() == expect


def test_direct_io_probe_on_ext4(tmp_path: Path) -> None:
    """On a disk filesystem O_DIRECT is kept, and the probe's page leaves no trace."""
    img = ImageDir.create(str(tmp_path / "img"))
    w = img.pages_writer("pages-1.img", 0, direct=True)
    assert w.direct
    w.close()  # checks the size: the probe's page was truncated away
    assert os.path.getsize(tmp_path / "img" / "pages-1.img") == 0


def test_abort_after_a_failing_close_closes_once(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """overlayfs on an old tmpfs fails close(2) with EINVAL (the descriptor is gone all
    the same): abort must neither raise nor close the number again."""
    img = ImageDir.create(str(tmp_path / "img"))
    w = img.pages_writer("pages-1.img", 1)
    fd = w.fd
    real_close = os.close
    calls: list[int] = []

    def einval_close(n: int) -> None:
        calls.append(n)
        real_close(n)
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "close", einval_close)
    w.abort()
    w.abort()
    monkeypatch.undo()
    assert calls == [fd]
    assert w.fd == -1


@pytest.fixture(autouse=True)
def _subreaper() -> None:
    cr.become_subreaper()


@pytest.fixture
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[cr.ZdtmTest]:
    """The zdtm test named by the parameter, started in tmp_path/work (on the disk)."""
    t = cr.ZdtmTest.start(request.param, tmp_path / "work")
    try:
        yield t
    finally:
        t.cleanup()


@pytest.mark.parametrize("running", ["mem_anon", "shmem_datagen_single"], indirect=True)
@pytest.mark.parametrize(("kind", "fault"), [
    ("tmpfs", ""), ("ramfs", ""), ("overlay", ""), ("ext4", ""),
    ("tmpfs", "no-direct-io"), ("overlay", "no-direct-io"),
])
def test_dump_restore_with_images_on(kind: str, fault: str, running: cr.ZdtmTest,
                                     tmp_path: Path) -> None:
    """dump -> restore with the images on each filesystem; the program passes."""
    tasks = cr.tree_of(running.pid)
    pidfile = tmp_path / "restored.pid"
    # Between dump and restore the shell waits until we reaped the dumped tree.
    gone = " && ".join(f"! [ -e /proc/{pid} ]" for pid in tasks)
    script = (f"\"$PY\" -m engine dump -t {running.pid} -D \"$D/img\"; "
              f"n=0; until {gone}; do n=$((n+1)); [ $n -lt 200 ]; sleep 0.05; done; "
              f"\"$PY\" -m engine restore -D \"$D/img\" -d --pidfile {shlex.quote(str(pidfile))}")
    proc = _start_in_mount(kind, tmp_path / "mnt", script, env={"ENGINE_FAULT": fault})
    try:
        for pid in tasks:  # the dumped tree is killed; its orphans come to us
            cr.wait_gone(pid, timeout=cr.ENGINE_TIMEOUT)
    finally:
        rc, _out, err = _finish(proc)
    assert rc == 0, err
    assert int(pidfile.read_text()) == running.pid
    assert "PASS" in running.stop()


def test_task_flags_follow_the_engine_descriptor() -> None:
    assert directio.task_flags(True) == os.O_DIRECT
    assert directio.task_flags(False) == 0
