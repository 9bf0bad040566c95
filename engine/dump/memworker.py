"""The private memory of a tree's processes, read by a second engine process
(engine/worker.py) while the engine reads the registers of, and injects into, the others.

Reading a task's memory (maps, smaps, PAGEMAP_SCAN, process_vm_readv, the pages and
pagemap files) needs no ptrace, only the access /proc/PID/mem needs; injecting needs the
tracer. The engine hands each task to the worker as soon as its registers are read, and
waits for the worker to be done with a task before it injects into it: an injection maps
a code page and writes a signal frame below the stack pointer, and puts both back, so
memory read before it is the task's as it is after it. The worker writes the task's pages
into the image; once the injection told the task's brk, a second job has it write the mm
file: the record, the VMA table and the pagemap (both stay in the worker till then). It
sends back the mm record, the files' checksums and its counts; the engine takes those as
if it had written them. A task's
read first finds the pages each of its children shares copy-on-write with it (for their
mm records; the children's layouts read then serve their own reads): parents are read
before their children and injected after their read, so neither of a pair is injected
yet (an injection copies stack pages). (A tree of 50 small tasks: the worker's ~1 ms a
task overlaps the registers' step and the injections.)

Only for a plain dump of a tree of several small tasks: a pre-dump copies pages after the
freeze, tracking arms a userfaultfd per task (injected), and a large task writes its own
pages (selfwrite, injected too).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Protocol

from engine.dump import pages, selfwrite
from engine.dump.tree import Proc
from engine.images import names
from engine.images.imgdir import ImageDir
from engine.images.records import MmCore, Vma
from engine.worker import Worker

#: Trees of fewer processes are read by the engine itself: the worker's fork, and the
#: engine pages it writes to, cost more than it saves below this (in-process, medians of
#: 8-10, dump ms inline / with the worker: 4 tasks 16.2 / 21.9, 5 18.8 / 21.4, 8 27.6 /
#: 27.6, 10 32.7 / 31.4, 12 38.1 / 34.7).
MIN_TASKS = 8
#: How long one task's memory may take the worker (seconds): it reads at most
#: selfwrite.MIN_TOTAL of private pages a task.
TIMEOUT = 60.0


class Counts(Protocol):
    """What the dump counts of a task's memory (DumpStats)."""

    pages: int
    vmas: int


#: A task's maps text and the VMAs parsed from it, without VmFlags (dump.vmas.layout).
Layout = tuple[bytes, list[Vma]]
#: Reads one task's memory into the image before its injection: (img, proc, staging,
#: smaps reader, its layout) -> its VMAs, its pagemap, and the pages and VMAs it counted
#: (the dumper's _read_memory).
Reader = Callable[[ImageDir, Proc, pages.Staging, Executor, Layout],
                  tuple[list[Vma], bytes, int, int]]
#: Writes a task's mm file: (img, pid, its VMAs, its pagemap, brk, its Stat, pages shared
#: with the parent) -> the record (the dumper's _write_mm).
MmWriter = Callable[[ImageDir, int, list[Vma], bytes, int, Any, list[list[int]]], MmCore]
#: The pages each child shares copy-on-write with its parent: ([(child, parent)], their
#: VMAs by pid) -> runs by child (the dumper's _shared_pages).
CowFinder = Callable[[list[tuple[int, int]], dict[int, list[Vma]]],
                     dict[int, list[list[int]]]]


def wanted(kind: str, prev_dir: str | None, track_mem: bool,
           resident: pages.Resident) -> bool:
    """Whether a dump of that kind, of a tree of that resident memory, uses a worker."""
    return (kind == "dump" and prev_dir is None and not track_mem
            and resident.tasks >= MIN_TASKS and resident.largest_anon < selfwrite.MIN_TOTAL)


@dataclass
class _Written:
    """What a job of the worker wrote into the image."""

    pid: int
    created: list[str]
    checksums: dict[str, list[int]]
    page_summed: list[str]


@dataclass
class _Read(_Written):
    """A task's memory as the worker read it."""

    pages: int = 0
    vmas: int = 0


@dataclass
class _Mm(_Written):
    """A task's mm record as the worker wrote it."""

    mm: MmCore | None = None


class MemoryWorker:
    """The worker of one dump; see the module doc. Start it before the freeze (its fork
    is no frozen time) and close() it on every path before the image is discarded."""

    def __init__(self, img: ImageDir, slot: int, layout: Callable[[int], Layout],
                 read: Reader, write_mm: MmWriter, find_cow: CowFinder) -> None:
        self._img = img
        side = _WorkerSide(img, slot, layout, read, write_mm, find_cow)
        self._worker = Worker(side, "memory", TIMEOUT)
        # its staging buffers populated while the engine freezes the tree
        self._worker.send(("map",))
        self._read: set[int] = set()  # tasks whose memory is read
        self._mms: dict[int, MmCore] = {}
        self._pages = self._vmas = 0

    def read(self, p: Proc, children: list[int]) -> None:
        """Have it read task p (frozen, not injected, nor are its `children`, whose
        pages shared with it copy-on-write it finds first). Parents before children. The
        files it will write are the image's from now on: a failed dump removes them."""
        self._img.created_files.append(names.pages(p.pid))
        self._worker.send(("read", p, children))

    def wait_read(self, pid: int) -> None:
        """Wait until it has read task `pid` (sent with read()), before its injection."""
        while pid not in self._read:
            self._take(self._worker.next_result())

    def write_mm(self, pid: int, brk: int, stat: Any) -> None:
        """Have it write the mm record of task `pid`, read already, with its brk, its
        /proc stat and the pages it shares with its parent (found at the parent's read)."""
        self._img.created_files.append(names.mm(pid))
        self._worker.send(("mm", pid, brk, stat))

    def collect(self, counts: Counts) -> dict[int, MmCore]:
        """Each task's mm record, once the worker did every job; its files and counts
        taken into the image and `counts`. No job is sent after it: the worker ends."""
        for r in self._worker.results():
            self._take(r)
        self._worker.done()
        counts.pages += self._pages
        counts.vmas += self._vmas
        return self._mms

    def _take(self, r: _Written) -> None:
        self._img.adopt(r.created, r.checksums, r.page_summed)
        if isinstance(r, _Read):
            self._read.add(r.pid)
            self._pages += r.pages
            self._vmas += r.vmas
        elif isinstance(r, _Mm) and r.mm is not None:
            self._mms[r.pid] = r.mm

    def close(self) -> None:
        """End the worker (killed if it still works: its files are then discarded)."""
        self._worker.close()


class _Inline(Executor):
    """Runs what is submitted at once. A worker's tasks are small (under
    selfwrite.MIN_TOTAL): their smaps' page walk is short, and handing it to a thread
    cost more than it overlapped (a tree of 50: the worker's 0.9 -> 0.75 ms a task)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        done: Future[Any] = Future()
        done.set_result(fn(*args, **kwargs))  # (what it raises, submit raises)
        return done


class _WorkerSide:
    """What runs in the worker: its own staging buffers, populated by its first job
    ("map"), and the VMAs of the tasks read (for their mm records)."""

    def __init__(self, img: ImageDir, slot: int, layout: Callable[[int], Layout],
                 read: Reader, write_mm: MmWriter, find_cow: CowFinder) -> None:
        self.img, self.slot, self.read, self.write_mm = img, slot, read, write_mm
        self.layout, self.find_cow = layout, find_cow
        self.staging: pages.Staging | None = None
        self.layouts: dict[int, Layout] = {}  # of children, read with their parents
        self.vmas: dict[int, list[Vma]] = {}
        self.pagemaps: dict[int, bytes] = {}
        self.cow: dict[int, list[list[int]]] = {}

    def __call__(self, job: tuple[Any, ...]) -> _Written:
        before = len(self.img.created_files)
        result: _Written
        if job[0] == "map":
            self._staging().map()
            return _Written(0, [], {}, [])
        if job[0] == "read":
            result = self._read(job[1], job[2])
        else:
            _kind, pid, brk, stat = job
            result = _Mm(pid, [], {}, [], self.write_mm(
                self.img, pid, self.vmas.pop(pid), self.pagemaps.pop(pid), brk, stat,
                self.cow.pop(pid, [])))
        result.created = self.img.created_files[before:]
        result.checksums = {n: self.img.checksums[n] for n in result.created
                            if n in self.img.checksums}
        result.page_summed = self.img.page_summed(result.created)
        return result

    def _staging(self) -> pages.Staging:
        if self.staging is None:
            self.staging = pages.Staging(self.slot)
        return self.staging

    def _read(self, p: Proc, children: list[int]) -> _Read:
        own = self.layouts.pop(p.pid, None) or self.layout(p.pid)
        if children:
            for child in children:
                self.layouts[child] = self.layout(child)
            found = self.find_cow([(child, p.pid) for child in children],
                                  {pid: self.layouts[pid][1] for pid in children}
                                  | {p.pid: own[1]})
            self.cow.update(found)
        self.vmas[p.pid], self.pagemaps[p.pid], nr_pages, nr_vmas = self.read(
            self.img, p, self._staging(), _Inline(), own)
        return _Read(p.pid, [], {}, [], nr_pages, nr_vmas)
