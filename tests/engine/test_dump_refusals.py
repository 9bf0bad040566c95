"""Fds the restore could not build are refused by the dump, while the task still runs:
a refusal at restore time would come after the dump had killed the tree."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine import cr_support as cr
from tests.engine.dump_support import run_engine

# Each holder opens an fd of a kind the engine does not restore, says "ready", waits;
# the dump's one line must contain the expected words.
# A file d/f mapped MAP_SHARED with no fd left (Python's mmap module would keep one)
MAP_ONLY = ("import ctypes, tempfile; d = tempfile.mkdtemp(); "
            "f = os.open(d + '/f', os.O_CREAT | os.O_RDWR); os.write(f, bytes(4096)); "
            "libc = ctypes.CDLL(None); libc.mmap.restype = ctypes.c_void_p; "
            "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, "
            "ctypes.c_int, ctypes.c_int, ctypes.c_long]; "
            "assert libc.mmap(None, 4096, 3, 1, f, 0) not in (None, 2**64 - 1); os.close(f);")
HOLDERS = {
    "raw socket with a packet queued": (
        ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 253); "
         "s.sendto(b'queued', ('127.0.0.1', 0)); time.sleep(0.2)"),
        "cannot dump a raw socket with datagrams queued"),
    # the kernel's answer to RTM_GETLINK for lo (ifindex 1), left unread
    "netlink socket with data queued": (
        ("import socket, struct; s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); "
         "s.send(struct.pack('=IHHIIBxHiII', 32, 18, 1, 1, 0, 0, 0, 1, 0, 0)); "
         "time.sleep(0.2)"), "bytes queued: messages from the kernel cannot be queued again"),
    # an RTM_GETLINK dump into a small buffer: the kernel goes on when it is read
    "netlink dump in progress": (
        ("import socket, struct; s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); "
         "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024); "
         "s.send(struct.pack('=IHHIIBxHiII', 32, 18, 0x301, 1, 0, 0, 0, 0, 0, 0)); "
         "time.sleep(0.2)"), "with a dump in progress"),
    "packet socket in a fanout group": (
        ("import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, "
         "socket.htons(0x88b5)); s.bind(('lo', 0x88b5)); s.setsockopt(263, 18, 77)"),
        "with a fanout group: not supported"),
    "packet socket with a membership": (
        ("import socket, struct; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, "
         "socket.htons(0x88b5)); s.setsockopt(263, 1, struct.pack('=iHH8s', "
         "socket.if_nametoindex('lo'), 1, 0, b''))"),
        "with memberships (PACKET_ADD_MEMBERSHIP): not supported"),
    "pidfd outside the tree": ("s = os.pidfd_open(1)",
                               "cannot dump a pidfd of pid 1, which is not a process of"),
    "pidfd shared with a child": (
        ("import ctypes; s = os.pidfd_open(os.getpid())\n"
         "if os.fork() == 0:\n    ctypes.CDLL(None).prctl(1, 9); time.sleep(60); os._exit(0)"),
        "cannot dump a pidfd shared with task "),
    "inotify with queued events": (
        # its own cwd (tmp_path): '/' gets other processes' IN_OPEN events too
        ("import ctypes; c = ctypes.CDLL(None); s = c.inotify_init1(0); "
         "c.inotify_add_watch(s, b'.', 0x20); "
         "os.listdir('.')"),
        # (the refusal is what is tested, not how many events queued up)
        "bytes of queued events: no call puts events back into a new queue"),
    "inotify watch of an unlinked file": (
        ("import ctypes, tempfile; c = ctypes.CDLL(None); s = c.inotify_init1(0); "
         "f = tempfile.NamedTemporaryFile(); c.inotify_add_watch(s, f.name.encode(), 2); "
         "os.unlink(f.name)"),
        "no path of the task's root leads to it"),
    "data sent on a unix connection not accepted": (
        ("import socket; s = socket.socket(socket.AF_UNIX); "
         "s.bind(b'\\0zdtm-refusal-%d' % os.getpid()); s.listen(); "
         "c = socket.socket(socket.AF_UNIX); c.connect(s.getsockname()); c.send(b'x')"),
        "whose sent data waits in a connection not yet accepted"),
    "unix socket file removed": (
        ("import socket, tempfile; d = tempfile.mkdtemp(); s = socket.socket(socket.AF_UNIX); "
         "s.bind(d + '/s'); os.unlink(d + '/s'); os.rmdir(d)"),
        "whose socket file was removed or replaced"),
    "removed device node": (
        ("import stat, tempfile; d = tempfile.mkdtemp(); "
         "os.mknod(d + '/n', 0o600 | stat.S_IFCHR, os.makedev(1, 3)); "
         "s = os.open(d + '/n', os.O_RDONLY); os.unlink(d + '/n'); os.rmdir(d)"),
        "cannot dump the removed device node"),
    "unlinked file whose directory is gone": (
        ("import tempfile; d = tempfile.mkdtemp(); "
         "s = os.open(d + '/f', os.O_CREAT | os.O_RDWR); os.unlink(d + '/f'); os.rmdir(d)"),
        "is gone too, so restore could not make it again"),
    "cwd in a directory whose parent is gone": (
        ("import tempfile; d = tempfile.mkdtemp(); os.mkdir(d + '/sub'); "
         "os.chdir(d + '/sub'); os.rmdir(d + '/sub'); os.rmdir(d)"),
        "cwd: cannot dump the removed dir"),
    "unlinked file with another link": (
        ("import tempfile; d = tempfile.mkdtemp(); s = os.open(d + '/f', os.O_CREAT | os.O_RDWR); "
         "os.link(d + '/f', d + '/g'); os.unlink(d + '/f')"),
        "its name was removed and it has 1 other link(s), which restore could not find"),
    "mapping of an unlinked file with another link": (
        (f"{MAP_ONLY} os.link(d + '/f', d + '/g'); os.unlink(d + '/f')"),
        "the file still has 1 link(s) (its name was removed, or it is named so)"),
    "mapping of an unlinked file whose directory is gone": (
        (f"{MAP_ONLY} os.unlink(d + '/f'); os.rmdir(d)"),
        "cannot dump the removed reg"),
    "/dev/tty of a terminal no longer controlling": (
        ("import fcntl, pty, signal, termios; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
         "os.setsid(); m, sl = pty.openpty(); fcntl.ioctl(sl, termios.TIOCSCTTY, 0); "
         "s = os.open('/dev/tty', os.O_RDWR); fcntl.ioctl(s, termios.TIOCNOTTY)"),
        "no session leader of the dumped tree has it as its controlling terminal"),
    "/dev/tty of a child's session": (
        ("import ctypes, fcntl, pty, socket, termios; a, b = socket.socketpair()\n"
         "if os.fork() == 0:\n"
         "    ctypes.CDLL(None).prctl(1, 9)\n"
         "    os.setsid(); m, sl = pty.openpty(); fcntl.ioctl(sl, termios.TIOCSCTTY, 0)\n"
         "    socket.send_fds(b, [b'x'], [os.open('/dev/tty', os.O_RDWR)])\n"
         "    time.sleep(60); os._exit(0)\n"
         "s = socket.recv_fds(a, 1, 1)[1][0]"),
        "only its session leader"),
    "file with a path in flight": (("import socket; a, b = socket.socketpair(); "
                                   "f = os.open('/dev/null', 0); "
                                   "socket.send_fds(a, [b'x'], [f]); os.close(f)"),
                                  "cannot dump a chr file in flight in a unix socket"),
    "socket in flight in itself": (("import socket; a, b = socket.socketpair(); "
                                   "socket.send_fds(a, [b'x'], [b.fileno()])"),
                                  "cannot dump a cycle of sockets in flight"),
    "two accepted from a closed listener": (
        ("import socket; s = socket.socket(socket.AF_UNIX); "
         "s.bind(b'\\0zdtm-closed-%d' % os.getpid()); s.listen(); "
         "c1 = socket.socket(socket.AF_UNIX); c1.connect(s.getsockname()); "
         "c2 = socket.socket(socket.AF_UNIX); c2.connect(s.getsockname()); "
         "a1, a2 = s.accept()[0], s.accept()[0]; s.close()"),
        "cannot dump two sockets bound to"),
    "datagram from a named sender outside": (
        ("import socket; a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
         "a.bind(b'\\0zdtm-dg-%d' % os.getpid()); "
         "o = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
         "o.bind(b'\\0zdtm-dgo-%d' % os.getpid()); o.sendto(b'x', a.getsockname()); "
         "o.close()"),
        "is queued"),
    "listener with a connection waiting, data sent": (
        ("import socket; s = socket.create_server(('127.0.0.1', 0)); "
         "c = socket.create_connection(s.getsockname()); c.send(b'x'); time.sleep(0.2)"),
        ("cannot dump a TCP listener with 1 connections waiting to be accepted: 1 from "
         "clients in the dumped tree, 0 with nothing sent")),
    "half-closed TCP, peer gone": (
        ("import socket; s = socket.create_server(('127.0.0.1', 0)); "
         "c = socket.create_connection(s.getsockname()); a, _ = s.accept(); "
         "c.close(); time.sleep(0.2)"),
        "cannot dump a TCP connection in state CLOSE_WAIT whose peer is not in the dumped"),
    "peer outside the tree": (("import socket; a = socket.socket(socket.AF_UNIX, "
                              "socket.SOCK_DGRAM); a.connect(b'\\0' + sys.argv[1].encode())"),
                              "is outside the dumped tree"),
}


@pytest.mark.parametrize("what", sorted(HOLDERS))
def test_unsupported_fd_is_refused_at_dump(what: str, tmp_path: Path) -> None:
    code, expected = HOLDERS[what]
    code = f"import os, sys, time\n{code}\nprint('ready', flush=True)\ntime.sleep(60)"
    outside = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"zdtm-outside-{os.getpid()}-{tmp_path.name}"
    outside.bind(b"\0" + name.encode())
    # The holders' temp dirs go under tmp_path (some leave a file behind: another link).
    env = dict(os.environ, TMPDIR=str(tmp_path))
    holder = subprocess.Popen([sys.executable, "-S", "-c", code, name], stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, cwd=tmp_path, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        fds = sorted(os.listdir(f"/proc/{holder.pid}/fd"))
        images = tmp_path / "img"
        res = run_engine("dump", "-t", str(holder.pid), "-D", str(images))
        assert res.returncode == 1, res.stderr
        line = res.stderr.strip()
        assert line.startswith("engine: error: files: ") and "\n" not in line, line
        assert expected in line, line
        assert not images.exists()
        status = Path(f"/proc/{holder.pid}/status").read_text()
        assert "TracerPid:\t0\n" in status and "State:\tS" in status
        assert sorted(os.listdir(f"/proc/{holder.pid}/fd")) == fds
    finally:
        holder.kill()
        holder.wait(timeout=10)
        outside.close()


TCP_HOLDER = """
import socket, sys
srv = socket.create_server(("127.0.0.1", 0))
cli = socket.create_connection(srv.getsockname())
acc, _ = srv.accept()
cli.sendall(b"queued")
print("ready", flush=True)
sys.stdin.readline()
acc.sendall(b"pong")
ok = acc.recv(6) == b"queued" and cli.recv(4) == b"pong"
print("ok" if ok else "broken", flush=True)
"""


def test_failed_dump_leaves_tcp_connections_working(tmp_path: Path) -> None:
    """A dump that fails after putting connections in TCP repair mode takes them out of
    it again: the task goes on using them (the faults after the files step)."""
    holder = subprocess.Popen([sys.executable, "-S", "-c", TCP_HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == "ready\n"
        res = run_engine("dump", "-t", str(holder.pid), "-D", str(tmp_path / "img"),
                         env={"ENGINE_FAULT": "write"})
        assert res.returncode == 1 and "fault injected" in res.stderr, res.stderr
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "ok\n"
    finally:
        holder.kill()
        holder.wait(timeout=10)


TIMER_SETUP = """
import ctypes, signal, time
libc = ctypes.CDLL(None, use_errno=True)
class SigEvent(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint64), ("signo", ctypes.c_int), ("notify", ctypes.c_int),
                ("tid", ctypes.c_int), ("pad", ctypes.c_byte * 44)]
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
def timer(clock, first_ns, interval_ns):
    t = ctypes.c_int()
    assert libc.syscall(222, clock, ctypes.byref(SigEvent(7, 10, 0, 0)), ctypes.byref(t)) == 0
    spec = (ctypes.c_int64 * 4)(*divmod(interval_ns, 10**9), *divmod(first_ns, 10**9))
    assert libc.syscall(223, t.value, 0, spec, None) == 0
    return t.value
"""
# Each holder makes a POSIX timer the restore could not give back as it is.
TIMER_HOLDERS = {
    # the signal of each expiry stays blocked: the last one taken counted the rest
    "overrun": (("t = timer(1, 10**6, 10**6); time.sleep(0.05); "
                 "signal.sigwaitinfo([signal.SIGUSR1])"),
                "POSIX timer 0: the overrun count "),
    "periodic signal pending": ("t = timer(1, 10**6, 3600 * 10**9); time.sleep(0.05)",
                                "POSIX timer 0: its periodic signal 10 is pending"),
    # /proc shows CLOCK_THREAD_CPUTIME_ID as the CPU clock of "thread 0", -2
    "thread CPU clock": ("t = timer(3, 0, 0)", "POSIX timer 0: clock -2 cannot be restored"),
}


@pytest.mark.parametrize("what", sorted(TIMER_HOLDERS))
def test_unrestorable_posix_timer_is_refused_at_dump(what: str, tmp_path: Path) -> None:
    """Refused in the injection step, with the reason; the holder runs on untouched."""
    code, expected = TIMER_HOLDERS[what]
    code = f"{TIMER_SETUP}\n{code}\nprint('ready', flush=True)\ntime.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-S", "-c", code], stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        timers = Path(f"/proc/{holder.pid}/timers").read_text()
        images = tmp_path / "img"
        res = run_engine("dump", "-t", str(holder.pid), "-D", str(images))
        assert res.returncode == 1, res.stderr
        line = res.stderr.strip()
        assert line.startswith(f"engine: error: sigactions: task {holder.pid}: "), line
        assert expected in line and "\n" not in line, line
        assert not images.exists()
        assert "TracerPid:\t0\n" in Path(f"/proc/{holder.pid}/status").read_text()
        assert Path(f"/proc/{holder.pid}/timers").read_text() == timers
    finally:
        holder.kill()
        holder.wait(timeout=10)


PTY_HOLDER = """
import os, sys, termios, time
m, s = os.openpty()
t = termios.tcgetattr(s)
os.write(s, b"out\\n")
time.sleep(0.1)
os.write(m, b"line\\npart")
time.sleep(0.1)
print("ready", flush=True)
sys.stdin.readline()
os.set_blocking(m, False)
os.set_blocking(s, False)
a = termios.tcgetattr(s)
t2 = termios.tcgetattr(s)
t2[3] &= ~termios.ICANON
termios.tcsetattr(s, termios.TCSANOW, t2)
inq = os.read(s, 100)
outq = os.read(m, 100)
print("ok" if (a, inq, outq) == (t, b"line\\npart", b"out\\r\\nline\\r\\npart") else
      f"broken {a == t} {inq!r} {outq!r}", flush=True)
"""


def test_failed_dump_leaves_pty_queues(tmp_path: Path) -> None:
    """A dump that fails after it took a pty's queues out (to save them) has written
    them back: the task reads its input and output queues, and its termios, as before."""
    holder = subprocess.Popen([sys.executable, "-S", "-c", PTY_HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == "ready\n"
        res = run_engine("dump", "-t", str(holder.pid), "-D", str(tmp_path / "img"),
                         env={"ENGINE_FAULT": "write"})
        assert res.returncode == 1 and "fault injected" in res.stderr, res.stderr
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "ok\n"
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_more_fds_than_the_restore_could_hold_is_refused_at_dump(tmp_path: Path) -> None:
    """A tree whose restore would hold more fds at once than RLIMIT_NOFILE lets the
    engine have (its hard limit cannot be raised without CAP_SYS_RESOURCE) is refused by
    the dump, naming the count, while it still runs: never at restore after a kill."""
    t = cr.ZdtmTest.start("pipe_data", tmp_path / "work")
    try:
        limit = 40  # enough for the engine to run, below any restore (fdbudget.ENGINE_FDS)

        def low_nofile() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        r = subprocess.run([sys.executable, "-m", "engine", "dump", "-t", str(t.pid), "-D",
                            str(tmp_path / "img")], cwd=cr.ROOT, capture_output=True,
                           text=True, timeout=cr.ENGINE_TIMEOUT, check=False,
                           preexec_fn=low_nofile)
        assert r.returncode == 1, r.stderr
        assert "open files with fds up to" in r.stderr and f"({limit}, {limit})" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert cr.state(t.pid) in "RS"
        assert "PASS" in t.stop()
    finally:
        t.cleanup()


SHARED_C = Path(__file__).parent / "data" / "shared_refusals.c"
# mode of shared_refusals.c -> "phase: the refusal", with the pids it prints as a, b
_VM = "task {a} shares the address space (CLONE_VM) of its parent"
SHARED = {
    "files-siblings": ("seize: tasks {a}, {b} share one fd table (CLONE_FILES) that none of "
                       "them got from its parent: restore cannot share it again"),
    "vm-children": f"seize: {_VM} {{b}} and has children of its own: cannot restore",
    "vm-session": f"seize: {_VM} {{b}} and leads its own session: cannot restore",
    "vm-group": (f"seize: {_VM} {{b}} and is in process group {{a}}, neither its parent's "
                 "nor one of its own alone: cannot restore"),
    "vm-pidfd": ("files: a pidfd refers to task {a}, which shares the address space "
                 "(CLONE_VM) of its parent: cannot restore"),
    "vm-own-pidfd": f"files: {_VM} but not its fd table, and holds a pidfd (fd ",
}


@pytest.fixture(scope="module")
def shared_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/engine/data/shared_refusals.c, built."""
    return cr.build_c(SHARED_C, tmp_path_factory)


@pytest.mark.parametrize("mode", sorted(SHARED))
def test_unrestorable_sharing_is_refused_at_dump(mode: str, shared_bin: Path,
                                                 tmp_path: Path) -> None:
    """Kernel tables shared in a way restore cannot rebuild: one line naming the tasks
    and the table, no image, every task running untraced as before."""
    cr.become_subreaper()
    holder = subprocess.Popen([str(shared_bin), mode], stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    pids = [holder.pid]
    try:
        assert holder.stdout is not None
        words = holder.stdout.readline().split()
        assert words[:1] == ["ready"], words
        pids += [int(w) for w in words[1:]]
        a, b = words[1], words[2] if len(words) > 2 else ""
        images = tmp_path / "img"
        res = run_engine("dump", "-t", str(holder.pid), "-D", str(images))
        assert res.returncode == 1, res.stderr
        line = res.stderr.strip()
        assert "\n" not in line, line
        # (the tasks sharing one table are named in kcmp's order of their tables)
        orders = [(a, b), (b, a)] if mode == "files-siblings" else [(a, b)]
        assert line.startswith(tuple("engine: error: " + SHARED[mode].format(a=x, b=y)
                                     for x, y in orders)), line
        assert not images.exists()
        for pid in set(pids):
            status = Path(f"/proc/{pid}/status").read_text()
            assert "TracerPid:\t0\n" in status and "State:\tS" in status, (pid, status)
    finally:
        for pid in reversed(pids):
            cr.kill_reap(pid)
        holder.wait(timeout=10)
