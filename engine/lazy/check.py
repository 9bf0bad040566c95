"""The daemon's page checks: no page is delivered before it matched its checksum, and no
restore waits for all of them.

A thread checks each pages file from its start on, ahead of the copies (it also brings a
cold file into the page cache for them); a copy that gets ahead of it checks its own run
first. Both move one mark per file: every byte below it has been checked. A damaged page
is found by whichever side reaches it first, and never passes: a run beyond the mark is
checked by the copy itself.
"""

from __future__ import annotations

import threading

from engine.errors import EngineError
from engine.images import PagesReader
from engine.images.records import PAGE_SIZE

#: bytes the thread checks at a time (the lock is not held meanwhile)
_CHUNK = 4 << 20


class PageChecks:
    """Checks of the pages files one lazy restore is served from."""

    def __init__(self, files: list[PagesReader]) -> None:
        self._files = files
        self._marks = {id(f): 0 for f in files}  # checked below this file offset
        self._lock = threading.Lock()
        self._stop = threading.Event()
        #: what the thread found wrong (the copies find it too, if they get there)
        self.error: EngineError | None = None
        self._thread = threading.Thread(target=self._ahead, name="page-checks", daemon=True)

    def start(self) -> None:
        """Start checking ahead of the copies (once; later calls do nothing)."""
        if self._thread.ident is None:
            self._thread.start()

    def ensure(self, file: PagesReader, offset: int, length: int) -> None:
        """Raise ImageError unless the file's pages [offset, offset + length) match their
        checksums (those below the mark were checked already)."""
        key = id(file)
        with self._lock:
            mark = self._marks.get(key, 0)
        if offset + length <= mark:
            return
        start = max(offset, mark)  # (runs and marks are whole pages)
        file.verify(start, file.address + start, offset + length - start)
        if start <= mark:
            self._advance(key, offset + length)

    def stop(self) -> None:
        """Stop the thread (it ends within one chunk's check)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _advance(self, key: int, to: int) -> None:
        with self._lock:
            self._marks[key] = max(self._marks.get(key, 0), to)

    def _ahead(self) -> None:
        try:
            for f in self._files:
                size = len(f.sums.values) * PAGE_SIZE
                while not self._stop.is_set():
                    with self._lock:
                        mark = self._marks[id(f)]
                    if mark >= size:
                        break
                    end = min(size, mark + _CHUNK)
                    f.verify(mark, f.address + mark, end - mark)
                    self._advance(id(f), end)
        except EngineError as e:
            self.error = e
