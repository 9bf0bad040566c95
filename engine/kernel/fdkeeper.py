"""Keep file descriptors open between engine runs, for as long as a watched task lives.

Dirty-page tracking with async userfaultfd write-protect lasts only while a userfaultfd
is open, but each ``python -m engine pre-dump/dump`` is a separate process. A keeper is a
tiny separate process (``python -m engine.kernel.fdkeeper``) that holds named fds and
hands out duplicates over a unix socket (SCM_RIGHTS). It exits by itself when the watched
task exits (pidfd), when told to stop, or when its socket file is removed; it holds no
other fd (not our stdio, which a caller may be reading to EOF).

    start(sock, watch_pid, {"uffd": fd})      # from dump --track-mem
    fd = get(sock, "uffd")                    # from the next pre-dump / dump
    put(sock, "uffd", fd)                     # replace (e.g. after re-registering)
    stop(sock)

Protocol: one request per connection, a line ``GET name`` / ``PUT name`` (one fd
attached) / ``STOP``; the answer is ``OK`` (with the fd for GET) or ``ERR message``.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import stat
import subprocess
import sys

from engine.kernel.sys import pidfd_open

_MAX_MSG = 4096
_POLL_SOCKET_FILE = 1.0  # seconds between checks that our socket file still exists


class KeeperError(OSError):
    """The keeper refused a request or could not be reached."""


def start(sock_path: str, watch_pid: int, fds: dict[str, int], timeout: float = 10.0) -> int:
    """Start a keeper listening on ``sock_path`` (created 0600) holding ``fds`` by name.

    Returns the keeper's pid once it accepts connections. The keeper is not our child
    for long: it runs in its own session and is re-parented when we exit. A socket
    already at ``sock_path`` is removed first (a keeper still serving it then exits).
    """
    try:
        if stat.S_ISSOCK(os.lstat(sock_path).st_mode):
            os.unlink(sock_path)
    except FileNotFoundError:
        pass
    r, w = os.pipe()
    args = [sys.executable, "-m", "engine.kernel.fdkeeper", "--socket", sock_path,
            "--watch", str(watch_pid), "--ready-fd", str(w)]
    for name, fd in fds.items():
        args += ["--fd", f"{name}={fd}"]
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.Popen(args, pass_fds=[w, *fds.values()], start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
    finally:
        os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], timeout)
        answer = os.read(r, 256) if ready else b""
    finally:
        os.close(r)
    if answer != b"ready":
        proc.kill()
        proc.wait(timeout)
        why = answer.decode(errors="replace") or f"no answer within {timeout:.0f}s"
        raise KeeperError(f"fd keeper for {watch_pid} did not start: {why}")
    return proc.pid


def _request(sock_path: str, line: str, fd: int | None, timeout: float
             ) -> tuple[str, list[int]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(sock_path)
            data = (line + "\n").encode()
            if fd is None:
                s.sendall(data)
            else:
                socket.send_fds(s, [data], [fd])
            msg, fds, _, _ = socket.recv_fds(s, _MAX_MSG, 4)
        except OSError as exc:
            raise KeeperError(exc.errno, f"fd keeper {sock_path}: {exc.strerror or exc}") \
                from None
    answer = msg.decode(errors="replace").strip()
    if not answer.startswith("OK"):
        for extra in fds:
            os.close(extra)
        raise KeeperError(f"fd keeper {sock_path}: {answer or 'no answer'}")
    return answer, fds


def get(sock_path: str, name: str, timeout: float = 10.0) -> int:
    """A duplicate of the fd kept as ``name`` (ours to close)."""
    _, fds = _request(sock_path, f"GET {name}", None, timeout)
    if len(fds) != 1:
        for extra in fds:
            os.close(extra)
        raise KeeperError(f"fd keeper {sock_path}: GET {name} returned {len(fds)} fds")
    return fds[0]


def put(sock_path: str, name: str, fd: int, timeout: float = 10.0) -> None:
    """Keep (a duplicate of) ``fd`` as ``name``, replacing any previous one."""
    _request(sock_path, f"PUT {name}", fd, timeout)


def stop(sock_path: str, timeout: float = 10.0) -> None:
    """Tell the keeper to close everything and exit."""
    _request(sock_path, "STOP", None, timeout)


# ---------------------------------------------------------------------------------------
# The keeper process itself
# ---------------------------------------------------------------------------------------

def _serve(sock_path: str, watch_pid: int, kept: dict[str, int], ready_fd: int) -> None:
    pidfd = pidfd_open(watch_pid)
    old_umask = os.umask(0o077)  # no window in which others could connect
    try:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(sock_path)
    finally:
        os.umask(old_umask)
    os.chmod(sock_path, 0o600)
    listener.listen(8)
    ident = os.stat(sock_path).st_ino
    os.write(ready_fd, b"ready")
    os.close(ready_fd)
    try:
        while True:
            ready, _, _ = select.select([listener, pidfd], [], [], _POLL_SOCKET_FILE)
            if pidfd in ready:
                return  # the watched task exited
            if not _still_ours(sock_path, ident):
                return  # someone removed (or replaced) our socket: nobody can reach us
            if listener in ready and _handle(listener, kept):
                return
    finally:
        listener.close()
        if _still_ours(sock_path, ident):
            os.unlink(sock_path)


def _still_ours(path: str, ident: int) -> bool:
    try:
        return os.stat(path).st_ino == ident
    except FileNotFoundError:
        return False


def _handle(listener: socket.socket, kept: dict[str, int]) -> bool:
    """Serve one connection; True when asked to stop."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(5.0)
        try:
            msg, fds, _, _ = socket.recv_fds(conn, _MAX_MSG, 1)
        except OSError:
            return False
        words = msg.decode(errors="replace").split()
        cmd, name = (words + ["", ""])[:2]
        try:
            if cmd == "GET" and name in kept:
                socket.send_fds(conn, [b"OK\n"], [kept[name]])
            elif cmd == "PUT" and name and len(fds) == 1:
                if name in kept:
                    os.close(kept[name])
                kept[name] = fds.pop()
                conn.sendall(b"OK\n")
            elif cmd == "STOP":
                conn.sendall(b"OK\n")
                return True
            else:
                conn.sendall(f"ERR bad request {' '.join(words)!r}\n".encode())
        except OSError:
            pass  # the client went away; keep serving others
        finally:
            for fd in fds:
                os.close(fd)
    return False


def main(argv: list[str] | None = None) -> int:
    """Entry point of the keeper process (``python -m engine.kernel.fdkeeper``)."""
    p = argparse.ArgumentParser(prog="python -m engine.kernel.fdkeeper")
    p.add_argument("--socket", required=True)
    p.add_argument("--watch", type=int, required=True)
    p.add_argument("--ready-fd", type=int, required=True)
    p.add_argument("--fd", action="append", default=[], metavar="NAME=FD")
    args = p.parse_args(argv)
    kept = {}
    for item in args.fd:
        name, _, num = item.partition("=")
        kept[name] = int(num)
    try:
        _serve(args.socket, args.watch, kept, args.ready_fd)
    except OSError as exc:
        try:
            os.write(args.ready_fd, f"error: {exc}".encode())
        except OSError:
            pass  # already reported ready; nobody to tell
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
