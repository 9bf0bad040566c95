"""The one exception type the engine's CLI turns into ``engine: error: <phase>: <message>``."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class EngineError(Exception):
    """A failure of one engine phase (e.g. "seize", "memory", "read", "fork").

    ``phase`` names the step that failed, ``message`` what and where (pid, file, address).
    The CLI prints ``engine: error: <phase>: <message>`` on stderr and exits 1.
    """

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(f"{phase}: {message}")
        self.phase = phase
        self.message = message


# -- termination signals ------------------------------------------------------------------
#
# SIGTERM, SIGINT and SIGHUP become one EngineError("interrupted", ...) raised where the
# main thread is, so every step's cleanup runs (a failed dump leaves the tree running, a
# failed restore kills what it made). Once a command has committed (its result is
# complete and will not be undone) the same signals are ignored: a step that finished
# reports success even if a signal arrives after it.

TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Interruption:
    """The state of the termination handler: armed until committed, raising once."""

    raised = False
    committed = False
    ignored = 0  # signals that arrived after the commit (or during the cleanup)
    held = 0  # depth of termination_held() blocks
    pending: int | None = None  # a signal that arrived while held


def _on_signal(signo: int, _frame: FrameType | None) -> None:
    if _Interruption.committed or _Interruption.raised:
        _Interruption.ignored += 1
        return  # the work is done, or its cleanup is already running: let it finish
    if _Interruption.held:
        # Delivered to another thread (the mask only holds it in this one) while the
        # main thread is inside termination_held(): raised when that block ends.
        _Interruption.pending = signo
        return
    _raise_interrupted(signo)


def _raise_interrupted(signo: int) -> None:
    _Interruption.raised = True
    raise EngineError("interrupted", f"terminated by {signal.Signals(signo).name}")


def arm_interruption() -> None:
    """Turn the termination signals into one EngineError (for the rest of the command)."""
    _Interruption.raised = _Interruption.committed = False
    for s in TERMINATION_SIGNALS:
        signal.signal(s, _on_signal)


def commit() -> None:
    """The command's result is complete: from now on termination signals are ignored
    (handlers stay installed but do nothing), so the command reports its success."""
    _Interruption.committed = True
    from engine.faults import pause_point  # here: engine.faults imports this module

    pause_point("commit")


def ignored_signals() -> int:
    """How many termination signals were ignored so far (after commit, during cleanup)."""
    return _Interruption.ignored


def default_termination() -> None:
    """Give the termination signals back their default action (a foreground restore that
    waits for its root: killing the engine then only ends the wait)."""
    for s in TERMINATION_SIGNALS:
        signal.signal(s, signal.SIG_DFL)


@contextmanager
def termination_held() -> Iterator[None]:
    """Hold the termination signals (blocked, so they wait) while a target task is in a
    state only this block can undo (running an injected table, a mapping made but not
    yet recorded); they are handled right after it. Inside another such block it only
    counts: the signals are blocked already, and the outermost block handles them (two
    sigmask calls per injected syscall cost a 50-task dump 6 ms)."""
    if _Interruption.held:
        _Interruption.held += 1
        try:
            yield
        finally:
            _Interruption.held -= 1
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, TERMINATION_SIGNALS)
    _Interruption.held += 1
    signo = None
    try:
        yield
    finally:
        _Interruption.held -= 1
        if not _Interruption.held:
            # Taken off here even when the block failed: its error is already the
            # command's outcome, and the cleanup must not be interrupted.
            signo, _Interruption.pending = _Interruption.pending, None
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    if signo is not None and not _Interruption.committed:
        _raise_interrupted(signo)


def hold_termination_for_exit() -> None:
    """Block the termination signals for good: the command's outcome is printed, and a
    signal during interpreter shutdown (which gives handlers back their default action)
    must not turn it into a death by signal."""
    signal.pthread_sigmask(signal.SIG_BLOCK, TERMINATION_SIGNALS)
