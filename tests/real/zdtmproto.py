"""The zdtm test protocol for Python programs (tests/real): start, daemon, wait, verdict.

    test = Test(sys.argv)           # --pidfile=P --outfile=O
    with test.daemon():             # forks: the child runs the body, the parent writes
        ...set up state...          # the pidfile once the child is ready, then exits 0
    test.wait_signal()              # SIGTERM from the harness
    test.passed() / test.failed("why") / test.skip("why")

A failure during set-up makes the starter exit non-zero (the harness reports it at
start); `skip` at set-up exits 77, the protocol's "unsupported here".
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

EXIT_SKIP = 77


class Test:
    """One test program's side of the protocol."""

    def __init__(self, argv: list[str]) -> None:
        opts = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)
        self.pidfile = opts["pidfile"]
        self.outfile = opts["outfile"]

    def _write(self, line: str) -> None:
        with open(self.outfile, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    @contextlib.contextmanager
    def daemon(self) -> Iterator[None]:
        """Run the body in a forked child; the starter returns only when it is ready."""
        r, w = os.pipe()
        pid = os.fork()
        if pid:
            os.close(w)
            status = os.read(r, 1)
            if status != b"r":
                _, code = os.waitpid(pid, 0)
                sys.exit(os.waitstatus_to_exitcode(code) or 1)
            tmp = f"{self.pidfile}.tmp"
            with open(tmp, "w", encoding="ascii") as f:
                f.write(f"{pid}\n")
            os.rename(tmp, self.pidfile)
            os._exit(0)
        os.close(r)
        os.setsid()
        # SIGTERM blocked before the body starts threads, so that every thread has it
        # blocked and wait_signal() takes it: a handler may run on any thread that does
        # not block it, and then the main thread's pause() never returns (seen right
        # after a restore: the main thread just woken from its stop did not "want" it)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            yield
        except Exception as e:  # noqa: BLE001 - the starter must learn of any failure
            self._write(f"FAIL: set-up: {type(e).__name__}: {e}")
            os._exit(1)
        os.write(w, b"r")
        os.close(w)

    def wait_signal(self) -> None:
        """Sleep until the harness's SIGTERM (blocked in every thread since daemon())."""
        signal.sigwait({signal.SIGTERM})

    def passed(self) -> None:
        """Write PASS and exit 0."""
        self._write("PASS")
        sys.exit(0)

    def failed(self, why: str) -> None:
        """Write the FAIL line and exit 1."""
        self._write(f"FAIL: {why}")
        sys.exit(1)

    def skip(self, why: str) -> None:
        """At set-up: unsupported here (exit 77, the starter passes it on)."""
        self._write(f"SKIP: {why}")
        os._exit(EXIT_SKIP)
