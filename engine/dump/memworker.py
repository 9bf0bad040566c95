"""The private memory of a tree's processes, read by a second engine process
(engine/worker.py) while the engine injects into the next ones.

Reading a task's memory (maps, smaps, PAGEMAP_SCAN, process_vm_readv, the pages and
pagemap files) needs no ptrace, only the access /proc/PID/mem needs; injecting needs the
tracer. So once a task is injected (its memory as it was again: the code page unmapped,
the stack bytes put back) the worker reads it, while the engine injects the next one: a
tree of 50 small tasks took ~1.2 ms a task for each. The worker writes the task's pages,
pagemap, mm record and VMA table into the image and sends back the mm record, the files'
checksums and its counts; the engine takes those as if it had written them.

Only for a plain dump of a tree of several small tasks: a pre-dump copies pages after the
freeze, tracking arms a userfaultfd per task (injected), and a large task writes its own
pages (selfwrite, injected too).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from engine.dump import pages, selfwrite
from engine.dump.tree import Proc
from engine.images import names
from engine.images.imgdir import ImageDir
from engine.images.records import MmCore
from engine.worker import Worker

#: Trees of fewer processes are read by the engine itself (the fork, and the engine pages
#: the worker writes to, cost about what one task's memory does).
MIN_TASKS = 4
#: How long one task's memory may take the worker (seconds): it reads at most
#: selfwrite.MIN_TOTAL of private pages a task.
TIMEOUT = 60.0


class Counts(Protocol):
    """What the dump counts of a task's memory (DumpStats)."""

    pages: int
    vmas: int


#: Reads one task's memory into the image: (img, proc, its state, staging, smaps reader)
#: -> its MmCore, written too, and the pages and VMAs it counted (the dumper's
#: _read_memory).
Reader = Callable[[ImageDir, Proc, Any, pages.Staging, ThreadPoolExecutor],
                  tuple[MmCore, int, int]]


def wanted(kind: str, prev_dir: str | None, track_mem: bool,
           resident: pages.Resident) -> bool:
    """Whether a dump of that kind, of a tree of that resident memory, uses a worker."""
    return (kind == "dump" and prev_dir is None and not track_mem
            and resident.tasks >= MIN_TASKS and resident.largest_anon < selfwrite.MIN_TOTAL)


@dataclass
class _Result:
    """A task's memory as the worker read it."""

    pid: int
    mm: MmCore
    pages: int
    vmas: int
    created: list[str]
    checksums: dict[str, list[int]]
    page_summed: list[str]


class MemoryWorker:
    """The worker of one dump; see the module doc. Start it before the freeze (its fork
    is no frozen time) and close() it on every path before the image is discarded."""

    def __init__(self, img: ImageDir, slot: int, read: Reader) -> None:
        self._img = img
        side = _WorkerSide(img, slot, read)
        self._worker = Worker(side, "memory", TIMEOUT)
        self._sent: list[int] = []

    def send(self, p: Proc, state: Any) -> None:
        """Have it read task p (injected and put back; still frozen). The files it will
        write are the image's from now on: a failed dump removes them."""
        self._img.created_files += [names.pagemap(p.pid), names.pages(p.pid),
                                    names.mm(p.pid), names.vmas(p.pid)]
        self._worker.send((p, state))
        self._sent.append(p.pid)

    def collect(self, counts: Counts) -> dict[int, MmCore]:
        """Each sent task's mm record, once the worker read them all; its files and counts
        taken into the image and `counts`."""
        done = {}
        for r in self._worker.results():
            self._img.adopt(r.created, r.checksums, r.page_summed)
            counts.pages += r.pages
            counts.vmas += r.vmas
            done[r.pid] = r.mm
        return done

    def close(self) -> None:
        """End the worker (killed if it still works: its files are then discarded)."""
        self._worker.close()


class _WorkerSide:
    """What runs in the worker: its own staging buffers and smaps reader, made for the
    first task."""

    def __init__(self, img: ImageDir, slot: int, read: Reader) -> None:
        self.img, self.slot, self.read = img, slot, read
        self.staging: pages.Staging | None = None
        self.smaps: ThreadPoolExecutor | None = None

    def __call__(self, job: tuple[Proc, Any]) -> _Result:
        p, state = job
        if self.staging is None or self.smaps is None:
            self.staging = pages.Staging(self.slot)
            self.smaps = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smaps")
        before = len(self.img.created_files)
        mm, nr_pages, nr_vmas = self.read(self.img, p, state, self.staging, self.smaps)
        created = self.img.created_files[before:]
        summed = self.img.page_summed(created)
        return _Result(p.pid, mm, nr_pages, nr_vmas, created,
                       {n: self.img.checksums[n] for n in created if n in self.img.checksums},
                       summed)
