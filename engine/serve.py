"""``python -m engine serve --socket PATH``: the engine server (as CRIU's service mode).

A harness that runs many engine steps pays interpreter start-up and the engine's imports
(150-200 ms) on every ``python -m engine ARGS``.  The server pays them once: it imports the
step modules, listens on a unix socket, and for each request forks a child that runs
exactly what ``python -m engine ARGS`` would (engine.serve_child).  The server itself never
runs engine code, it only forks, so no state passes from one request to the next.

Protocol (SOCK_SEQPACKET, one connection per request)::

    client -> server  {"argv": [...], "env": {...}, "cwd": str, "umask": int,
                       "ignored": [signo...], "mask": [signo...], "ns": [name...]}
                      with SCM_RIGHTS fds: stdin, stdout, stderr, go, then one per ns name
    server -> client  {"pid": int} with the child's pidfd,
                      then {"status": int, "cpu_s": float, "maxrss_kib": int} (its
                      wait status and rusage) once it has exited,
                      or {"error": str} when the request could not be started
    child -> client   the same status message just before it exits, when its command
                      is done and no child of its own is left (serve_child._report);
                      the client takes the first status that comes

``go`` is the read end of a pipe the client holds: the child runs nothing before it has
read one byte there, and exits at EOF, so a client that never got the pid (a lost reply,
a deadline) never has a step run behind its back.

The server ends when its parent (the client that started it) ends, by a pidfd on it (it
then removes its socket, and the socket's directory if that is left empty), and on
SIGTERM, SIGINT or SIGHUP.  Children outlive it: they are real processes of their own
(own session), re-parented to the nearest child subreaper when the server is gone.
"""

from __future__ import annotations

import array
import dataclasses
import gc
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from engine import serve_child
from engine.errors import TERMINATION_SIGNALS, EngineError
from engine.kernel import sys as ksys
from engine.kernel import uapi
from engine.proc import pagemap as procpagemap

Program = Callable[[list[str]], int]

#: the modules behind every command (engine.__main__.HANDLERS): imported once, here
STEP_MODULES = ("engine.dump.cli", "engine.restore.cli", "engine.lazy.daemon",
                "engine.features", "engine.images.show")
#: the largest request (the environment dominates) and the most fds one carries
MAX_REQUEST = 1 << 20
MAX_FDS = 16
#: what precedes a request handed to the spare: the server's fd of the client's connection
_REPLY_FD = struct.Struct("<i")
BACKLOG = 64


@dataclass
class _Running:
    """A forked request: its pidfd, and the connection its status goes to."""

    pid: int
    pidfd: int
    conn: socket.socket


@dataclass
class _Spare:
    """A child forked ahead of the next request, which it waits for on its end of a
    socket pair: the fork (~1 ms) is then off the request's path."""

    pid: int
    pidfd: int
    sock: socket.socket  # the server's end


@dataclass
class _State:
    """What the server holds; the child forgets all of it (serve_child.run)."""

    listener: socket.socket
    parent: int  # pidfd of the client process
    waiting: dict[int, socket.socket] = field(default_factory=dict)  # fd -> conn
    running: dict[int, _Running] = field(default_factory=dict)  # pidfd -> request
    spare: _Spare | None = None

    def forget(self) -> None:
        """In a forked child: drop the server's sockets without closing them (the child
        closes every fd it did not get from its request; no finalizer may close a
        number the engine has reused by then)."""
        spare = [self.spare.sock] if self.spare is not None else []
        for sock in [self.listener, *self.waiting.values(),
                     *(r.conn for r in self.running.values()), *spare]:
            sock.detach()


def serve(path: str, program: Program) -> int:
    """Listen on ``path`` and run each request's command in a forked child; returns 0
    once the client process is gone."""
    for s in TERMINATION_SIGNALS:  # the server holds nothing to clean up: just end
        signal.signal(s, signal.SIG_DFL)
    parent = _watch_parent()
    if parent is None:
        return 0
    for name in STEP_MODULES:
        importlib.import_module(name)
    _warm()
    state = _State(_listen(path), parent)
    # what is imported now stays out of every collection: cheaper children, less copying
    gc.freeze()
    try:
        _make_spare(state, program)
        _loop(state, program)
    finally:
        _remove(path)
        if state.spare is not None:  # (killed with us otherwise: PR_SET_PDEATHSIG)
            os.kill(state.spare.pid, signal.SIGKILL)
            _drop_spare(state)
    return 0


def _warm() -> None:
    """Work done once here rather than in every forked step: how each image record class
    is written and read (engine.images.codec, ~10 ms for all of them), the page checksum
    routine mapped (engine.kernel.pagecrc), where the vdso is (a restore's layout:
    ~0.8 ms of parsing /proc/self/maps) and where the code injections use sits in libc
    (engine.kernel.inject)."""
    from engine.images import codec, records
    from engine.kernel import inject, pagecrc
    from engine.restore import layout

    codec.prepare(c for c in vars(records).values() if isinstance(c, type)
                  and dataclasses.is_dataclass(c) and c.__module__ == records.__name__)
    pagecrc.prepare()
    layout.engine_specials()
    inject.learn_own_code()


def _remove(path: str) -> None:
    """Remove the socket, and its directory when that leaves it empty (the private
    directory the client made for it): a client that died leaves nothing behind."""
    os.unlink(path)
    try:
        os.rmdir(os.path.dirname(os.path.abspath(path)))
    except OSError:
        pass  # not empty, or not ours to remove


def _watch_parent() -> int | None:
    """A pidfd on the client that started us; None when it is already gone."""
    ppid = os.getppid()
    try:
        fd = ksys.pidfd_open(ppid)
    except OSError:
        return None
    if os.getppid() != ppid:  # re-parented in between: the client ended
        os.close(fd)
        return None
    return fd


def _listen(path: str) -> socket.socket:
    """The listening socket at ``path``, mode 0600 from its creation on."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        raise EngineError("serve", f"cannot listen on {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    sock.listen(BACKLOG)
    return sock


def _loop(state: _State, program: Program) -> None:
    """Accept, start and reap until the client process ends."""
    while True:
        poller = select.poll()
        spare = [state.spare.pidfd] if state.spare is not None else []
        for fd in (state.listener.fileno(), state.parent, *state.waiting, *state.running,
                   *spare):
            poller.register(fd, select.POLLIN)
        for fd, _events in poller.poll():
            if fd == state.parent:
                return
            if state.spare is not None and fd == state.spare.pidfd:
                _drop_spare(state)  # it died waiting (killed): make another later
            elif fd == state.listener.fileno():
                conn, _ = state.listener.accept()
                state.waiting[conn.fileno()] = conn
            elif fd in state.waiting:
                _start(state, state.waiting.pop(fd), program)
            elif fd in state.running:
                _reap(state.running.pop(fd))


def _start(state: _State, conn: socket.socket, program: Program) -> None:
    """Read one request from ``conn`` and fork its child (or answer why not)."""
    try:
        data, anc, flags, _ = conn.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(MAX_FDS * 4),
                                           socket.MSG_CMSG_CLOEXEC)
    except OSError:
        conn.close()
        return
    fds = _fds(anc)
    try:
        if not data:
            conn.close()  # the client went away before asking
            return
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise ValueError(f"request larger than {MAX_REQUEST} bytes or {MAX_FDS} fds")
        request = serve_child.Request.parse(json.loads(data), fds)
        reply = serve_child.Reply(os.getpid(), conn.fileno())
        pid, pidfd = _to_spare(state, data, fds, reply.fd)
        if not pid:
            pid = _fork()
            if pid == 0:
                serve_child.run(request, program, state.forget, reply)
            pidfd = _pidfd(pid)
    except (ValueError, TypeError, OSError) as exc:
        _send(conn, {"error": f"{type(exc).__name__}: {exc}"})
        conn.close()
        return
    finally:
        for fd in fds:
            os.close(fd)
    _send(conn, {"pid": pid}, [pidfd])
    state.running[pidfd] = _Running(pid, pidfd, conn)
    _make_spare(state, program)  # for the next request, while this one runs


def _fork() -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    return os.fork()


def _make_spare(state: _State, program: Program) -> None:
    """Fork the child the next request will be handed to (no spare when that fails: the
    request forks its own)."""
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError:
        return
    server = os.getpid()
    try:
        pid = _fork()
    except OSError:
        ours.close()
        theirs.close()
        return
    if pid == 0:
        _spare_child(state, ours, theirs, program, server)
    theirs.close()
    try:
        state.spare = _Spare(pid, _pidfd(pid), ours)
    except OSError:
        ours.close()


def _spare_child(state: _State, ours: socket.socket, theirs: socket.socket,
                 program: Program, server: int) -> NoReturn:
    """In the spare: wait for a request (the server's end closing: no request will come)
    and run it as a child forked for it would. Never returns."""
    try:
        ours.close()
        # It never accepts: the listening socket is the server's alone, so that a dead
        # server refuses connections at once, not only once its spare is gone too (a
        # client that connected in between was reset instead).
        os.close(state.listener.detach())
        # Dies with the server until it gets a request (a request's process outlives it).
        ksys.prctl(uapi.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != server:
            os._exit(serve_child.EXIT_NOT_STARTED)
        _own_pages(theirs)
        data, anc, _flags, _ = theirs.recvmsg(MAX_REQUEST + _REPLY_FD.size,
                                              socket.CMSG_SPACE(MAX_FDS * 4),
                                              socket.MSG_CMSG_CLOEXEC)
        fds = _fds(anc)
        if len(data) <= _REPLY_FD.size:
            os._exit(serve_child.EXIT_NOT_STARTED)
        ksys.prctl(uapi.PR_SET_PDEATHSIG, 0)
        (reply_fd,) = _REPLY_FD.unpack_from(data)
        request = serve_child.Request.parse(json.loads(data[_REPLY_FD.size:]), fds)
        theirs.detach()  # closed with every other fd by serve_child
    except BaseException:  # noqa: BLE001 - nothing may return into the server
        os._exit(serve_child.EXIT_SETUP)
    serve_child.run(request, program, state.forget, serve_child.Reply(server, reply_fd))


#: bytes made the spare's own between two looks for a request
_OWN_SLICE = 2 << 20


def _own_pages(sock: socket.socket) -> None:
    """Copy now, while no request waits, the server's pages the spare shares
    copy-on-write: a request's first write to each (a Python object's reference count)
    would copy it then, a fault each (a 50-task dump wrote ~20 ms' worth). Only the
    pages present in private writable mappings (MADV_POPULATE_WRITE), a slice at a
    time, stopping as soon as a request comes; nothing without PAGEMAP_SCAN (6.7)."""
    with open("/proc/self/maps", "rb") as f:
        writable = [tuple(int(x, 16) for x in line.split(maxsplit=1)[0].split(b"-"))
                    for line in f.read().splitlines() if line.split()[1] == b"rw-p"]
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    try:
        fd = procpagemap.open_pagemap(os.getpid())
    except OSError:
        return
    try:
        for lo, hi in writable:
            try:
                present = ksys.pagemap_scan(fd, lo, hi, category_mask=uapi.PAGE_IS_PRESENT)
            except OSError:
                return  # no PAGEMAP_SCAN here
            for start, end, _ in present:
                for at in range(start, end, _OWN_SLICE):
                    if poller.poll(0):
                        return
                    try:
                        ksys.syscall(uapi.SYS_madvise, at, min(end, at + _OWN_SLICE) - at,
                                     uapi.MADV_POPULATE_WRITE)
                    except OSError:
                        break  # a mapping that refuses (a guard page): on to the next
    finally:
        os.close(fd)


def _to_spare(state: _State, data: bytes, fds: list[int], reply_fd: int
              ) -> tuple[int, int]:
    """Hand the request to the spare, after the number of our fd of the client's
    connection: its (pid, pidfd), or (0, -1) when there is none or it cannot take it
    (then killed)."""
    spare, state.spare = state.spare, None
    if spare is None:
        return 0, -1
    try:
        spare.sock.sendmsg([_REPLY_FD.pack(reply_fd), data],
                           [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    except OSError:
        os.kill(spare.pid, signal.SIGKILL)
        os.waitpid(spare.pid, 0)
        os.close(spare.pidfd)
        return 0, -1
    finally:
        spare.sock.close()
    return spare.pid, spare.pidfd


def _drop_spare(state: _State) -> None:
    """The spare exited before a request came: reap it."""
    spare, state.spare = state.spare, None
    if spare is not None:
        os.waitpid(spare.pid, 0)
        os.close(spare.pidfd)
        spare.sock.close()


def _pidfd(pid: int) -> int:
    """A pidfd on the child just forked (it cannot be reaped before: only we wait for
    it); without one the child is killed, and never runs (it waits for go)."""
    try:
        return ksys.pidfd_open(pid)
    except OSError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise


def _reap(req: _Running) -> None:
    """The child has exited: collect it and tell the client its wait status and what it
    used (CPU seconds, peak RSS in KiB: a benchmark's figures, as wait4 gives them)."""
    _, status, ru = os.wait4(req.pid, 0)
    os.close(req.pidfd)
    _send(req.conn, serve_child.status_message(status, ru.ru_utime + ru.ru_stime,
                                               ru.ru_maxrss))
    req.conn.close()


def _send(conn: socket.socket, message: dict[str, object], fds: list[int] | None = None
          ) -> None:
    """One reply; a client that has gone away no longer needs it."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    try:
        conn.sendmsg([json.dumps(message).encode()], anc)
    except OSError:
        pass


def _fds(anc: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds of SCM_RIGHTS control messages, in order."""
    out: list[int] = []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
            out.extend(fds)
    return out
