"""The one exception type the engine's CLI turns into ``engine: error: <phase>: <message>``."""

from __future__ import annotations


class EngineError(Exception):
    """A failure of one engine phase (e.g. "seize", "memory", "read", "fork").

    ``phase`` names the step that failed, ``message`` what and where (pid, file, address).
    The CLI prints ``engine: error: <phase>: <message>`` on stderr and exits 1.
    """

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(f"{phase}: {message}")
        self.phase = phase
        self.message = message
