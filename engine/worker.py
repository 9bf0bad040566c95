"""A second engine process for work that needs no ptrace: the engine's Python runs on one
core, and a tree's dump has per-task work (reading private memory) that can run beside
the next task's injection (which needs the tracer) on the other.

The worker is forked from the engine and runs `work(job)` for each job it is sent, in
order, sending back each result, or the error that stopped it (its last). Jobs and
results are pickled through two pipes that only these two processes hold (nothing from
an image is ever unpickled). It dies with the engine (PR_SET_PDEATHSIG), takes the
default action of the termination signals (the engine undoes the dump), and exits once
its job pipe closes. `close()` ends it on every path: a worker that is late or misbehaves is killed.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import time
from collections.abc import Callable
from typing import Any, NoReturn

from engine.errors import EngineError, default_termination
from engine.kernel import sys as ksys
from engine.kernel import uapi

_LEN = struct.Struct("<Q")
#: The largest frame either side accepts (a result of a task with 30,000 VMAs is ~3 MB).
MAX_FRAME = 256 << 20
_EXIT_SETUP = 3


class Worker:
    """A forked process running `work` on each job sent; see the module doc."""

    def __init__(self, work: Callable[[Any], Any], phase: str, timeout: float) -> None:
        """Fork it now. `phase` names the engine phase its errors belong to; `timeout`
        bounds each wait for a result (seconds)."""
        self.phase = phase
        self.timeout = timeout
        self.pending = 0  # jobs sent whose result was not taken yet
        self._inbox = bytearray()
        self._results: list[Any] = []
        job_r, job_w = os.pipe2(os.O_CLOEXEC)
        res_r, res_w = os.pipe2(os.O_CLOEXEC)
        parent = os.getpid()
        try:
            self.pid = os.fork()
        except OSError:
            for fd in (job_r, job_w, res_r, res_w):
                os.close(fd)
            raise
        if self.pid == 0:
            os.close(job_w)
            os.close(res_r)
            _child(work, job_r, res_w, parent)
        os.close(job_r)
        os.close(res_w)
        self._jobs, self._res = job_w, res_r
        os.set_blocking(self._jobs, False)
        os.set_blocking(self._res, False)

    def send(self, job: Any) -> None:
        """Hand it a job (results are taken in meanwhile: neither side blocks the
        other, whatever the pipes hold)."""
        data = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(_LEN.pack(len(data)) + data)
        deadline = time.monotonic() + self.timeout
        while view:
            self._wait(deadline, writing=True)
            self._pump()  # its results first: it may wait for room to write them
            try:
                view = view[os.write(self._jobs, view):]
            except BlockingIOError:
                continue
            except OSError as e:
                self._pump()  # the error that ended it, if it sent one
                errors = [r for r in self._results if r[0] == "error"]
                if errors:
                    raise EngineError(*errors[0][1:]) from None
                raise EngineError(self.phase, f"worker {self.pid} is gone ({e.strerror})"
                                  ) from None
        self.pending += 1
        self._pump()

    def next_result(self) -> Any:
        """The result of the oldest job whose result was not taken yet, waiting for it (an
        error of the worker is raised as its EngineError)."""
        assert self.pending, "no job waits for its result"
        deadline = time.monotonic() + self.timeout
        while not self._results:
            self._wait(deadline, writing=False)
            self._pump(must=True)
        kind, *value = self._results.pop(0)
        self.pending -= 1
        if kind == "error":
            raise EngineError(*value)
        return value[0]

    def results(self) -> list[Any]:
        """Every result not taken yet, in the order of the jobs (next_result)."""
        out = []
        while self.pending:
            out.append(self.next_result())
        return out

    def done(self) -> None:
        """No more jobs: its job pipe is closed, so that it exits (~1 ms of tearing down
        its memory) while the engine goes on; close() then reaps it."""
        if self._jobs >= 0:
            os.close(self._jobs)
            self._jobs = -1

    def close(self) -> None:
        """End the worker: its job pipe closed, then killed if it has not exited (it is
        our child: by pid, and reaped here)."""
        if self.pid <= 0:
            return
        self.done()
        os.close(self._res)
        pid, self.pid = self.pid, -1
        if not _exits(pid, 1.0):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    def _wait(self, deadline: float, writing: bool) -> None:
        """Until the job pipe takes bytes (writing) or a result arrives, or the deadline."""
        poller = select.poll()
        poller.register(self._res, select.POLLIN)
        if writing:
            poller.register(self._jobs, select.POLLOUT)
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise EngineError(self.phase, f"worker {self.pid} did not answer within "
                                          f"{self.timeout:g} s")

    def _pump(self, must: bool = False) -> None:
        """Read what the worker sent; with `must`, its end closing before a whole result
        came is an error."""
        ended = False
        while True:
            try:
                chunk = os.read(self._res, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                ended = True
                break
            self._inbox += chunk
        while len(self._inbox) >= _LEN.size:
            (size,) = _LEN.unpack_from(self._inbox)
            if size > MAX_FRAME:
                raise EngineError(self.phase, f"worker {self.pid} sent a frame of {size} "
                                              "bytes")
            if len(self._inbox) < _LEN.size + size:
                break
            frame = bytes(self._inbox[_LEN.size:_LEN.size + size])
            del self._inbox[:_LEN.size + size]
            self._results.append(pickle.loads(frame))
        if ended and must and not self._results:
            raise EngineError(self.phase, f"worker {self.pid} ended without its results")


def _exits(pid: int, timeout: float) -> bool:
    """Whether child `pid` exits within `timeout` seconds, waited for on a pidfd (a loop
    of 1 ms sleeps cost a dump ~1 ms); False at once when no pidfd can be had."""
    try:
        pidfd = ksys.pidfd_open(pid)
    except OSError:
        return False
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def _child(work: Callable[[Any], Any], jobs: int, results: int, parent: int) -> NoReturn:
    """The worker's life: jobs in, results out, until the job pipe closes."""
    try:
        default_termination()
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        ksys.prctl(uapi.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(_EXIT_SETUP)
        while True:
            job = _read_frame(jobs)
            if job is None:
                os._exit(0)
            try:
                reply: tuple[Any, ...] = ("ok", work(job))
            except EngineError as e:
                reply = ("error", e.phase, e.message)
            except Exception as e:  # noqa: BLE001 - reported to the engine, which fails
                reply = ("error", "internal", f"worker: {type(e).__name__}: {e}")
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
            _write_all(results, _LEN.pack(len(data)) + data)
            if reply[0] == "error":
                os._exit(0)
    except BaseException:  # noqa: BLE001 - nothing may return into the engine's code
        os._exit(1)


def _read_frame(fd: int) -> Any:
    head = _read_exact(fd, _LEN.size)
    if head is None:
        return None
    (size,) = _LEN.unpack(head)
    if size > MAX_FRAME:
        os._exit(1)
    body = _read_exact(fd, size)
    if body is None:
        os._exit(1)
    return pickle.loads(body)


def _read_exact(fd: int, n: int) -> bytes | None:
    """n bytes, or None at end of file before the first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            if buf:
                os._exit(1)
            return None
        buf += chunk
    return bytes(buf)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
