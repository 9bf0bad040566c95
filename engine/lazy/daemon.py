"""`python -m engine lazy-pages -D DIR`: serve the pages of a lazy restore.

Loads and checks the image's records (a damaged or hostile one is refused before it
listens, so before any restore can connect), listens on DIR/lazy-pages.sock, takes the
userfaultfds of one `restore --lazy-pages` (engine.lazy.protocol), then in one loop:
answers missing-page faults (UFFDIO_COPY of the faulting page and a few after it, or
UFFDIO_ZEROPAGE where nothing was stored), follows fork/mremap/munmap/madvise events, and
between them copies the remaining pages in large blocks. No page is copied before it
matched its checksum (engine.lazy.check: a thread checks ahead of the copies, a copy that
gets ahead checks its own run), so a restore does not wait for every page to be read; a
damaged page, or any failure once the tasks were taken, kills the tasks it serves (they
cannot get their memory) and exits 1 naming what was wrong. It exits 0 once nothing is
left to copy in any process (pages delivered, or the process is gone), closing the
userfaultfds, which unregisters what is left. Every wait has a deadline
(ENGINE_LAZY_TIMEOUT seconds in all, default 300).
ENGINE_LAZY_BACKGROUND_DELAY (seconds, default 0) holds the background copy back, so tests
can see pages arrive through faults; meanwhile a forked child (whose pid the fork event
does not give, so no pidfd tells when it exits) gets one page every _PROBE_S seconds, which
is how its exit is noticed (ESRCH). Such a child is not killed on a failure either: its
userfaultfd is closed, and its pages not yet delivered read as zeros.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from engine.errors import EngineError
from engine.images import DumpImage, load
from engine.images.records import PAGE_SIZE
from engine.kernel import uapi, uffd
from engine.kernel.structs import UffdMsg
from engine.kernel.sys import pidfd_open
from engine.lazy import SOCKET_NAME, open_dir, protocol, socket_path
from engine.lazy.check import PageChecks
from engine.lazy.pending import Pending
from engine.lazy.source import Run, Sources

_BLOCK = 4 << 20  # bytes per background copy: large enough for speed, small for latency
_FAULT_WINDOW = 16 * PAGE_SIZE  # copied on a fault: the page and the next ones of its run
_POLL_IDLE_MS = 100
_PROBE_S = 0.5
_RESTORE_END_WAIT_S = 1.0  # the longest the background copy waits for the restore's end


def _env_seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise EngineError("lazy-pages", f"{name} is not a number of seconds") from None


@dataclass
class _Mm:
    """One process (address space) being served."""

    label: str
    fd: int
    pending: Pending
    retry: list[int] = field(default_factory=list)  # fault addresses to serve again
    pidfd: int = -1  # readable once the process exited (forked children have none)


class Server:
    """The serving loop over the processes handed over by one restore."""

    def __init__(self, image: DumpImage, deadline: float, delay: float = 0.0) -> None:
        self.image = image
        self.deadline = deadline
        self.delay = delay  # seconds before background copying starts
        self.sources = Sources()
        self.mms: dict[int, _Mm] = {}  # by userfaultfd
        self.exits: dict[int, _Mm] = {}  # by pidfd
        self.poll = select.poll()
        self.stats = {"fault": 0, "background": 0, "zero": 0, "forks": 0, "gone": 0}
        self.checks = PageChecks([])  # replaced once the tasks' files are known

    # ---- hand-over ---------------------------------------------------------------------

    def take_over(self, conn: socket.socket) -> None:
        """Receive every process of the restore and acknowledge."""
        while True:
            conn.settimeout(max(self.deadline - time.monotonic(), 0.001))
            try:
                msg, fd = protocol.recv_message(conn)
            except TimeoutError:
                raise EngineError("lazy-pages", "restore sent nothing in time") from None
            except ConnectionError as e:
                raise EngineError("lazy-pages", f"restore ended without handing over its "
                                                f"tasks ({e})") from None
            if msg.get("done"):
                break
            if fd < 0:
                raise EngineError("lazy-pages", "a task message came without its fd")
            try:
                pid, real = int(msg["pid"]), int(msg["real"])
                ranges = [(int(start), int(end)) for start, end in msg["ranges"]]
            except (KeyError, TypeError, ValueError) as e:
                os.close(fd)
                raise EngineError("lazy-pages", f"malformed task message: {e!r}") from None
            runs: list[Run] = []
            for start, end in ranges:
                runs.extend(self.sources.runs(self.image, pid, start, end))
            mm = _Mm(f"task {real}", fd, Pending(runs))
            try:
                mm.pidfd = pidfd_open(real)
            except OSError:
                os.close(fd)
                raise EngineError("lazy-pages", f"{mm.label} is gone already") from None
            self._add(mm)
        self.checks = PageChecks(self.sources.files())
        conn.sendall(protocol.ACK)

    def kill_tasks(self) -> None:
        """SIGKILL every process served whose pid is known: one whose pages cannot all
        be delivered must not run on with some of them missing."""
        for pidfd in self.exits:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass  # gone already (the error that brought us here is the one to tell)

    def _add(self, mm: _Mm) -> None:
        fl = fcntl.fcntl(mm.fd, fcntl.F_GETFL)
        fcntl.fcntl(mm.fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        self.mms[mm.fd] = mm
        self.poll.register(mm.fd, select.POLLIN)
        if mm.pidfd >= 0:
            self.exits[mm.pidfd] = mm
            self.poll.register(mm.pidfd, select.POLLIN)

    def _drop(self, mm: _Mm) -> None:
        self.poll.unregister(mm.fd)
        del self.mms[mm.fd]
        os.close(mm.fd)
        if mm.pidfd >= 0:
            self.poll.unregister(mm.pidfd)
            del self.exits[mm.pidfd]
            os.close(mm.pidfd)
            mm.pidfd = -1
        mm.pending = Pending([])
        mm.retry.clear()

    # ---- serving -----------------------------------------------------------------------

    def serve(self, conn: socket.socket) -> None:
        """Serve until nothing is left to copy; EngineError past the deadline. Faults are
        served at once; the background copy waits for the restore to end (`conn`, its
        connection, closes: its last steps then do not compete with the copy for the
        CPUs), _RESTORE_END_WAIT_S at most; so do the checks ahead of the copies."""
        start = time.monotonic()
        checks_from = start + _RESTORE_END_WAIT_S
        background_from = start + max(self.delay, _RESTORE_END_WAIT_S)
        self.poll.register(conn.fileno(), select.POLLIN)
        restoring = True
        next_probe = time.monotonic() + _PROBE_S
        while any(mm.pending or mm.retry for mm in self.mms.values()):
            if self.checks.error is not None:
                raise self.checks.error
            if time.monotonic() > self.deadline:
                left = sum(mm.pending.bytes() for mm in self.mms.values())
                raise EngineError("lazy-pages", f"deadline passed with {left} bytes "
                                                "not delivered")
            for fd, _ in self.poll.poll(0):
                if fd in self.mms:
                    self._events(self.mms[fd])
                elif fd in self.exits:
                    self._gone(self.exits[fd])
                elif restoring and fd == conn.fileno():
                    self.poll.unregister(fd)
                    restoring = False
                    checks_from = 0.0
                    background_from = min(background_from, start + self.delay)
            if time.monotonic() >= checks_from:
                self.checks.start()
            for mm in list(self.mms.values()):
                addrs, mm.retry = mm.retry, []
                for addr in addrs:
                    self._fault(mm, addr)
            busy = [mm for mm in self.mms.values() if mm.pending]
            now = time.monotonic()
            if busy and now >= background_from:
                mm = busy[0]
                run = mm.pending.take_first(_BLOCK)
                if run is not None:
                    self._copy(mm, run, "background")
                continue
            if now >= next_probe:
                next_probe = now + _PROBE_S
                for mm in busy:
                    run = mm.pending.take_first(PAGE_SIZE) if mm.pidfd < 0 else None
                    if run is not None:
                        self._copy(mm, run, "background")
            self.poll.poll(_POLL_IDLE_MS)

    def _events(self, mm: _Mm) -> None:
        while mm.fd in self.mms:
            msgs = uffd.read_events(mm.fd)
            if not msgs:
                return
            for m in msgs:
                self._event(mm, m)

    def _event(self, mm: _Mm, m: UffdMsg) -> None:
        if m.event == uapi.UFFD_EVENT_PAGEFAULT:
            self._fault(mm, m.pf_address)
        elif m.event == uapi.UFFD_EVENT_FORK:
            child = _Mm(f"child of {mm.label}", m.pf_flags & 0xFFFFFFFF, mm.pending.copy())
            self.stats["forks"] += 1
            self._add(child)
        elif m.event == uapi.UFFD_EVENT_REMAP:
            length = m.pf_ptid | (m._pad << 32)
            mm.pending.move(m.pf_flags, m.pf_address, length)
        elif m.event in (uapi.UFFD_EVENT_REMOVE, uapi.UFFD_EVENT_UNMAP):
            mm.pending.remove(m.pf_flags, m.pf_address)
        else:
            raise EngineError("lazy-pages", f"{mm.label}: unexpected userfaultfd event "
                                            f"{m.event:#x}")

    def _fault(self, mm: _Mm, addr: int) -> None:
        page = addr & ~(PAGE_SIZE - 1)
        run = mm.pending.take(page, _FAULT_WINDOW)
        if run is not None:
            if not self._copy(mm, run, "fault"):
                mm.retry.append(page)
            return
        # Nothing stored there (zeros), or already delivered while the fault was queued.
        try:
            uffd.zeropage(mm.fd, page, PAGE_SIZE)
            self.stats["zero"] += 1
        except OSError as e:
            if e.errno == errno.EAGAIN:
                mm.retry.append(page)
            elif e.errno == errno.ESRCH:
                self._gone(mm)
            elif e.errno in (errno.EEXIST, errno.ENOENT):
                self._wake(mm, page)
            else:
                raise EngineError("lazy-pages", f"{mm.label}: zero page at {page:#x}: "
                                                f"{e.strerror}") from None

    def _wake(self, mm: _Mm, page: int) -> None:
        try:
            uffd.wake(mm.fd, page, PAGE_SIZE)
        except OSError as e:
            if e.errno == errno.ESRCH:
                self._gone(mm)

    def _gone(self, mm: _Mm) -> None:
        self.stats["gone"] += 1
        self._drop(mm)

    def _copy(self, mm: _Mm, run: Run, why: str) -> bool:
        """UFFDIO_COPY the run (taken out of pending) from the pages file's mapping; False
        when the address space is changing (EAGAIN: the rest is put back, to be retried
        once events are read). ImageError when its pages do not match their checksums."""
        self.checks.ensure(run.file, run.offset, run.end - run.start)
        pos = run.start
        while pos < run.end:
            try:
                got = uffd.copy(mm.fd, pos, run.address + (pos - run.start), run.end - pos)
            except OSError as e:
                if e.errno == errno.EEXIST:  # filled before (e.g. eagerly by the restore)
                    self._wake(mm, pos)
                    pos += PAGE_SIZE
                    continue
                if e.errno == errno.EAGAIN:
                    mm.pending.put(run.cut(pos)[1] if pos > run.start else run)
                    return False
                if e.errno == errno.ESRCH:
                    self._gone(mm)
                    return True
                if e.errno == errno.ENOENT:  # no longer mapped there
                    return True
                raise EngineError("lazy-pages", f"{mm.label}: copy at {pos:#x}: "
                                                f"{e.strerror}") from None
            self.stats[why] += got
            pos += got
        return True

    def close(self) -> None:
        """Close every userfaultfd (the kernel unregisters what is left) and file."""
        self.checks.stop()
        for mm in list(self.mms.values()):
            self._drop(mm)
        self.sources.close()


def run(images_dir: str, trusted: bool = False) -> int:
    """The daemon: listen in images_dir, serve one restore, exit when done (`trusted`:
    accept images of another owner or mode)."""
    if not os.path.isdir(images_dir):
        raise EngineError("lazy-pages", f"{images_dir}: no such image directory")
    start = time.monotonic()
    deadline = start + _env_seconds("ENGINE_LAZY_TIMEOUT", 300.0)
    # The records are checked before it listens; each page before it is copied
    image = load(images_dir, trusted, verify_pages=False)
    ready = time.monotonic()
    path = os.path.join(images_dir, SOCKET_NAME)
    server = Server(image, deadline, _env_seconds("ENGINE_LAZY_BACKGROUND_DELAY", 0.0))
    listener, dir_fd = _listen(images_dir, path)
    try:
        listener.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            raise EngineError("lazy-pages", f"no restore connected to {path} in time") from None
        with conn:
            server.take_over(conn)
            total = sum(mm.pending.bytes() for mm in server.mms.values())
            try:
                server.serve(conn)
            except BaseException:
                server.kill_tasks()
                raise
    finally:
        server.close()
        listener.close()
        try:
            os.unlink(SOCKET_NAME, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        os.close(dir_fd)
    s = server.stats
    print(f"lazy-pages: {total} bytes to deliver; {s['fault']} on faults, "
          f"{s['background']} in background, {s['zero']} zero pages, {s['forks']} forks, "
          f"{s['gone']} processes gone first; records checked in {ready - start:.3f}s, "
          f"served in {time.monotonic() - ready:.3f}s",
          file=sys.stderr)
    return 0


def _listen(images_dir: str, path: str) -> tuple[socket.socket, int]:
    """A socket listening at `path`, SOCKET_NAME in images_dir, owner only (it hands out
    process memory), bound through the directory's fd (socket_path: any directory path
    fits); and that fd, which the socket is unlinked through at the end."""
    dir_fd = open_dir(images_dir, "lazy-pages")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o077)
    try:
        listener.bind(socket_path(dir_fd))
        listener.listen(1)
    except OSError as e:
        listener.close()
        os.close(dir_fd)
        raise EngineError("lazy-pages", f"{path}: cannot listen: {e.strerror or e}") from None
    finally:
        os.umask(old)
    return listener, dir_fd
