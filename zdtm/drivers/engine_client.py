"""The bundled driver's side of the engine server (engine/serve.py, protocol there).

One ``python -S -m engine serve --socket PATH`` per driver session pays interpreter
start-up and the engine's imports once; each engine step is then a fork of it, started
with this process's environment, cwd, umask, signal dispositions and mask, namespaces and
fds, so that it is the process ``python -m engine ARGS`` would have been.

The server is this process's child, in its own session, its socket in a private temporary
directory (0700; the socket 0600): two harness runs never share one.  It ends by itself
when this process ends, and close() kills it by pid.  Anything wrong with it (it is not
listening in time, gives no answer, dies) makes the step at hand a plain subprocess when
nothing of it ran yet; a step already running goes on without the server (its process is
re-parented to this process, the harness's child subreaper, and waited for directly).
The server is not asked again after a failure (``failed`` says why).
"""

from __future__ import annotations

import array
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from zdtm.drivers.base import EngineFailure

#: from the server's start to its socket accepting (its imports run meanwhile)
START_TIMEOUT = 30.0
#: from a request to the server's answer with the child's pid (it only forks)
REPLY_TIMEOUT = 10.0
#: from the child's exit to the server's word on its status
STATUS_GRACE = 5.0
#: namespaces sent with each request (the harness moves itself into new mount ones)
NAMESPACES = ("mnt", "net", "uts", "ipc", "cgroup")
KILL_GRACE = 5.0


class ServerUnavailable(Exception):
    """The server cannot take this request; nothing of it ran (the message says why)."""


class EngineServer:
    """One engine server process and the requests sent to it."""

    def __init__(self, prefix: Sequence[str], env: dict[str, str], cwd: Path) -> None:
        self.prefix = list(prefix)
        self.env = dict(env)
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: Path | None = None
        self.ready = False
        #: why the server is no longer used (None while it is)
        self.failed: str | None = None
        self._started = 0.0

    @property
    def path(self) -> Path:
        """The socket's path."""
        assert self.dir is not None
        return self.dir / "serve.sock"

    def start(self) -> None:
        """Start the server; it is ready once its socket accepts (see launch)."""
        self.dir = Path(tempfile.mkdtemp(prefix="zdtm-engine-"))
        with open(self.dir / "serve.log", "wb") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, "serve", "--socket", str(self.path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.cwd, start_new_session=True, close_fds=True)
        self._started = time.monotonic()

    def differs(self, env: dict[str, str]) -> str | None:
        """Why a command with ``env`` cannot be forked from this server (a variable the
        interpreter reads at start-up differs), else None."""
        ours, theirs = _startup_vars(self.env), _startup_vars(env)
        diff = sorted(set(ours.items()) ^ set(theirs.items()))
        return f"{diff[0][0]} differs from the server's" if diff else None

    def launch(self, argv: Sequence[str], out: int, env: dict[str, str], cwd: Path,
               step: str) -> ServedProcess:
        """Have the server run ``python -m engine ARGV`` with stdout and stderr on ``out``.

        ServerUnavailable when it cannot (nothing ran; the server is given up and killed).
        """
        if self.failed is not None:
            raise ServerUnavailable(self.failed)
        go_r, go_w = os.pipe()
        try:
            conn = self._connect()
            try:
                pid, pidfd = self._ask(conn, argv, out, env, cwd, go_r)
            except BaseException:
                conn.close()
                raise
            try:
                os.write(go_w, b"g")  # the child runs from here on
            except OSError:
                conn.close()
                os.close(pidfd)
                raise
        except ServerUnavailable as exc:
            self.fail(str(exc))
            raise
        except OSError as exc:
            self.fail(f"request failed: {exc}")
            raise ServerUnavailable(self.failed or str(exc)) from None
        finally:
            os.close(go_r)
            os.close(go_w)
        return ServedProcess(self, step, argv, pid, pidfd, conn)

    def _connect(self) -> socket.socket:
        """A connection, once the server listens (until START_TIMEOUT after its start)."""
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if self.ready:
                    raise ServerUnavailable(f"cannot connect: {exc.strerror}") from None
            else:
                if not self.ready:
                    self._now_ready()
                return sock
            rc = self.proc.poll() if self.proc is not None else -1
            if rc is not None:
                raise ServerUnavailable(f"exited with status {rc} before it listened"
                                        + self._log_tail())
            if time.monotonic() - self._started > START_TIMEOUT:
                raise ServerUnavailable(f"not listening {START_TIMEOUT:.0f}s after its start")
            time.sleep(0.002)

    def _now_ready(self) -> None:
        """The server listens: its start-up went well, its log is no longer needed (and
        a server whose client dies can then leave an empty directory, which it removes)."""
        self.ready = True
        assert self.dir is not None
        (self.dir / "serve.log").unlink(missing_ok=True)

    def _ask(self, conn: socket.socket, argv: Sequence[str], out: int, env: dict[str, str],
             cwd: Path, go: int) -> tuple[int, int]:
        """Send the request; the child's (pid, pidfd) from the answer."""
        names, fds = _namespaces()
        message = json.dumps({
            "argv": list(argv), "env": env, "cwd": str(cwd), "umask": _umask(),
            "ignored": _ignored_signals(), "ns": names,
            "mask": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
        }).encode()
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            conn.settimeout(REPLY_TIMEOUT)
            conn.sendmsg([message], [_rights([null, out, out, go, *fds])])
            data, anc, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(4),
                                           socket.MSG_CMSG_CLOEXEC)
        except TimeoutError:
            raise ServerUnavailable(f"no answer in {REPLY_TIMEOUT:.0f}s") from None
        except OSError as exc:
            raise ServerUnavailable(f"request failed: {exc}") from None
        finally:
            for fd in (null, *fds):
                os.close(fd)
        return _started(data, anc)

    def how_it_ended(self, grace: float = 1.0) -> str:
        """How the server, which closed a connection it still owed a status, ended."""
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            return "closed a connection and still runs"
        if rc < 0:
            return f"was killed by {signal.Signals(-rc).name}"
        return f"exited with status {rc}"

    def fail(self, why: str) -> None:
        """Give the server up: kill it by pid; later requests are refused with ``why``."""
        if self.failed is None:
            self.failed = why
        self._kill()

    def close(self) -> None:
        """Kill the server by pid and remove its directory."""
        self._kill()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _kill(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.kill()
        try:
            self.proc.wait(timeout=KILL_GRACE)
        except subprocess.TimeoutExpired:
            pass  # unkillable (D state): the leak checks report it

    def _log_tail(self) -> str:
        try:
            assert self.dir is not None
            lines = (self.dir / "serve.log").read_text(errors="replace").strip().splitlines()
        except (OSError, AssertionError):
            return ""
        return f" ({lines[-1]})" if lines else ""


class ServedProcess:
    """A command the server runs (a StepProcess): pid, wait with a deadline, kill."""

    def __init__(self, server: EngineServer, step: str, argv: Sequence[str], pid: int,
                 pidfd: int, conn: socket.socket) -> None:
        self.server = server
        self.step = step
        self.args = list(argv)
        self.pid = pid
        self.pidfd: int | None = pidfd
        self.conn: socket.socket | None = conn
        self.returncode: int | None = None
        #: CPU seconds and peak RSS (KiB) the server's wait4 saw (None: not from it)
        self.cpu_s: float | None = None
        self.maxrss_kib: int | None = None
        self._exited_at: float | None = None  # when its pidfd said it had exited

    def wait(self, timeout: float | None = None) -> int:
        """Its exit status (negative: killed by that signal), from the server or, once
        the server is gone, from waitid() on the re-parented child; TimeoutExpired."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            self._wait_once(left)
        self._close()
        return self.returncode

    def _wait_once(self, left: float | None) -> None:
        assert self.pidfd is not None
        if self.conn is None:  # the server is gone: the child is ours now
            if _readable([self.pidfd], left):
                self.returncode = self._waitid()
            return
        if self._exited_at is None:
            ready = _readable([self.conn.fileno(), self.pidfd], left)
            if self.conn.fileno() in ready:
                self._read_status()
            elif ready:
                self._exited_at = time.monotonic()
            return
        grace = self._exited_at + STATUS_GRACE - time.monotonic()
        if _readable([self.conn.fileno()], max(0.0, min(grace, left or grace))):
            self._read_status()
        elif grace <= 0:
            self.server.fail(f"gave no status for pid {self.pid} {STATUS_GRACE:.0f}s "
                             "after it exited")

    def _read_status(self) -> None:
        assert self.conn is not None
        try:
            data = self.conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.server.fail(f"{self.server.how_it_ended()} during the {self.step} step "
                             f"(pid {self.pid} went on without it)")
            self.conn.close()
            self.conn = None
            return
        try:
            answer = json.loads(data)
            status = answer.get("status")
        except (ValueError, AttributeError):
            status = None
        if not isinstance(status, int):
            raise EngineFailure("error", self.step, f"engine server: bad answer {data!r}")
        self.returncode = os.waitstatus_to_exitcode(status)
        cpu, rss = answer.get("cpu_s"), answer.get("maxrss_kib")
        if isinstance(cpu, (int, float)) and isinstance(rss, int):
            self.cpu_s, self.maxrss_kib = float(cpu), rss

    def _waitid(self) -> int:
        """The status of the exited child, now re-parented to this process."""
        assert self.pidfd is not None
        try:
            info = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED)
        except ChildProcessError:
            raise EngineFailure("error", self.step, f"engine server died; the status of "
                                f"pid {self.pid} is lost (it was not re-parented here: no "
                                "child subreaper)") from None
        assert info is not None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def kill(self, grace: float) -> None:
        """SIGKILL exactly this child (by its pidfd), then its process group; reap it
        (through the server) waiting at most ``grace`` seconds."""
        if self.returncode is None and self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.wait(grace)
            except (subprocess.TimeoutExpired, EngineFailure):
                pass  # unkillable (D state) or lost: the leak checks report what stays
        self._close()

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _startup_vars(env: dict[str, str]) -> dict[str, str]:
    """The variables read once at interpreter start-up: its settings (PYTHON*), the stdio
    encoding (locale) and the time zone of the time module."""
    return {k: v for k, v in env.items()
            if k.startswith(("PYTHON", "LC_")) or k in ("LANG", "TZ")}


def _readable(fds: list[int], timeout: float | None) -> list[int]:
    """Those of ``fds`` readable (or hung up) within ``timeout`` seconds (None: no limit)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(None if timeout is None else timeout * 1000)]


def _started(data: bytes, anc: list[tuple[int, int, bytes]]) -> tuple[int, int]:
    """(pid, pidfd) from the server's first answer; ServerUnavailable otherwise."""
    fds = array.array("i")
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    try:
        answer = json.loads(data) if data else {}
        pid = answer.get("pid")
        if not isinstance(pid, int) or len(fds) != 1:
            raise ServerUnavailable(str(answer.get("error") or f"bad answer {data!r}"))
        return pid, fds.pop()
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _rights(fds: list[int]) -> tuple[int, int, bytes]:
    return socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes()


def _namespaces() -> tuple[list[str], list[int]]:
    """Names and fds of this thread's namespaces (those this kernel has)."""
    names: list[str] = []
    fds: list[int] = []
    try:
        for name in NAMESPACES:
            try:
                fds.append(os.open(f"/proc/thread-self/ns/{name}",
                                   os.O_RDONLY | os.O_CLOEXEC))
            except FileNotFoundError:
                continue
            names.append(name)
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return names, fds


def _umask() -> int:
    """This thread's umask (a thread that unshared CLONE_FS has its own; a subprocess
    would inherit the calling thread's), read without changing it."""
    with open("/proc/thread-self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    raise OSError("no Umask line in /proc/thread-self/status")


#: the signal numbers, once (signal.valid_signals() makes enum members: ~50 us a request)
_SIGNALS = sorted(int(s) for s in signal.valid_signals())


def _ignored_signals() -> list[int]:
    """Signals this process ignores (a fresh process would inherit that across exec)."""
    return [s for s in _SIGNALS if signal.getsignal(s) == signal.SIG_IGN]
