"""`dump`: freeze a tree, write its images, then kill it or let it go on.

Steps (each ends with its fault point, so an injected fault happens after the step's own
side effects and exercises the cleanup): seize, regs, sigactions, memory, files, write.
Whatever fails, every task is detached with its registers, signal mask and memory as
before, and goes on running; only after a complete dump is the tree killed (default) or
released (--leave-running). The inventory is written last: an image without one is
incomplete and no reader accepts it.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TypeVar

from engine import fdbudget
from engine.dump import (
    cow,
    ctty,
    fileids,
    ipcns,
    memworker,
    namespaces,
    pages,
    selfwrite,
    sessions,
    sharing,
    shmem,
    task,
    track,
    tree,
    vmas,
)
from engine.dump import files as dfiles
from engine.dump.intervals import Interval, intersect, normalise, subtract
from engine.errors import EngineError, commit
from engine.faults import fault_point
from engine.images import names
from engine.images.imgdir import ImageDir
from engine.images.records import (
    FORMAT_NAME,
    FORMAT_VERSION,
    PAGE_SIZE,
    Creds,
    DumpStatsRecord,
    FdEntry,
    FilesImage,
    Inventory,
    MmCore,
    RlimitRecord,
    ShmemEntry,
    SigInfoRecord,
    TaskCore,
    TaskEntry,
    ThreadCore,
    Vma,
)
from engine.kernel import pagecrc
from engine.proc import pagemap as procpagemap
from engine.proc import tasks
from engine.proc.auxv import read_auxv
from engine.proc.stat import Stat, read_stat
from engine.proc.status import Status, read_status

T = TypeVar("T")


@dataclass
class DumpStats:
    """Figures of one dump, for logs, benchmarks and the image's stats.json."""

    tasks: int = 0
    threads: int = 0
    vmas: int = 0
    pages: int = 0
    parent_pages: int = 0
    shmem_pages: int = 0
    task_written: int = 0  # bytes of private pages the tasks wrote themselves (selfwrite)
    frozen: float = 0.0  # seconds the tree was frozen (see DumpStatsRecord)
    pages_frozen: int = 0  # pages written while it was frozen
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def pages_total(self) -> int:
        """Pages written in all: private and shared."""
        return self.pages + self.shmem_pages

    def record(self, kind: str) -> DumpStatsRecord:
        """The stats.json record."""
        return DumpStatsRecord(kind, round(self.frozen, 6), self.pages_frozen,
                               self.pages_total, self.parent_pages, self.tasks,
                               self.threads, {k: round(v, 6) for k, v in self.seconds.items()})


@dataclass
class _ProcFacts:
    """What a core record takes from /proc of a frozen process (none of it can change
    until the tree runs again), read while the engine waits for the memory worker."""

    namespaces: dict[str, int]
    ctty: tuple[str | None, int]  # (path, foreground pgrp), ctty.controlling_tty
    creds: Creds
    limits: list[RlimitRecord]
    cwd: str
    root: str
    umask: int
    personality: int
    oom_score_adj: int


def _proc_facts(pid: int, status: Status, stat: Stat, leaders: set[int]) -> _ProcFacts:
    """The /proc facts of `pid` (its main thread's status and stat read already);
    `leaders`: the tree's process group leaders."""
    return _ProcFacts(namespaces.inodes(pid), ctty.controlling_tty(pid, stat, leaders),
                      task.creds_of(status), task.limits_of(pid), tasks.cwd(pid),
                      tasks.root(pid), task.umask_of(status, pid), tasks.personality(pid),
                      tasks.oom_score_adj(pid))


@dataclass
class _ProcState:
    threads: list[ThreadCore]
    shared_pending: list[SigInfoRecord]
    status: Status  # the main thread's, read once (task.ThreadsRead)
    stat: Stat
    injected: task.InjectedProc | None = None
    mm: MmCore | None = None
    cow: list[list[int]] = field(default_factory=list)  # pages shared with the parent
    mm_written: bool = False  # mm-PID.img written (by the memory worker)
    pagemap: bytes | None = None  # its pagemap, once its pages are written (pre-dump: after)
    facts: _ProcFacts | None = None


@dataclass
class _Copy:
    """Private pages of one process to copy once the tree runs again (pre-dump): what
    to copy was decided, and tracking armed, while it was frozen; `mem_fd` was opened
    then too, so it reads that very address space."""

    pid: int
    runs: list[pages.Run]
    in_parent: list[Interval]
    mem_fd: int


def dump(pid: int, images_dir: str, leave_running: bool = False,
         prev_dir: str | None = None, track_mem: bool = False,
         kind: str = "dump") -> DumpStats:
    """Dump the tree rooted at `pid` into `images_dir`. Raises EngineError on failure,
    with every task left running as before.

    With `prev_dir` (an earlier image of the same tree whose dump armed memory tracking)
    pages not written since are recorded as in the parent image. With `track_mem` (and
    leave_running: a killed tree needs none), memory tracking is armed for a later dump
    against this one. A pre-dump is `kind="pre-dump"` with leave_running and track_mem:
    its private pages are copied after the tree is let go (tracking, armed while it was
    frozen, catches every page written meanwhile for the next dump), so it stays frozen
    only while its state is read."""
    limit = pages.buffered_limit()
    resident = pages.resident_bytes(pid, limit)
    buffered = pages.write_buffered(resident.total, limit)
    # Tens of thousands of VMA records are long-lived objects: the cyclic GC rescanned
    # them again and again (a maps06 memory step took 250-440 ms with it, 210-240 without)
    gc.disable()
    try:
        with pages.Staging(pages.staging_size(resident)) as staging:
            return _dump(pid, images_dir, leave_running, prev_dir, track_mem, kind,
                         staging, buffered,
                         memworker.wanted(kind, prev_dir, track_mem, resident),
                         resident.shmem > 0)
    finally:
        gc.enable()


def _dump(pid: int, images_dir: str, leave_running: bool, prev_dir: str | None,
          track_mem: bool, kind: str, staging: pages.Staging, buffered: bool,
          use_worker: bool, shared_memory: bool) -> DumpStats:
    if prev_dir is not None:
        prev_dir = os.path.abspath(os.path.join(images_dir, prev_dir))
        if not os.path.isfile(os.path.join(prev_dir, names.INVENTORY)):
            raise EngineError("seize", f"{prev_dir}: not a complete image (no inventory)")
    if not use_worker or shared_memory:
        # before the freeze: populating it is not frozen time (a worker maps its own, and
        # the engine's then serves only shared memory)
        staging.map()
    img = ImageDir.create(images_dir)
    img.pages_direct = not buffered
    worker = None
    if use_worker:  # forked before the freeze: no frozen time
        try:
            worker = memworker.MemoryWorker(img, staging.size, vmas.layout, _read_memory,
                                            _write_mm, _shared_pages)
        except OSError:
            pass  # (no fork: the engine reads every task itself)
    try:
        return _dump_tree(pid, img, images_dir, leave_running, prev_dir, track_mem, kind,
                          staging, worker)
    finally:
        if worker is not None:
            worker.close()


def _dump_tree(pid: int, img: ImageDir, images_dir: str, leave_running: bool,
               prev_dir: str | None, track_mem: bool, kind: str, staging: pages.Staging,
               worker: memworker.MemoryWorker | None) -> DumpStats:
    stats = DumpStats()
    clock = time.monotonic()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.monotonic()
        stats.seconds[step] = now - clock
        clock = now

    # The parent's trackers are taken over before freezing: the hand-over is not part
    # of the frozen time. Only trackers armed when the parent was dumped vouch for
    # "unchanged since".
    trackers = track.fetch(prev_dir) if prev_dir is not None else {}
    parent = _Parent(prev_dir, set(trackers)) if prev_dir is not None else None
    try:
        frozen = tree.freeze(pid)
    except BaseException:
        track.close_all(trackers)
        img.discard()
        raise
    track_mem = track_mem and leave_running  # a killed tree needs no tracking
    defer: list[_Copy] | None = [] if kind == "pre-dump" else None
    table = dfiles.FileTable()
    try:
        sessions.check(frozen)
        tables = sharing.find(frozen)
        fault_point("seize")
        lap("seize")
        procs = [p for p in frozen.order() if p.state != "zombie"]
        if worker is not None and any("vm" in shared for shared in tables.values()):
            # An injection maps its code page in the address space the worker would read.
            worker.close()
            worker = None
        state: dict[int, _ProcState] = {}
        pairs = _cow_pairs(procs, tables) if kind == "dump" else []
        leaders = {p.pid for p in frozen.order() if p.pgid == p.pid}  # groups inside
        for p in procs:
            got = _step(f"regs of {p.pid}", "regs", task.read_threads, p.pid, p.threads)
            st = state[p.pid] = _ProcState(got.threads, got.shared_pending, got.status,
                                           got.stat)
            if worker is not None and "vm" not in tables.get(p.pid, []):
                # there, while the engine goes on here
                worker.read(p, [child for child, parent in pairs if parent == p.pid])
            # (here: while the worker reads the first tasks, which the injections wait for)
            st.facts = _step(f"/proc state of {p.pid}", "write", _proc_facts, p.pid,
                             st.status, st.stat, leaders)
        if worker is None:
            for child, runs in _shared_pages(pairs).items():
                state[child].cow = runs
        fault_point("regs")
        lap("regs")
        for p in procs:
            # A task sharing its parent's address space has no memory of its own to track.
            own_mm = "vm" not in tables.get(p.pid, [])
            st = state[p.pid]
            if worker is not None and own_mm:
                worker.wait_read(p.pid)  # nothing injected while its memory is read
            inj = st.injected = _step(
                f"injection into {p.pid}", "sigactions", task.inject_state, p.pid,
                st.threads, track_mem and own_mm and p.pid not in trackers,
                (st.status, st.stat))
            if inj.tracker is not None:
                trackers[p.pid] = inj.tracker
            task.refuse_posix_timers(p.pid, inj.posix_timers, state[p.pid].threads,
                                     state[p.pid].shared_pending)
            if worker is not None and own_mm:
                worker.write_mm(p.pid, inj.brk, st.stat)
        fault_point("sigactions")
        lap("sigactions")
        for pid_done, read in (worker.collect(stats) if worker is not None else {}).items():
            state[pid_done].mm, state[pid_done].mm_written = read, True
        shmem_entries = _dump_memory(img, procs, state, stats, parent,
                                     trackers if track_mem else {}, defer, staging, tables)
        has_ipc = _step("ipc namespace", "memory", _dump_ipc, img, frozen, state, staging)
        fault_point("memory")
        lap("memory")
        try:
            fds = {p.pid: dfiles.dump_fds(img, table, p.pid) for p in procs}
            cwds = {p.pid: dfiles.dump_cwd(table, p.pid) for p in procs}
            dfiles.resolve_ttys(table, fds, {p.pid: p.ppid for p in procs})
            for p in procs:
                mm = state[p.pid].mm
                if mm is not None:  # (None: a task on its parent's address space)
                    dfiles.dump_mapped(img, table, p.pid, mm.vmas)
            table.check_complete({p.pid for p in procs})
            sharing.check_files(tables, fds, table.files)
            _check_fd_room(fds, len(table.files) + len(shmem_entries)
                           + sharing.staged_fds(tables, fds))
        finally:
            table.close()
        fault_point("files")
        lap("files")
        rel_parent = os.path.relpath(prev_dir, os.path.abspath(images_dir)) if prev_dir \
            else None
        inv = _write(img, frozen, state, fds, cwds, table, shmem_entries, kind, rel_parent,
                     tables)
        inv.ipc = names.IPC if has_ipc else None
        stats.tasks = len(frozen.procs)
        stats.threads = sum(len(s.threads) for s in state.values())
        if defer is None:
            _finish(img, inv, frozen, stats, kind)
            if track_mem:
                track.hold(images_dir, trackers)  # last: nothing may fail after it
        lap("write")
    except BaseException as exc:
        if worker is not None:
            worker.close()  # before the discard: it may still be writing files
        _close_copies(defer or [])
        table.end(keep_repair=False)  # before the tasks run again
        frozen.release()
        track.close_all(trackers)
        img.discard()
        _raise_vanished(exc, frozen)
        raise
    if defer is None:
        commit()  # the image is complete: a termination signal no longer undoes it
    table.end(keep_repair=not leave_running)
    if defer is None:
        # Closing a userfaultfd unprotects every page it tracked: after the tree runs.
        frozen.release(kill=not leave_running)
        track.close_all(trackers)
        lap("release")
        stats.seconds["checksums"] = pagecrc.seconds()  # part of "write" (and "memory")
        return stats
    frozen.release()
    stats.frozen = frozen.frozen_seconds
    stats.pages_frozen = stats.shmem_pages  # private pages are copied from here on
    lap("release")
    try:
        _copy_running(img, defer, staging, state)
        lap("copy")
        _finish(img, inv, frozen, stats, kind)
        track.hold(images_dir, trackers)  # last: nothing may fail after it
    except BaseException:
        track.close_all(trackers)
        img.discard()
        raise
    finally:
        _close_copies(defer)
    commit()
    stats.seconds["checksums"] = pagecrc.seconds()
    return stats


def _check_fd_room(fds: dict[int, list[FdEntry]], descriptions: int) -> None:
    """Refuse, while the tree still runs, a tree whose restore could not hold its fds
    under this engine's RLIMIT_NOFILE."""
    max_fd = max((e.fd for entries in fds.values() for e in entries), default=2)
    need = fdbudget.needed(max_fd, descriptions)
    why = fdbudget.make_room(need)
    if why:
        raise EngineError("files", f"cannot dump {descriptions} open files with fds up to "
                                   f"{max_fd}: their restore holds {need} fds at once and {why}")


def _finish(img: ImageDir, inv: Inventory, frozen: tree.FrozenTree, stats: DumpStats,
            kind: str) -> None:
    """stats.json, then the inventory: the image is complete."""
    img.checksum_written()  # still frozen for a dump: part of its frozen time
    if not stats.frozen:  # still frozen: the time until now
        stats.frozen = frozen.frozen_seconds
        stats.pages_frozen = stats.pages_total
    img.write_json(names.STATS, stats.record(kind))
    fault_point("write")
    img.write_inventory(names.INVENTORY, inv)  # last, with the checksums of every file


def _copy_running(img: ImageDir, copies: list[_Copy], staging: pages.Staging,
                  state: dict[int, _ProcState]) -> None:
    """Copy the private pages of a pre-dump while the tree runs, then write each mm file
    with its pagemap. Memory unmapped since reads as zeros: the next dump copies that
    range again (a new VMA is not tracked)."""
    for c in copies:
        pagemap = pages.write_task_pages(img, names.pages(c.pid), c.runs, c.pid, c.mem_fd,
                                         staging, in_parent=c.in_parent, tolerant=True)
        mm = state[c.pid].mm
        assert mm is not None
        img.write_mm(names.mm(c.pid), mm, pagemap)


def _close_copies(copies: list[_Copy]) -> None:
    for c in copies:
        if c.mem_fd >= 0:
            os.close(c.mem_fd)
            c.mem_fd = -1


class TaskVanished(EngineError):
    """A task of the tree exited while it was being dumped (the rest was released)."""


def _raise_vanished(exc: BaseException, frozen: tree.FrozenTree) -> None:
    """A dump that failed because a task of the tree exited says so (whatever ptrace call
    noticed it first: ESRCH, an unexpected exit status); the rest was released."""
    if isinstance(exc, EngineError) and "No such process" not in exc.message:
        return  # failed for its own reason
    gone = _vanished(frozen)
    if gone is not None:
        raise TaskVanished("dump", f"task {gone} exited during the dump; the rest of the "
                                   "tree runs on") from None


def _vanished(frozen: tree.FrozenTree) -> int | None:
    """A process of the tree that was alive when seized and has exited since, if any."""
    for p in frozen.procs.values():
        if p.state == "zombie":
            continue
        try:
            if read_stat(p.pid).state in ("Z", "X"):
                return p.pid
        except (OSError, ValueError):
            return p.pid
    return None


def _step(what: str, phase: str, fn: Callable[..., T], *args: object) -> T:
    """Run one collection function, turning OS-level failures into EngineError(phase)."""
    try:
        return fn(*args)
    except EngineError:
        raise
    except (OSError, TimeoutError, RuntimeError, ValueError, KeyError) as e:
        # ValueError/KeyError: a /proc file that does not read as expected.
        raise EngineError(phase, f"{what}: {type(e).__name__}: {e}") from None


@dataclass
class _Parent:
    """The parent image of an incremental dump and the trackers armed since it."""

    path: str
    tracked: set[int]  # pids whose tracking was armed by the parent's dump

    def coverage(self, pid: int) -> list[Interval]:
        """Address ranges the parent image (chain) holds pages for, for `pid`."""
        parent = ImageDir(self.path)
        if pid not in self.tracked or not parent.exists(names.mm(pid)):
            return []
        pm = parent.read_mm(names.mm(pid), MmCore)[2]
        return normalise([(e.addr, e.end) for e in pm.entries])


def _split_for_parent(p: tree.Proc, layout: list[Vma], runs: list[pages.Run],
                      tracked: list[Interval], parent: _Parent | None
                      ) -> tuple[list[pages.Run], list[Interval]]:
    """Runs to copy, and ranges to record as in the parent: present pages of tracked VMAs
    (`tracked`) that were not written since the parent and that the parent holds."""
    if parent is None or p.pid not in parent.tracked:
        return runs, []
    written = track.written(p.pid, track.trackable_ranges(layout))
    present = normalise([(r.addr, r.addr + r.length) for r in runs])
    unchanged = subtract(intersect(tracked, parent.coverage(p.pid)), written)
    if not unchanged:
        return runs, []
    copy = pages.clip_to_vmas(subtract(present, unchanged), layout)
    return copy, unchanged


def _dump_memory(img: ImageDir, procs: list[tree.Proc], state: dict[int, _ProcState],
                 stats: DumpStats, parent: _Parent | None,
                 arm: dict[int, track.Tracker], defer: list[_Copy] | None,
                 staging: pages.Staging, tables: dict[int, list[str]]) -> list[ShmemEntry]:
    sources: dict[str, shmem.ShmemSource] = {}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="smaps") as smaps_reader:
        for p in procs:
            st = state[p.pid]
            assert st.injected is not None
            # A task sharing its parent's address space: its parent's memory is its own.
            if "vm" not in tables.get(p.pid, []):
                if st.mm is None:  # (else read by the memory worker)
                    _process_memory(img, p, st, stats, parent, arm.get(p.pid), defer,
                                    staging, smaps_reader)
                assert st.mm is not None
                shmem.collect(sources, p.pid, st.mm.vmas)
            shmem.collect_fds(sources, p.pid)
        entries = []
        for sid, src in sorted(sources.items()):
            entry, stored = shmem.dump_object(img, sid, src, staging)
            entries.append(entry)
            stats.shmem_pages += stored
    return entries


def _dump_ipc(img: ImageDir, frozen: tree.FrozenTree, state: dict[int, _ProcState],
              staging: pages.Staging) -> bool:
    """ipc.json when the tree has an ipc namespace of its own (see dump/ipcns.py)."""
    vmas = {pid: st.mm.vmas for pid, st in state.items() if st.mm is not None}

    def inner() -> dict[int, int]:
        return {p.pid: ((state[p.pid].status if p.pid in state else read_status(p.pid)
                         ).ns_pid or [p.pid])[-1] for p in frozen.procs.values()}
    return ipcns.dump(img, frozen.root, list(state), vmas, inner, staging)


def _process_memory(img: ImageDir, p: tree.Proc, st: _ProcState, stats: DumpStats,
                    parent: _Parent | None, tracker: track.Tracker | None,
                    defer: list[_Copy] | None, staging: pages.Staging,
                    smaps_reader: Executor) -> None:
    """Private pages and the mm record (st.mm) of one process, injected already."""
    assert st.injected is not None
    task_vmas, st.pagemap = _private_memory(img, p, stats, parent, defer, staging,
                                            smaps_reader)
    st.mm = _step(f"mm of {p.pid}", "memory", _mm_core, p.pid, task_vmas, st.injected.brk,
                  st.stat)
    st.mm.cow = st.cow
    if tracker is not None:
        _step(f"memory tracking of {p.pid}", "memory", track.arm, tracker, task_vmas)


def _private_memory(img: ImageDir, p: tree.Proc, stats: DumpStats, parent: _Parent | None,
                    defer: list[_Copy] | None, staging: pages.Staging,
                    smaps_reader: Executor, task_writes: bool = True,
                    known: memworker.Layout | None = None) -> tuple[list[Vma], bytes | None]:
    """Private pages of one process (written, or deferred); returns its VMAs and its
    pagemap (None: deferred).

    Which pages to copy, and their copy, need only the layout (maps); smaps, whose page
    walk costs ~50 ms per resident GiB, is read meanwhile in a thread. Nothing may change
    the address space until it is read: the task writes its own pages (an injection,
    which maps a scratch area) only after that, and tracking is armed after that too
    (registering sets VmFlags "uw"). `known`: its layout, read already."""
    maps = known[0] if known else vmas.read_maps(p.pid)
    # smaps first: with 30,000 VMAs its reading is the longest thing here (parsing the
    # maps before it made that dump 30 ms slower)
    smaps = smaps_reader.submit(vmas.read_vmflags, p.pid, maps.count(b"\n"))
    try:
        layout = known[1] if known else vmas.parse(p.pid, maps, None)
        vmas.refuse_unrestorable(p.pid, layout)
        runs, tracked = _step(f"memory of {p.pid}", "memory", pages.private_runs, p.pid,
                              layout)
        runs, in_parent = _step(f"memory tracking of {p.pid}", "memory", _split_for_parent,
                                p, layout, runs, tracked, parent)
        stats.pages += sum(r.length for r in runs) // PAGE_SIZE
        stats.parent_pages += sum(e - s for s, e in in_parent) // PAGE_SIZE
        mem_fd = os.open(f"/proc/{p.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        pagemap = None
        try:
            if defer is not None:
                defer.append(_Copy(p.pid, runs, in_parent, mem_fd))
                mem_fd = -1  # closed by _close_copies
            elif not task_writes or not img.pages_direct or not selfwrite.wanted(runs):
                # (a file written through the page cache in the task's long writes got
                # large folios, 26-194 ms for 64 MiB here: the engine writes 64 KiB pieces)
                pagemap = pages.write_task_pages(img, names.pages(p.pid), runs, p.pid,
                                                 mem_fd, staging, in_parent=in_parent)
            else:
                smaps.result()  # the task's writes inject: the address space changes
                writer = selfwrite.TaskWriter(p.pid)
                pagemap = pages.write_task_pages(img, names.pages(p.pid), runs, p.pid,
                                                 mem_fd, staging, in_parent=in_parent,
                                                 task_writer=writer)
                stats.task_written += writer.bytes
        finally:
            if mem_fd >= 0:
                os.close(mem_fd)
        vmas.add_vmflags(p.pid, layout, smaps.result())
    finally:
        wait([smaps])  # never leave it reading while the task runs again
    stats.vmas += len(layout)
    return layout, pagemap


def _read_memory(img: ImageDir, p: tree.Proc, staging: pages.Staging,
                 smaps_reader: Executor, known: memworker.Layout
                 ) -> tuple[list[Vma], bytes, int, int]:
    """_private_memory as the memory worker runs it, before the task is injected (the
    injection puts back all it changes, and the engine waits for this before it injects
    the task): every page written by the worker (a task writing its own would need the
    tracer's injection); the VMAs, final from here on, and the pagemap go into the mm
    file (_write_mm). Returns the VMAs, the pagemap, and the pages and VMAs counted."""
    stats = DumpStats()
    task_vmas, pagemap = _private_memory(img, p, stats, None, None, staging, smaps_reader,
                                         task_writes=False, known=known)
    assert pagemap is not None  # (not deferred)
    return task_vmas, pagemap, stats.pages, stats.vmas


def _write_mm(img: ImageDir, pid: int, task_vmas: list[Vma], pagemap: bytes, brk: int,
              stat: Stat, cow: list[list[int]]) -> MmCore:
    """The mm record of a task the memory worker read, once its injection told its brk:
    written into the image by the worker too, with its VMAs and pagemap."""
    mm = _mm_core(pid, task_vmas, brk, stat)
    mm.cow = cow
    img.write_mm(names.mm(pid), mm, pagemap)
    return mm


def _cow_pairs(procs: list[tree.Proc], tables: dict[int, list[str]]) -> list[tuple[int, int]]:
    """(child, parent) of each process that may share pages copy-on-write with its parent
    in the tree (a task on its parent's address space shares everything, not
    copy-on-write); restorable only from a dump (a pre-dump image is not)."""
    live = {p.pid for p in procs}
    return [(p.pid, p.ppid) for p in procs
            if p.ppid in live and "vm" not in tables.get(p.pid, [])]


def _shared_pages(pairs: list[tuple[int, int]], layouts: dict[int, list[Vma]] | None = None
                  ) -> dict[int, list[list[int]]]:
    """The pages each child of `pairs` shares copy-on-write with its parent (`layouts`:
    tasks' VMAs parsed already). Before any injection into either, which copies stack
    pages."""
    zero = procpagemap.zero_pfn()
    if not zero:
        return {}  # page frames are hidden: the restore copies every page as before
    known = {pid: cow.private_ranges(v) for pid, v in (layouts or {}).items()}
    return {pid: _step(f"shared pages of {pid}", "regs", cow.shared_with_parent, pid, ppid,
                       zero, known) for pid, ppid in pairs}


def _exe(pid: int) -> str | None:
    try:
        return tasks.exe(pid)
    except OSError:
        return None


def _mm_core(pid: int, task_vmas: list[Vma], brk: int, st: Stat) -> MmCore:
    auxv = [word for pair in read_auxv(pid, with_null=True) for word in pair]
    exe = _exe(pid)
    return MmCore(
        start_code=st.start_code, end_code=st.end_code, start_data=st.start_data,
        end_data=st.end_data, start_brk=st.start_brk, brk=brk, start_stack=st.start_stack,
        arg_start=st.arg_start, arg_end=st.arg_end, env_start=st.env_start,
        env_end=st.env_end, auxv=auxv, vmas=task_vmas, exe=exe,
        pages=names.pages(pid),
        files=fileids.identities(pid, exe, task_vmas),
    )


def _write(img: ImageDir, frozen: tree.FrozenTree, state: dict[int, _ProcState],
           fds: dict[int, list[FdEntry]], cwds: dict[int, int | None],
           table: dfiles.FileTable, shmem_entries: list[ShmemEntry], kind: str,
           parent: str | None, tables: dict[int, list[str]]) -> Inventory:
    """Every record but the inventory, which is returned (written last by _finish)."""
    entries = []
    per_task_ns: dict[int, dict[str, int]] = {}
    for p in frozen.order():
        status = state[p.pid].status if p.pid in state else read_status(p.pid)
        entries.append(TaskEntry(p.pid, p.ppid, p.pgid, p.sid, p.state, list(p.threads),
                                 p.exit_code, ns_pid=list(status.ns_pid),
                                 shared=tables.get(p.pid, [])))
        if p.state == "zombie":
            # A zombie keeps only its ids, creds and exit code; nothing else is readable.
            core = TaskCore(pid=p.pid, ppid=p.ppid, pgid=p.pgid, sid=p.sid, state="zombie",
                            comm=status.name, threads=[], sigactions=[],
                            creds=task.creds_of(status), limits=[], cwd="/", root="/",
                            umask=0, personality=0, fds=[], exit_code=p.exit_code)
            img.write_json(names.core(p.pid), core)
            continue
        st = state[p.pid]
        assert st.injected is not None and st.facts is not None
        facts = st.facts
        per_task_ns[p.pid] = facts.namespaces
        # the process's comm is its main thread's, read with the threads
        comm = next((th.comm for th in st.threads if th.tid == p.pid), None)
        core = TaskCore(
            pid=p.pid, ppid=p.ppid, pgid=p.pgid, sid=p.sid, state=p.state,
            comm=tasks.comm(p.pid) if comm is None else comm, threads=st.threads,
            sigactions=st.injected.sigactions, creds=facts.creds, limits=facts.limits,
            cwd=facts.cwd, root=facts.root, umask=facts.umask,
            personality=facts.personality, fds=fds[p.pid],
            shared_pending=st.shared_pending, exe=_exe(p.pid) if st.mm is None else st.mm.exe,
            namespaces=facts.namespaces,
            child_subreaper=st.injected.child_subreaper, itimers=st.injected.itimers,
            posix_timers=st.injected.posix_timers, thp_disable=st.injected.thp_disable,
            oom_score_adj=facts.oom_score_adj, dumpable=st.injected.dumpable,
            membarrier=st.injected.membarrier,
            ctty=facts.ctty[0], ctty_pgrp=facts.ctty[1], cwd_file=cwds[p.pid],
        )
        img.write_json(names.core(p.pid), core)
        if st.mm is not None and not st.mm_written and st.pagemap is not None:
            img.write_mm(names.mm(p.pid), st.mm, st.pagemap)  # (pre-dump: after its copy)
    img.write_json(names.FILES, FilesImage(table.files, table.mapped))
    unames = {pid: s.injected.uname for pid, s in state.items() if s.injected is not None}
    return Inventory(format=FORMAT_NAME, version=FORMAT_VERSION, kind=kind, parent=parent,
                     root_pid=frozen.root, tasks=entries, shmem=shmem_entries,
                     created=time.time(), namespaces=namespaces.records(per_task_ns, unames))


