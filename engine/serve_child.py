"""The engine server's forked child (engine.serve): it becomes the process a fresh
``python -m engine ARGS`` started by the client would be, runs that, and exits as that
process would.

What a fresh process has and a fork of the server does not is set from the request: fds
0-2 (and no other fd of the server), session (its own, as the client's subprocess had
with start_new_session), the client's mount/net/uts/ipc/cgroup namespaces where they
differ from the server's (the harness moves itself into a new mount namespace per test),
cwd, umask, environment (ENGINE_FAULT and the like are read from it when used), signal
dispositions and mask, sys.argv.  Signals: what the client ignores stays ignored (as
across exec), everything else is default, then Python's own start-up choices (SIGPIPE and
SIGXFSZ ignored, SIGINT raising KeyboardInterrupt); the mask is the client's.  The end is
the interpreter's: non-daemon threads joined, atexit handlers, stdio flushed (status 120
when that fails), then os._exit.

What the interpreter reads once at start-up (PYTHON* variables, -X options, the hash
seed, the locale of its stdio, TZ) is the server's; the client starts the server with its
own environment and does not send a request whose PYTHON*, LANG, LC_* or TZ differ.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import resource
import select
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from engine.kernel import sys as ksys

#: how long the child waits for the client's go before giving up (it runs nothing)
GO_TIMEOUT = 60.0
EXIT_NOT_STARTED = 125  # the client never said go: nobody waits for this status
EXIT_SETUP = 127  # the request could not be set up (said on its stderr)
#: the end of the os.closerange that closes every fd above a number
_FD_END = (1 << 31) - 1
#: namespaces a request may carry, as named under /proc/PID/ns
NAMESPACES = frozenset({"mnt", "net", "uts", "ipc", "cgroup"})
#: what CPython itself sets at start-up (and subprocess resets before exec)
PYTHON_IGNORES = (signal.SIGPIPE, signal.SIGXFSZ)
#: the signal numbers, once (signal.valid_signals() makes a set of enum members: ~50 us,
#: which each request paid four times)
VALID_SIGNALS = frozenset(int(s) for s in signal.valid_signals())


@dataclass(frozen=True)
class Request:
    """One command to run, as the server received it."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    umask: int
    ignored: frozenset[int]
    mask: frozenset[int]
    stdio: tuple[int, int, int]
    go: int
    ns: tuple[tuple[str, int], ...]

    @classmethod
    def parse(cls, data: object, fds: list[int]) -> Request:
        """The request in ``data`` (decoded JSON) with its ``fds``; ValueError or
        TypeError naming what is wrong."""
        if not isinstance(data, dict):
            raise TypeError("request is not a JSON object")
        argv = _strings(data.get("argv"), "argv")
        env = data.get("env")
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ValueError("env is not an object of strings")
        ns = _strings(data.get("ns", []), "ns")
        if set(ns) - NAMESPACES:
            raise ValueError(f"ns: unknown namespace(s) {sorted(set(ns) - NAMESPACES)}")
        if len(fds) != 4 + len(ns):
            raise ValueError(f"{len(fds)} fds for 4 + {len(ns)} namespaces")
        cwd, umask = data.get("cwd"), data.get("umask")
        if not isinstance(cwd, str) or not isinstance(umask, int):
            raise TypeError("cwd must be a string and umask a number")
        return cls(argv, env, cwd, umask & 0o777, _signals(data.get("ignored")),
                   _signals(data.get("mask")), (fds[0], fds[1], fds[2]), fds[3],
                   tuple(zip(ns, fds[4:])))


def _strings(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} is not a list of strings")
    return list(value)


def _signals(value: object) -> frozenset[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and v in VALID_SIGNALS
                                              for v in value):
        raise ValueError(f"not a list of signal numbers: {value!r}")
    return frozenset(value)


@dataclass(frozen=True)
class Reply:
    """Where the client's connection is: the server's pid and its fd there."""

    server: int
    fd: int


def run(req: Request, program: Callable[[list[str]], int], forget: Callable[[], None],
        reply: Reply) -> NoReturn:
    """In the forked child: become the requested process, wait for go, run ``program``
    on its argv and exit with its status, told the client first when it can (_report).
    Never returns."""
    try:
        forget()
        os.setsid()
        # Becoming the process costs ~0.4 ms: done while the client learns the pid and
        # says go (nothing of the command runs before go)
        _become(req)
        if not _wait_go(req.go):
            os._exit(EXIT_NOT_STARTED)
        os.close(req.go)
    except BaseException as exc:  # noqa: BLE001 - nothing may return into the server
        _say(f"engine: error: serve: cannot set up the command: {exc}\n")
        os._exit(EXIT_SETUP)
    status = EXIT_SETUP
    try:
        status = _finish(_run(program, req.argv))
        _report(reply, status)
    finally:
        os._exit(status)


def _report(reply: Reply, status: int) -> None:
    """Send the client the status message the server sends once this process has exited
    (engine.serve), now, when nothing is left to happen at the exit: no child of ours,
    which the exit hands to the client's child subreaper (a restore's root). Tearing down
    the interpreter's memory (~1 ms) then runs beside the client's next step. The
    connection is taken from the server only now (pidfd_getfd): the command ran with the
    fds a subprocess has. Nothing is sent when the server is gone or will not give it."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return  # a child of ours, running or exited: ours until we exit
    except ChildProcessError:
        pass  # no child at all
    conn = _server_fd(reply)
    if conn < 0:
        return
    mine, kids = (resource.getrusage(who)
                  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    answer = status_message((status & 0xFF) << 8,
                            mine.ru_utime + mine.ru_stime + kids.ru_utime + kids.ru_stime,
                            max(mine.ru_maxrss, kids.ru_maxrss))
    try:
        os.write(conn, json.dumps(answer).encode())
    except OSError:
        pass  # the client is gone
    finally:
        os.close(conn)


def status_message(wait_status: int, cpu_s: float, maxrss_kib: int) -> dict[str, object]:
    """A step's status as the client reads it (engine.serve's protocol): its wait status
    and what it used (CPU seconds, peak RSS in KiB, as wait4 gives them)."""
    return {"status": wait_status, "cpu_s": cpu_s, "maxrss_kib": maxrss_kib}


def _server_fd(reply: Reply) -> int:
    """A copy of the server's fd of the client's connection, or -1."""
    if os.getppid() != reply.server:
        return -1  # the server is gone: its fd numbers are another process's
    try:
        pidfd = ksys.pidfd_open(reply.server)
    except OSError:
        return -1
    try:
        # still our parent: the pidfd is the server's, not a process that took its pid
        return ksys.pidfd_getfd(pidfd, reply.fd) if os.getppid() == reply.server else -1
    except OSError:
        return -1  # not allowed (an LSM), or the server has just died
    finally:
        os.close(pidfd)


def _wait_go(fd: int) -> bool:
    """True once the client said go; False at EOF (it gave up) or after GO_TIMEOUT."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(GO_TIMEOUT * 1000)) and os.read(fd, 1) != b""


def _become(req: Request) -> None:
    """Take the request's fds, namespaces, cwd, umask, environment and signals (go is
    the only other fd left open)."""
    for target, fd in enumerate(req.stdio):
        os.dup2(fd, target)
    _enter_namespaces(req.ns)
    _close_others(req.go)
    os.chdir(req.cwd)
    os.umask(req.umask)
    _set_environ(req.env)
    _reset_signals(req.ignored, req.mask)
    sys.argv = [sys.argv[0], *req.argv]


def _enter_namespaces(ns: tuple[tuple[str, int], ...]) -> None:
    """Join each of the client's namespaces this process is not in already."""
    for name, fd in ns:
        mine, theirs = os.stat(f"/proc/self/ns/{name}"), os.fstat(fd)
        if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
            ksys.setns(fd, 0)


def _set_environ(env: dict[str, str]) -> None:
    """The environment becomes ``env``; only what differs is changed (each change is a
    putenv or unsetenv: clearing and refilling it cost half a millisecond per step)."""
    for name in os.environ.keys() - env.keys():
        del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _close_others(keep: int) -> None:
    """Close every fd but 0-2 and `keep` (go): the server's, the request's copies (two
    close_range calls; listing /proc/self/fd and closing one by one took ~0.1 ms)."""
    os.closerange(3, keep)
    os.closerange(max(3, keep + 1), _FD_END)


def _reset_signals(ignored: frozenset[int], mask: frozenset[int]) -> None:
    """Dispositions and mask as a fresh ``python -S -m engine`` started by the client
    would have them."""
    for signo in VALID_SIGNALS - {signal.SIGKILL, signal.SIGSTOP}:
        keep = signo in ignored and signo not in PYTHON_IGNORES
        wanted = signal.SIG_IGN if keep else signal.SIG_DFL
        # Python knows every disposition (it read them at start-up and made every change
        # since): only those that differ cost a syscall
        if signal.getsignal(signo) == wanted:
            continue
        try:
            signal.signal(signo, wanted)
        except (OSError, ValueError):
            pass  # reserved by the C library
    for signo in PYTHON_IGNORES:
        signal.signal(signo, signal.SIG_IGN)
    if signal.getsignal(signal.SIGINT) == signal.SIG_DFL:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _run(program: Callable[[list[str]], int], argv: list[str]) -> int:
    """``program(argv)``'s status, with what escapes it handled as the interpreter does."""
    try:
        return program(argv)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException as exc:  # noqa: BLE001 - the interpreter's top level
        sys.excepthook(type(exc), exc, exc.__traceback__)
        return 130 if isinstance(exc, KeyboardInterrupt) else 1


def _finish(status: int) -> int:
    """The interpreter's exit: threads joined (and their executors shut down), atexit
    handlers, garbage collected, stdio flushed; 120 when a flush fails, as CPython."""
    # what Py_FinalizeEx calls first (not in the type stubs): joins non-daemon threads
    # after the executors' exit hooks told their workers to stop
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = 120
    return status


def _say(text: str) -> None:
    """A line on fd 2 (the request's stderr once installed), whatever happens."""
    try:
        os.write(2, text.encode(errors="replace"))
    except OSError:
        pass
