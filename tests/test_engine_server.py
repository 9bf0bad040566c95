"""The engine server (engine/serve.py) and its client in the bundled driver
(zdtm/drivers/engine_client.py): a step forked from the server is the process a
subprocess ``python -m engine ARGS`` would be, deadlines kill exactly it, and a dead or
hung server makes steps subprocesses again, with a note, leaving nothing behind.

The engine runs for real: the commands are ``check``, ``show`` and a ``dump
--leave-running`` of a ``sleep`` this test starts, paused where the engine has seized it
(ENGINE_PAUSE) so that the running engine process can be looked at and signalled.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from zdtm import ROOT_DIR, plumbing
from zdtm.drivers import engine_client
from zdtm.drivers.base import (
    EngineFailure,
    StepProcess,
    TreeInfo,
    popen_launch,
    run_logged,
)
from zdtm.drivers.bundled import BundledEngine
from zdtm.drivers.engine_client import EngineServer, ServedProcess

PREFIX = BundledEngine(server=False).command()
ENV = BundledEngine(server=False).env()
PAUSED = "engine: paused at seize"
CLONE_NEWNS = 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18


@pytest.fixture(autouse=True)
def subreaper() -> None:
    """As in the harness: orphans (a dead server's children) come to this process."""
    plumbing.set_subreaper()


@pytest.fixture
def server() -> Iterator[EngineServer]:
    srv = EngineServer(PREFIX, ENV, ROOT_DIR)
    srv.start()
    yield srv
    srv.close()


@pytest.fixture
def closing() -> Iterator[list[BundledEngine]]:
    """Drivers a test makes, closed whatever its outcome."""
    made: list[BundledEngine] = []
    yield made
    for engine in made:
        engine.close()


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A process to dump (with --leave-running: it must keep running, untraced)."""
    proc = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    yield proc.pid
    proc.kill()
    proc.wait()


def _served(server: EngineServer, args: Sequence[str], log: Path,
            env: dict[str, str] | None = None, cwd: Path = ROOT_DIR) -> ServedProcess:
    with open(log, "wb") as out:
        return server.launch(args, out.fileno(), env or ENV, cwd, "test")


def _popened(args: Sequence[str], log: Path, env: dict[str, str] | None = None,
             cwd: Path = ROOT_DIR) -> StepProcess:
    with open(log, "wb") as out:
        return popen_launch([*PREFIX, *args], out.fileno(), env or ENV, cwd)


def _wait_for(log: Path, text: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not log.exists() or text not in log.read_text(errors="replace"):
        assert time.monotonic() < end, f"no {text!r} in {log}"
        time.sleep(0.01)


def _untraced_and_running(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return fields["TracerPid"].strip() == "0" and fields["State"].split()[0] in "RS"


def _own_fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            continue  # listdir's own
    return out


@pytest.mark.parametrize("args", [["check", "--json"], ["show", "/nonexistent"], ["bogus"],
                                  ["dump", "-t", "0"]])
def test_status_and_output_are_those_of_the_command(server: EngineServer, tmp_path: Path,
                                                    args: list[str]) -> None:
    served, plain = tmp_path / "served", tmp_path / "plain"
    assert _served(server, args, served).wait(60) == _popened(args, plain).wait(60)
    if args[0] == "check":  # the probes' reasons may name temp files: the verdicts agree
        assert (json.loads(served.read_text())["features"]
                == json.loads(plain.read_text())["features"])
    else:
        assert served.read_text() == plain.read_text()
        assert served.read_text().startswith("engine: error: ")


def _facts(pid: int) -> dict[str, object]:
    """What a process inherits or is given at start: fds, session, namespaces, cwd, umask,
    signal dispositions and mask."""
    status = dict(line.split(":\t", 1)
                  for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    st = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {
        "fds": {fd: os.readlink(f"/proc/{pid}/fd/{fd}").split("[")[0]
                for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int)},
        "own group and session": (int(st[2]), int(st[3])) == (pid, pid),
        "ns": {n: os.readlink(f"/proc/{pid}/ns/{n}") for n in engine_client.NAMESPACES},
        "cwd": os.readlink(f"/proc/{pid}/cwd"),
        **{k: status[k].strip() for k in ("Umask", "SigBlk", "SigIgn", "SigCgt",
                                          "NoNewPrivs", "Seccomp")},
    }


def _in_own_mount_ns(body: Callable[[], None]) -> None:
    """Run ``body`` in a thread of its own, in a private mount namespace of its own (as
    the harness unshares one per test), with SIGUSR1 blocked there."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            plumbing.check_libc(plumbing.libc.unshare(CLONE_NEWNS), "unshare")
            plumbing.check_libc(plumbing.libc.mount(None, b"/", None, MS_REC | MS_PRIVATE,
                                                    None), "mount --make-rprivate /")
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
            body()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def test_the_child_is_the_process_a_subprocess_would_be(server: EngineServer, sleeper: int,
                                                        tmp_path: Path) -> None:
    """Paused with the sleeper seized, the served engine and a subprocess engine started
    alike (from a thread with a mount namespace and umask of its own, a tmpfs cwd mounted
    there, an ignored and a blocked signal, the environment) look the same in /proc;
    SIGTERM ends both the same way and leaves the sleeper running, untraced."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = dict(ENV, ENGINE_PAUSE="seize")
    seen: dict[str, dict[str, object]] = {}
    outcome: dict[str, tuple[int, str]] = {}

    def both() -> None:
        plumbing.check_libc(plumbing.libc.mount(b"tmpfs", bytes(mnt), b"tmpfs", 0, None),
                            "mount tmpfs")
        os.umask(0o037)  # this thread's own (its fs_struct was unshared with the namespace)
        log = mnt / "step.log"
        for mode in ("served", "plain"):
            args = ["dump", "-t", str(sleeper), "-D", f"img-{mode}", "--leave-running"]
            proc = (_served(server, args, log, env, mnt) if mode == "served"
                    else _popened(args, log, env, mnt))
            _wait_for(log, PAUSED)
            seen[mode] = json.loads(json.dumps(_facts(proc.pid)).replace(f"img-{mode}", "img"))
            os.kill(proc.pid, signal.SIGTERM)
            outcome[mode] = (proc.wait(60), log.read_text().splitlines()[-1])

    old_mask = os.umask(0o027)
    old_usr2 = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        _in_own_mount_ns(both)
    finally:
        os.umask(old_mask)
        signal.signal(signal.SIGUSR2, old_usr2)
    assert seen["served"] == seen["plain"]
    assert seen["served"]["cwd"] == str(mnt) and seen["served"]["own group and session"]
    assert seen["served"]["Umask"] == "0037"  # the thread's, not the process's 0027
    assert outcome["served"] == outcome["plain"] == (
        1, "engine: error: interrupted: terminated by SIGTERM")
    assert not mnt.joinpath("step.log").exists()  # the tmpfs was the thread's only
    assert _untraced_and_running(sleeper)


def test_environment_reaches_each_command_and_no_further(server: EngineServer, sleeper: int,
                                                          tmp_path: Path) -> None:
    """ENGINE_FAULT of one request fails that dump (engine/faults.py reads it when the
    step ends); the next request, without it, dumps."""
    args = ["dump", "-t", str(sleeper), "--leave-running", "-D"]
    faulty = _served(server, [*args, str(tmp_path / "a")], tmp_path / "a.log",
                     dict(ENV, ENGINE_FAULT="seize"))
    assert faulty.wait(60) == 1
    assert (tmp_path / "a.log").read_text().splitlines()[-1] == (
        "engine: error: seize: fault injected (ENGINE_FAULT=seize)")
    assert _served(server, [*args, str(tmp_path / "b")], tmp_path / "b.log").wait(60) == 0
    assert (tmp_path / "b" / "inventory.json").exists()
    assert _untraced_and_running(sleeper)


def test_deadline_kills_exactly_the_request(server: EngineServer, sleeper: int,
                                            tmp_path: Path) -> None:
    """A step past its deadline: its pid and group are killed, the server (which reaps
    it) goes on serving, the dumped process runs on, no fd of the client stays open."""
    fds0 = _own_fds()
    started: list[ServedProcess] = []

    def launch(cmd: Sequence[str], out: int, env: dict[str, str] | None,
               cwd: Path | None) -> StepProcess:
        started.append(server.launch(cmd[len(PREFIX):], out, env or ENV, cwd or ROOT_DIR,
                                     "dump"))
        return started[-1]

    with pytest.raises(EngineFailure) as exc:
        run_logged([*PREFIX, "dump", "-t", str(sleeper), "-D", str(tmp_path / "img"),
                    "--leave-running"], step="dump", log=tmp_path / "dump.log", timeout=8,
                   env=dict(ENV, ENGINE_PAUSE="seize"), cwd=ROOT_DIR, launch=launch)
    assert exc.value.kind == "timeout" and PAUSED in exc.value.log
    assert started[0].returncode == -signal.SIGKILL
    assert not os.path.exists(f"/proc/{started[0].pid}")
    assert _untraced_and_running(sleeper)
    assert _served(server, ["show", "/nonexistent"], tmp_path / "l").wait(60) == 1
    assert server.failed is None and _own_fds() == fds0


def _paused_dump(server: EngineServer, sleeper: int, tmp_path: Path
                 ) -> tuple[ServedProcess, Path]:
    """A served dump --leave-running of the sleeper, paused where it has seized it; and
    its log."""
    log = tmp_path / "dump.log"
    proc = _served(server, ["dump", "-t", str(sleeper), "-D", str(tmp_path / "img"),
                            "--leave-running"], log, dict(ENV, ENGINE_PAUSE="seize"))
    _wait_for(log, PAUSED)
    return proc, log


def test_server_hung_when_its_step_ends(server: EngineServer, sleeper: int, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The server stopped while its child runs, which is killed (no word of its own):
    once it has exited and no status came within STATUS_GRACE, the server is killed by
    pid and the child (a zombie now re-parented here) gives its status to waitid()."""
    monkeypatch.setattr(engine_client, "STATUS_GRACE", 1.0)
    proc, _ = _paused_dump(server, sleeper, tmp_path)
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    assert server.failed == f"gave no status for pid {proc.pid} 1s after it exited"
    assert server.proc.returncode == -signal.SIGKILL
    assert _untraced_and_running(sleeper)


def test_a_step_without_children_tells_its_own_status(server: EngineServer, sleeper: int,
                                                      tmp_path: Path) -> None:
    """A step whose command ends without a child of its own sends its status itself,
    before it exits: it comes with the server stopped, which cannot send it, and the
    client still uses the server after."""
    proc, log = _paused_dump(server, sleeper, tmp_path)
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 1
        assert proc.cpu_s is not None and proc.cpu_s > 0 and proc.maxrss_kib
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    assert log.read_text().splitlines()[-1] == (
        "engine: error: interrupted: terminated by SIGTERM")
    assert server.failed is None
    assert _served(server, ["show", "/nonexistent"], tmp_path / "l").wait(60) == 1


def test_a_restore_says_its_status_once_its_root_is_the_clients(
        server: EngineServer, sleeper: int, tmp_path: Path) -> None:
    """A restore ends with the root its child: its status comes from the server, after
    its exit, when the root has been handed to the client (the child subreaper), never
    before (the client may wait for the root at once)."""
    img = tmp_path / "img"
    img.mkdir()
    assert _served(server, ["dump", "-t", str(sleeper), "-D", str(img)],
                   tmp_path / "dump.log").wait(60) == 0
    os.waitpid(sleeper, 0)  # killed by the dump: its pid is free again
    proc = _served(server, ["restore", "-D", str(img), "-d"], tmp_path / "restore.log")
    assert proc.wait(60) == 0
    status = Path(f"/proc/{sleeper}/status").read_text()
    assert f"\nPPid:\t{os.getpid()}\n" in status


class _Paused(BundledEngine):
    """The bundled engine with its dumps paused at commit (ENGINE_PAUSE) on demand."""

    pause = ""

    def env(self) -> dict[str, str]:
        return dict(super().env(), ENGINE_PAUSE=self.pause) if self.pause else super().env()


def _children() -> set[int]:
    return set(plumbing.children(os.getpid()))


def test_server_dying_mid_step_the_step_goes_on_then_subprocesses(
        sleeper: int, tmp_path: Path, closing: list[BundledEngine]) -> None:
    """The server killed while a dump runs: the dump finishes (its process, re-parented
    here, is waited for directly) and succeeds; the result gets a note; the next step is
    a subprocess, said in its log; nothing is left."""
    fds0, children0 = _own_fds(), _children()
    engine = _Paused(server=True)
    closing.append(engine)
    engine.pause = "commit"
    engine.attach(TreeInfo())
    server = engine._server
    assert server is not None and server.proc is not None
    private = server.path.parent
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(engine.dump(
        sleeper, tmp_path / "a", leave_running=True, parent_images=None, opts=(),
        timeout=120)))
    (tmp_path / "a").mkdir()
    worker.start()
    _wait_for(tmp_path / "a.log", "engine: paused at commit")
    # the step leads a session of its own (the other child is the spare, engine/serve.py)
    step_pid, = [p for p in plumbing.children(server.proc.pid) if os.getsid(p) == p]
    os.kill(server.proc.pid, signal.SIGKILL)
    # past the commit SIGTERM is ignored, which ends the pause: the dump reports success
    os.kill(step_pid, signal.SIGTERM)
    worker.join(60)
    assert not worker.is_alive() and result and (tmp_path / "a" / "inventory.json").exists()
    engine.pause = ""
    (tmp_path / "b").mkdir()
    engine.dump(sleeper, tmp_path / "b", leave_running=True, parent_images=None, opts=(),
                timeout=120)
    assert "# engine server: was killed by SIGKILL during the dump step" in (
        tmp_path / "b.log").read_text()
    engine.close()
    assert engine.take_notes() == [
        (f"engine server: was killed by SIGKILL during the dump step (pid {step_pid} went "
         "on without it): any later step ran as a subprocess")]
    assert _untraced_and_running(sleeper)
    assert not private.exists()
    assert plumbing.wait_gone(list(_children() - children0), 10) == []
    assert _own_fds() == fds0


@pytest.mark.parametrize("trouble", ["stopped", "killed"])
def test_hung_or_dead_server_makes_the_step_a_subprocess(
        trouble: str, sleeper: int, tmp_path: Path, closing: list[BundledEngine],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that does not answer (stopped) or is gone before the step: the step runs
    as a subprocess and succeeds, with a note; the server is killed by pid."""
    monkeypatch.setattr(engine_client, "REPLY_TIMEOUT", 1.0)
    fds0 = _own_fds()
    engine = BundledEngine(server=True)
    closing.append(engine)
    engine.attach(TreeInfo())
    server = engine._server
    assert server is not None and server.proc is not None
    _served(server, ["show", "/nonexistent"], tmp_path / "ready").wait(60)
    pid = server.proc.pid
    os.kill(pid, signal.SIGSTOP if trouble == "stopped" else signal.SIGKILL)
    settled = "T" if trouble == "stopped" else "Z"  # a zombie: its socket is closed
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != settled:
        time.sleep(0.01)
    (tmp_path / "img").mkdir()
    engine.dump(sleeper, tmp_path / "img", leave_running=True, parent_images=None, opts=(),
                timeout=120)
    why = "no answer in 1s" if trouble == "stopped" else "cannot connect"
    log = (tmp_path / "img.log").read_text()
    assert f"# engine server: {why}" in log and "run as a subprocess" in log
    engine.close()
    notes = engine.take_notes()
    assert len(notes) == 1 and notes[0].startswith(f"engine server: {why}")
    assert not os.path.exists(f"/proc/{pid}") and _own_fds() == fds0
    assert _untraced_and_running(sleeper)


def test_a_step_whose_start_up_variables_changed_is_a_subprocess(
        sleeper: int, tmp_path: Path, closing: list[BundledEngine],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """TZ (read once, at interpreter start-up) changed after the server started: the step
    runs as a subprocess, with a note; the server stays in use."""
    engine = BundledEngine(server=True)
    closing.append(engine)
    engine.attach(TreeInfo())
    monkeypatch.setenv("TZ", "XYZ-3")
    (tmp_path / "img").mkdir()
    engine.dump(sleeper, tmp_path / "img", leave_running=True, parent_images=None, opts=(),
                timeout=120)
    assert "# engine server: TZ differs from the server's: run as a subprocess" in (
        tmp_path / "img.log").read_text()
    assert engine.take_notes() == [
        "engine server: TZ differs from the server's: the dump step ran as a subprocess"]
    assert engine._server is not None and engine._server.failed is None


def test_server_is_private_and_ends_with_its_client(tmp_path: Path) -> None:
    """Socket 0600 in a directory 0700 of its own; a client killed outright (no close())
    takes its server with it, and nothing of them stays."""
    code = ("import sys, time; from pathlib import Path; "
            "from zdtm.drivers.engine_client import EngineServer; "
            f"s = EngineServer({PREFIX!r}, {ENV!r}, Path({str(ROOT_DIR)!r})); s.start(); "
            "s._connect().close(); print(s.proc.pid, s.path, flush=True); time.sleep(600)")
    client = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=ENV,
                              cwd=ROOT_DIR, text=True)
    try:
        assert client.stdout is not None
        pid_text, path_text = client.stdout.readline().split()
        path = Path(path_text)
    except BaseException:
        client.kill()
        client.wait()
        raise
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        client.kill()
        client.wait()
        assert plumbing.wait_gone([int(pid_text)], 10) == []
        assert not path.parent.exists()  # the server removed its socket and directory
    finally:
        client.kill()
        client.wait()
        shutil.rmtree(path.parent, ignore_errors=True)


def test_each_request_goes_to_a_child_forked_before_it_the_spare_dies_with_the_server(
        tmp_path: Path) -> None:
    """The server forks the child of the next request ahead (off the request's path): a
    request is run by the child that waited for it, the next one by a new one; killed
    outright, the server takes its waiting child with it."""
    srv = EngineServer(PREFIX, ENV, ROOT_DIR)
    srv.start()
    try:
        srv._connect().close()  # listening: its spare is forked by now
        first = _spare(srv)
        step = _served(srv, ["check", "--json"], tmp_path / "one")
        assert step.pid == first and step.wait(60) == 0
        second = _spare(srv)
        assert second != first
        assert srv.proc is not None
        os.kill(srv.proc.pid, signal.SIGKILL)
        assert plumbing.wait_gone([second], 10) == []
    finally:
        srv.close()


def _spare(srv: EngineServer) -> int:
    """The server's one waiting child (it has not made a session of its own yet)."""
    assert srv.proc is not None
    end = time.monotonic() + 30
    while True:
        spares = [p for p in plumbing.children(srv.proc.pid) if os.getsid(p) != p]
        if len(spares) == 1:
            return spares[0]
        assert time.monotonic() < end, f"not one spare child: {spares}"
        time.sleep(0.01)


#: /proc/net/unix Flags of a listening socket (__SO_ACCEPTCON)
_ACCEPTCON = 0x10000


def _listening_inode(path: Path) -> int:
    """The inode of the unix socket listening at `path` (/proc/net/unix also names the
    path on each connection accepted from it)."""
    with open("/proc/net/unix", encoding="ascii", errors="replace") as f:
        for line in f:
            fields = line.split()
            if (len(fields) >= 8 and fields[7] == str(path)
                    and int(fields[3], 16) & _ACCEPTCON):
                return int(fields[6])
    raise AssertionError(f"nothing listens at {path}")


def _socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` holds."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if link.startswith("socket:["):
            found.add(int(link[len("socket:["):-1]))
    return found


def test_only_the_server_holds_its_listening_socket() -> None:
    """The spare drops the listening socket right after its fork, so a server killed
    outright refuses connections at once (a spare still holding it until its own death,
    a moment later, had a client connect and then be reset)."""
    srv = EngineServer(PREFIX, ENV, ROOT_DIR)
    srv.start()
    try:
        srv._connect().close()
        assert srv.proc is not None
        listener = _listening_inode(srv.path)
        assert listener in _socket_inodes(srv.proc.pid)
        spare = _spare(srv)
        end = time.monotonic() + 10
        while listener in _socket_inodes(spare):
            assert time.monotonic() < end, "the spare holds the listening socket"
            time.sleep(0.01)
    finally:
        srv.close()


def _private_dirty_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Private_Dirty:"))


def test_a_waiting_spare_makes_the_servers_pages_its_own() -> None:
    """While it waits, the spare copies the server's pages it shares copy-on-write (a
    request would otherwise copy them one fault at a time): soon most of the server's
    dirty memory is the spare's own."""
    srv = EngineServer(PREFIX, ENV, ROOT_DIR)
    srv.start()
    try:
        srv._connect().close()
        assert srv.proc is not None
        end = time.monotonic() + 30
        spare, own = 0, 0
        while time.monotonic() < end:
            kids = [p for p in plumbing.children(srv.proc.pid) if os.getsid(p) != p]
            if kids:
                spare = kids[0]
                own = _private_dirty_kib(spare)
                if own > 8 << 10:
                    break
            time.sleep(0.05)
        assert spare, "no spare child"
        assert own > 8 << 10, f"the spare's own dirty pages: {own} KiB"
    finally:
        srv.close()
