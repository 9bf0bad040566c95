"""The flavours set up what they promise: pids, namespaces, hostname, lo, /proc, id maps."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flavors import Started, StartError, get_flavor
from tests.fake_support import build_fake
from zdtm import plumbing
from zdtm.build import ensure_built

NS_KINDS = ("pid", "mnt", "net", "uts", "ipc")


@pytest.fixture(scope="module")
def env_binary() -> Iterator[Path]:
    """The fake test that reports its namespaces, in a dir uid 100000 can reach."""
    ensure_built([])  # flavors/nsinit
    d = Path(tempfile.mkdtemp(prefix="zdtm-flv-"))
    try:
        os.chmod(d, 0o755)
        build_fake("ENV", d / "envtest")
        yield d / "envtest"
    finally:
        shutil.rmtree(d)


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="zdtm-flv-work-"))
    os.chmod(d, 0o755)
    before = set(plumbing.descendants(os.getpid()))
    try:
        yield d
    finally:
        new = [p for p in plumbing.descendants(os.getpid()) if p not in before]
        # an init whose tree is gone exits by itself: give it a moment, reap it
        left = plumbing.wait_gone(new, 5.0)
        plumbing.kill_tree(left, 10.0)
        shutil.rmtree(d)
        assert not left, f"flavour left processes running: {left}"


def _ns(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def _status(pid: int, key: str) -> list[str]:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return line.split()[1:]
    raise KeyError(key)


def _mount_ids(pid: int) -> set[str]:
    with open(f"/proc/{pid}/mountinfo") as f:
        return {line.split()[0] for line in f}


def _fd_mounts(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            out |= {line.split()[1] for line in f if line.startswith("mnt_id:")}
    return out


def _run(flavor: str, binary: Path, workdir: Path) -> tuple[Started, str]:
    fl = get_flavor(flavor)
    fl.prepare(workdir)
    argv = [str(binary), "--pidfile=t.pid", "--outfile=t.out"]
    st = fl.start(argv, workdir, "t.pid", 10.0, workdir / "start.log")
    return st, (workdir / "t.out").read_text()


def _stop(st: Started, workdir: Path) -> str:
    os.kill(st.test_pid, signal.SIGTERM)
    assert plumbing.wait_gone([st.test_pid], 10.0) == []
    return (workdir / "t.out").read_text()


def test_h_lives_in_our_namespaces(env_binary: Path, workdir: Path) -> None:
    st, out = _run("h", env_binary, workdir)
    assert st.root_pid == st.test_pid == st.ns_pid
    for kind in NS_KINDS:
        assert _ns(st.test_pid, kind) == _ns(os.getpid(), kind)
    assert f"pid={st.test_pid} " in out and f"host={os.uname().nodename} " in out
    assert "PASS" in _stop(st, workdir)


@pytest.mark.parametrize("flavor", ["ns", "uns"])
def test_ns_flavours(flavor: str, env_binary: Path, workdir: Path) -> None:
    st, out = _run(flavor, env_binary, workdir)
    # the engine gets the init (pid 1 inside); the test's host pid is found through NSpid
    assert st.root_pid != st.test_pid
    assert _status(st.root_pid, "NSpid")[-1] == "1"
    assert _status(st.test_pid, "NSpid") == [str(st.test_pid), str(st.ns_pid)]
    assert st.test_pid in plumbing.descendants(st.root_pid)
    # self-contained for C/R: the init leads its own session and process group
    assert os.getsid(st.root_pid) == os.getpgid(st.root_pid) == st.root_pid
    for kind in NS_KINDS:
        assert _ns(st.test_pid, kind) != _ns(os.getpid(), kind), kind
        assert _ns(st.test_pid, kind) == _ns(st.root_pid, kind), kind
    # a root of its own (the work dir), the test and the init run from copies in it, and
    # every fd they hold is on a mount of their own mount namespace (what CRIU requires)
    for pid in (st.test_pid, st.root_pid):
        assert os.path.samefile(f"/proc/{pid}/root", workdir)
        assert os.readlink(f"/proc/{pid}/exe").startswith("/.bin/")
        assert _fd_mounts(pid) <= _mount_ids(pid), pid
    # inside: its own hostname, lo up, its own /proc (pid 1 there is nsinit)
    assert f"env host=zdtm-ns uid=0 pid={st.ns_pid} lo_up=1 init=nsinit" in out, out
    if flavor == "uns":
        assert _ns(st.test_pid, "user") != _ns(os.getpid(), "user")
        with open(f"/proc/{st.test_pid}/uid_map") as f:
            assert f.read().split() == ["0", "100000", "65536"]
        assert _status(st.test_pid, "Uid")[0] == "100000"  # root inside, not outside
    else:
        assert _ns(st.test_pid, "user") == _ns(os.getpid(), "user")
        assert _status(st.test_pid, "Uid")[0] == "0"
    assert "PASS" in _stop(st, workdir)
    # the init leaves once the tree is gone, and is re-parented to no one but us
    assert plumbing.wait_gone([st.root_pid], 10.0) == []


def test_failing_starter_is_reported(workdir: Path) -> None:
    fl = get_flavor("ns")
    fl.prepare(workdir)
    with pytest.raises(StartError) as exc:
        fl.start(["/bin/false"], workdir, "t.pid", 10.0, workdir / "start.log")
    assert exc.value.kind == "failed"
    assert "test starter exited with 1" in exc.value.message


def test_ns_root_runs_an_env_python_script_with_its_deps(workdir: Path) -> None:
    """A `#!/usr/bin/env python3` script gets the harness's interpreter, its standard
    library (sqlite3's extension and libsqlite3 too) and the .py modules beside it; a
    desc dep is installed at its own path; the root runs the script on its own."""
    import sys

    from flavors.root import install_test, make_root

    src = workdir / "src"
    src.mkdir()
    (src / "helper.py").write_text("VALUE = 7\n")
    script = src / "prog"
    script.write_text("#!/usr/bin/env python3\nimport os, sys, sqlite3, asyncio\n"
                      "sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))\n"
                      "import helper\nprint(helper.VALUE, sqlite3.connect(':memory:')"
                      ".execute('select 6*7').fetchone()[0])\n")
    script.chmod(0o755)
    root = workdir / "root"
    root.mkdir()
    make_root(root)
    get_flavor("ns").prepare(root, ["/nonexistent/dep|/bin/true"])
    argv = install_test(root, script)
    assert argv == [os.path.realpath(sys.executable), "/.bin/prog"]
    assert (root / "bin" / "true").is_file()
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    out = subprocess.run([chroot, str(root), *argv], capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin"}, check=False)
    assert out.returncode == 0 and out.stdout == "7 42\n", out.stderr
