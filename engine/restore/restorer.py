"""Restore orchestration: image -> a live process tree with its dumped pids, memory, state.

Everything that does not need the tasks (the scratch window, files, tables) is planned
first, so a bad image fails before any process exists. Then:

1. spawn the tree (engine.restore.spawn): every task with its pid, fds, session, cwd...,
   each live one seized in its own SIGSTOP stop; zombies are zombies; then the tasks that
   share their parent's address space are cloned into it (engine.restore.vmchild);
2. per address space, one table run replaces it (engine.restore.layout); the root
   created every shared memory object and mapped it whole before it forked (spawn), so
   every task inherits the very same objects and moves its parts of them into place, with
   no /proc/PID/map_files (refused inside a user namespace);
3. pages are written per address space and per shmem object (engine.restore.pages);
4. per task, the state table (engine.restore.state_table), the last single syscalls, the
   dumped rseq bytes, registers, xstate and sigmask (the tasks sharing an address space
   before its owner, which unmaps the runner region); then every task is released
   (detached, or left in group-stop).

Any failure kills every task of the new tree by pid.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from engine.errors import EngineError, commit, termination_held
from engine.faults import fault_point
from engine.images import DumpImage, load, names, vmatable
from engine.images.fdkinds import LockRecord
from engine.images.records import (
    FileRecord,
    MmCore,
    ShmemEntry,
    TaskCore,
    TaskEntry,
    ThreadCore,
    Vma,
)
from engine.kernel import blob, pagecrc, ptrace, uapi
from engine.kernel.structs import UserRegs
from engine.proc.stat import read_stat
from engine.proc.status import read_status
from engine.restore import (
    files,
    identity,
    ipcns,
    layout,
    ns,
    pages,
    premap,
    selfread,
    spawn,
    state_table,
    taskattrs,
    vmchild,
)
from engine.restore.lazy import LazyPages

T = TypeVar("T")
_SCRATCH = 4096
_THREAD_FLAGS = (uapi.CLONE_VM | uapi.CLONE_FS | uapi.CLONE_FILES | uapi.CLONE_SIGHAND
                 | uapi.CLONE_THREAD | uapi.CLONE_SYSVSEM)


def _spawn_flags(shared: list[str]) -> int:
    """clone flags of a spawned task sharing these tables with its parent."""
    return (uapi.CLONE_FILES if "files" in shared else 0) | \
        (uapi.CLONE_FS if "fs" in shared else 0)


@dataclass
class RestoreOptions:
    """Options of `python -m engine restore`."""

    images_dir: str
    leave_stopped: bool = False
    pidfile: str | None = None
    timeout: float = 60.0  # for every single wait on a task
    lazy_pages: bool = False  # private anonymous pages served by `lazy-pages` (lazy.py)
    root: str | None = None  # the tree's own root directory (restore --root)
    trusted: bool = False  # --trust-images: accept images of another owner or mode
    allow_changed_files: bool = False  # restore even if a needed file changed since
    #: filled in: seconds spent per step (read, spawn, layout, pages, state, release)
    timings: dict[str, float] = field(default_factory=dict)
    #: filled in: private page bytes the tasks read themselves / the engine wrote
    page_bytes: dict[str, int] = field(default_factory=lambda: {"task": 0, "engine": 0})


@contextmanager
def _timed(opts: RestoreOptions, step: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        opts.timings[step] = opts.timings.get(step, 0.0) + time.monotonic() - start


def restore(opts: RestoreOptions) -> int:
    """Restore the image in opts.images_dir; returns the root pid."""
    fault_point("read")
    # Tens of thousands of VMA records and table entries are long-lived objects: the
    # cyclic GC would only rescan them over and over (it doubled maps06 restore times).
    gc.disable()
    lazy = None
    try:
        with _timed(opts, "read"):
            image = read_image(opts)
            if opts.lazy_pages:
                lazy = LazyPages.connect(image, opts.timeout)
        pid = TreeRestorer(image, opts, lazy).run()
        opts.timings["checksums"] = pagecrc.seconds()
    finally:
        gc.enable()
        if lazy is not None:
            lazy.close()
    if opts.pidfile:
        _write_pidfile(opts.pidfile, pid)
    return pid


def read_image(opts: RestoreOptions) -> DumpImage:
    """The read phase: load and validate the image, check it is one this engine restores
    and that the files it needs are the ones dumped. Creates nothing."""
    # Pages are checked where they are read (no second read of the files); lazy pages
    # by the lazy-pages daemon, before it takes any task.
    image = load(opts.images_dir, opts.trusted, verify_pages=False)
    _check_supported(image)
    identity.check_files(image, opts.allow_changed_files, opts.root)
    return image




def _check_supported(image: DumpImage) -> None:
    inv = image.inventory
    if inv.kind != "dump":
        raise EngineError("read", f"{image.path}: a {inv.kind} image holds memory only and "
                                  "cannot be restored")
    root = image.tasks[inv.root_pid]
    if root.core.state == "zombie":
        raise EngineError("read", f"{image.path}: the root task is a zombie")
    pids = {t.pid for t in inv.tasks}
    for t in inv.tasks:
        if t.pid != inv.root_pid and t.ppid not in pids:
            raise EngineError("read", f"{image.path}: task {t.pid}'s parent {t.ppid} is not "
                                      "in the image")


def _parents_first(tasks: list[TaskEntry], root: int) -> list[TaskEntry]:
    """The live tasks, root first, each after its parent (as the dump lists them)."""
    below: dict[int, list[TaskEntry]] = {}
    for t in tasks:
        if t.pid != root:
            below.setdefault(t.ppid, []).append(t)
    out = [next(t for t in tasks if t.pid == root)]
    for t in out:
        out.extend(below.pop(t.pid, []))
    lost = [t.pid for ts in below.values() for t in ts]
    if lost:
        raise EngineError("read", f"task {lost[0]} is not below the root task")
    return [t for t in out if t.state != "zombie"]


def _set_xstate(tid: int, data: bytes, where: str) -> None:
    """Load a dumped XSAVE area, which must have this CPU's layout size (the kernel
    refuses another size with a bare errno). where: the thread, for the error."""
    size = len(ptrace.get_xstate(tid))
    if len(data) != size:
        raise EngineError("regs", f"{where}: xstate of {len(data)} bytes, this CPU's xstate "
                                  f"is {size} (dumped on another CPU?)")
    try:
        ptrace.set_xstate(tid, data)
    except OSError as e:
        raise EngineError("regs", f"{where}: the kernel refuses this XSAVE area "
                                  f"({e.strerror})") from None


def _write_pidfile(path: str, pid: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{pid}\n")
    os.replace(tmp, path)


class _TaskPages(NamedTuple):
    """A task's private pages to write: (writable, forced) chunks (pages.task_chunks), and
    whether each list's pages are checked by the restore's pages.InPlaceCheck."""

    writable: list[pages.Chunk]
    forced: list[pages.Chunk]
    writable_checked: bool
    forced_checked: bool


_DRAIN_MAX = 64 + 1024  # every standard signal, and a bound on queued real-time ones
#: The tasks' signal mask while they run their layout and state tables: all blocked but
#: SIGTRAP, which each table's end raises (int3). Blocked, that forced signal would reset
#: its action to SIG_DFL, and the state table sets SIGTRAP's dumped action like any other;
#: unblocked, it stops the task for the engine (ptrace) before any handler could run.
_TABLE_MASK = uapi.ALL_SIGNALS & ~(1 << (uapi.SIGTRAP - 1))


class _Task:
    """One live task of the tree: its records, its tables and page source. A task sharing
    its parent's address space (`vm_parent`) has its parent's mm record and page source."""

    def __init__(self, image: DumpImage, entry: TaskEntry, vm_parent: _Task | None) -> None:
        ti = image.tasks[entry.pid]
        mm = ti.mm if vm_parent is None else vm_parent.mm
        assert mm is not None
        self.core: TaskCore = ti.core
        self.mm: MmCore = mm
        self.vm_parent = vm_parent
        self.vm_children: list[_Task] = []
        self.staged_at = 0  # where its parent holds its fd table (engine.restore.vmchild)
        self.shared = frozenset(entry.shared)
        self.pid = ti.core.pid
        self.thread: ThreadCore = next(t for t in ti.core.threads if t.tid == self.pid)
        # Main thread first: it creates the others.
        self.threads = [self.thread] + [t for t in ti.core.threads if t.tid != self.pid]
        self.regs = {th.tid: UserRegs.from_dict(th.regs) for th in self.threads}
        self.xstate = {th.tid: ti.xstate.get(th.tid) for th in self.threads}
        self.src: pages.PageSource | None = None
        self.real = self.pid  # the pid it got (differs only below a new user namespace)
        self.real_tid: dict[int, int] = {}  # dumped tid -> the tid it got
        self.runner: blob.BlobRunner | None = None
        self.thread_runners: dict[int, blob.BlobRunner] = {}
        self.view: state_table.CredView | None = None
        self.table1: blob.Table | None = None  # its layout table
        self.table2: blob.Table | None = None  # its state table
        self.deferred: state_table.Deferred | None = None


class TreeRestorer:
    """Restores the whole tree of an image."""

    def __init__(self, image: DumpImage, opts: RestoreOptions,
                 lazy: LazyPages | None = None) -> None:
        self.image = image
        self.opts = opts
        self.lazy = lazy
        inv = image.inventory
        self.live: list[_Task] = []
        by_pid: dict[int, _Task] = {}
        for t in _parents_first(inv.tasks, inv.root_pid):
            parent = by_pid[t.ppid] if "vm" in t.shared else None
            task = by_pid[t.pid] = _Task(image, t, parent)
            self.live.append(task)
            if parent is not None:
                parent.vm_children.append(task)
        # the tasks with an address space of their own (the others run on their parents')
        self.owners = [t for t in self.live if t.vm_parent is None]
        self.posix_locks: dict[int, list[tuple[int, LockRecord]]] = {}
        # pid -> the spare fd numbers [first, end) where it holds its children's fd tables
        self.staging: dict[int, tuple[int, int]] = {}
        # Every shared memory object is created by the root before it forks (a memfd
        # also keeps an fd in every task until the end), so all tasks share them.
        self.shmem: dict[str, ShmemEntry] = {}
        for entry in inv.shmem:
            if entry.kind not in ("anon", "memfd"):
                raise EngineError("read", f"{image.path}: {entry.kind} shared memory "
                                          f"({entry.id}) is not supported")
            self.shmem[entry.id] = entry
        self.ns = ns.plan(image, opts.root)
        self.ipc = self._ipc_plan()
        self.tree: spawn.Tree | None = None
        self.objfds: dict[str, int] = {}
        self.premap = premap.Plan()
        self.in_place = pages.InPlaceCheck()  # started with the page chunks
        self.chunks: dict[int, _TaskPages] | None = None  # by owner (_page_chunks)
        self.creator: dict[int, int] = {}  # task -> the task that forks it, if its parent
        self.mapped: list[tuple[str, int]] = []  # mapped unlinked files (spawn.TreeSetup)

    def _ipc_plan(self) -> ipcns.IpcPlan | None:
        """The objects of the tree's own ipc namespace, made by the engine while the root
        waits (ns.plan gave the root a new ipc namespace: the image says it had one)."""
        seen: dict[int, FileRecord] = {}
        for f in self.image.files.files:
            if f.mqueue is not None:
                seen.setdefault(f.inode, f)
        queues = [f.mqueue for f in seen.values() if f.mqueue is not None]
        uid_map = self.ns.uid_map if self.ns is not None else None
        gid_map = self.ns.gid_map if self.ns is not None else None
        plan = ipcns.plan(self.image, queues, uid_map, gid_map)
        if plan is not None:
            assert self.ns is not None and self.ns.clone_flags & uapi.CLONE_NEWIPC
            self.ns.prepared = True
        return plan

    def _plan_tree(self) -> tuple[spawn.TaskSetup, files.FilesPlan]:
        """What each task does in spawn (ids, fds, session...), and the files plan (which
        may hold descriptions already: closed if the planning fails)."""
        fplan = files.FilesPlan()
        try:
            return self._plan(fplan), fplan
        except BaseException:
            fplan.close()
            raise

    def _plan(self, fplan: files.FilesPlan) -> spawn.TaskSetup:
        inv = self.image.inventory
        nodes: dict[int, spawn.TaskSetup] = {}
        pids = {t.pid for t in inv.tasks}
        for t in inv.tasks:
            core = self.image.tasks[t.pid].core
            if "vm" in t.shared:
                # not spawned: cloned into its parent, which holds its fds for it (vmchild)
                fplan.add_task(self.image, core, spawned=False)
                continue
            status = None
            if t.state == "zombie":
                status = core.exit_code if core.exit_code is not None else t.exit_code
                if status is None:
                    raise EngineError("read", f"{self.image.path}: zombie {t.pid} has no "
                                              "exit status")
            fplan.add_task(self.image, core)
            pgid, sid = (ns.inner_pid(self.image, x) if x in pids else None
                         for x in (core.pgid, core.sid))
            tids, fixed = ns.clone_tids(self.image, self.ns, t.pid)
            nodes[t.pid] = spawn.TaskSetup(core.pid, pgid, sid,
                                           list(core.fds), core.cwd, core.umask, core.limits,
                                           comm=core.comm, zombie_status=status,
                                           set_tid=tids, fixed_pid=fixed,
                                           ctty=core.ctty if core.sid == core.pid else None,
                                           share_flags=_spawn_flags(t.shared),
                                           sems=self.ipc.task_sems.get(t.pid, [])
                                           if self.ipc is not None else [],
                                           cwd_file=core.cwd_file)
        self.mapped = fplan.take_mapped(self.image)
        fplan.check()
        fplan.own_ipc = self.ns is not None and bool(self.ns.clone_flags & uapi.CLONE_NEWIPC)
        for rec in fplan.files.values():
            if rec.ctty_of:
                nodes[rec.ctty_of].ctty_files.append(rec.id)
        if self.ns is not None and self.ns.new_user:
            fplan.map_owners(self.ns.inner_uid, self.ns.inner_gid)
        for t in inv.tasks:
            if t.pid != inv.root_pid and t.pid in nodes:
                nodes[t.ppid].children.append(nodes[t.pid])
        spawn.plan_sessions(nodes[inv.root_pid])
        self.posix_locks = fplan.posix_locks
        return nodes[inv.root_pid]

    def _setup(self, window: layout.Window, root: spawn.TaskSetup,
               fplan: files.FilesPlan) -> spawn.TreeSetup:
        nodes = {n.pid: n for n in root.walk()}
        memfds = [(s.id, s.name or "", s.file_size) for s in self.shmem.values()
                  if s.kind == "memfd"]
        # The memfds' agreed fd numbers: above every fd the tree or the engine has (the
        # root inherits the engine's, including the spawn pipes made next), and above the
        # spare numbers where parents hold the fd tables of children made later.
        engine_fds = [int(n) for n in os.listdir("/proc/self/fd")]
        start = max(files.floor(fplan), max(engine_fds) + 1 + spawn.PIPE_FDS)
        obj_base = start + self._stage_fd_tables(nodes, start)
        shared = [(window.shmem_tmp[s.id], s.size, s.id) for s in self.shmem.values()]
        return spawn.TreeSetup(root, fplan, window.region, self.ns, memfds, obj_base, shared,
                               premap=self.premap.tasks, premap_areas=self.premap.areas(),
                               gone_sems=self.ipc.gone_sems if self.ipc is not None else {},
                               mapped=self.mapped)

    def run(self) -> int:
        """Create, rebuild and release the tree; returns the root pid."""
        mine = layout.engine_specials()
        specials = {t.pid: layout.match_specials(t.mm, mine) for t in self.owners}
        root, fplan = self._plan_tree()
        self._plan_premaps(root)
        objs = len(self.shmem) + len(self.image.files.mapped)
        size = max(max(layout.layout_table_bytes(t.mm, objs, self._pieces(t.pid)),
                       state_table.table_bytes_bound(t.core, t.mm)) for t in self.owners)
        size = max([size] + [self._vm_setup(t).size() for t in self.live if t.vm_parent])
        # One spare page at the end for single syscalls' arguments (clone3 of threads).
        window = layout.plan_window([t.mm for t in self.owners],
                                    blob.region_size(size) + _SCRATCH,
                                    list(self.shmem.values()), specials[self.live[0].pid],
                                    self.premap.size)
        shsrc: dict[str, pages.PageSource] = {}
        try:
            sources: dict[int, pages.PageSource] = {}
            for t in self.owners:
                t.src = sources[t.pid] = pages.task_source(self.image, t.pid)
            shsrc = {sid: pages.shmem_source(self.image, sid) for sid in self.shmem}
            self._prefetch(sources, shsrc)
            premap.check_contents(self.image, self.premap, sources, self.creator)
            self.premap.place(window.premap, sources)
            setup = self._setup(window, root, fplan)
            self.objfds = setup.obj_fds()
            with _timed(self.opts, "spawn"):
                try:
                    tree = spawn.spawn(setup, self.opts.timeout,
                                       self.ipc.prepare if self.ipc is not None else None,
                                       lambda: self._layout_tables(window, specials),
                                       self._page_chunks)
                finally:
                    setup.files.close()  # the root has copied what it needed
            self.tree = tree
            try:
                for t in self.owners:
                    t.real = tree.real[t.pid]
                    t.real_tid[t.pid] = t.real
                    t.runner = blob.BlobRunner(t.real, window.base, window.region_size,
                                               self.opts.timeout)
                with _timed(self.opts, "spawn"):
                    for t in self.live:
                        if t.vm_parent is not None:
                            self._clone_vm_child(t, window)
                    self._close_staging()
                self._rebuild(window, specials, shsrc)
                if self.lazy is not None:
                    with _timed(self.opts, "lazy"):
                        self.lazy.confirm()  # (taken meanwhile, while their state was)
                with _timed(self.opts, "release"):
                    self._release()
                # The tree runs on its own: a termination signal no longer undoes it.
                commit()
            except BaseException:
                tree.kill_all()
                raise
        finally:
            self.in_place.wait()  # it reads the pages files' mappings, closed below
            for t in self.live:
                for r in [t.runner, *t.thread_runners.values()]:
                    if r is not None:
                        r.close()
            for t in self.owners:
                if t.src is not None:
                    t.src.close()
            for s in shsrc.values():
                s.close()
            if self.ipc is not None:
                self.ipc.close()
        return self.live[0].real

    def _prefetch(self, sources: dict[int, pages.PageSource],
                  shsrc: dict[str, pages.PageSource]) -> None:
        """Start reading the pages files the restore uses, while the tree is made
        (pages.prefetch_files): all of them when small, else those whose pages are mostly
        in short runs (the engine copies those from the files' mappings); a lazy
        restore's, only the pages it writes itself (the daemon reads the rest)."""
        if self.lazy is None:
            every = [*sources.values(), *shsrc.values()]
            if not pages.prefetch_files([r for s in every for r in s.readers()]):
                short = [s for s in every if selfread.mostly_short(s.pagemap)]
                pages.prefetch_files([r for s in short for r in s.readers()],
                                     pages.SHORT_PREFETCH_MAX)
            return
        pages.prefetch_files([r for s in shsrc.values() for r in s.readers()])
        for t in self.owners:
            threads = t.threads + [th for c in t.vm_children for th in c.threads]
            writable, forced = pages.task_chunks(sources[t.pid],
                                                 self.lazy.eager_vmas(t.mm, threads))
            pages.prefetch_chunks(writable + forced)

    def _plan_premaps(self, root: spawn.TaskSetup) -> None:
        """Which private VMAs are built before the fork, so that pages a child shared
        copy-on-write with its parent stay shared (engine.restore.premap). Not for lazy
        restores: their pages come from the daemon after the tree exists."""
        self.creator = {c.pid: t.pid for t in root.walk() for c in t.children
                        if not c.by_sibling and c.zombie_status is None
                        and t.zombie_status is None}
        if self.lazy is None:
            order = [t.pid for t in root.walk() if t.zombie_status is None]
            self.premap = premap.plan(self.image, order, self.creator)

    def _pieces(self, pid: int) -> int:
        tp = self.premap.tasks.get(pid)
        return tp.pieces() if tp is not None else 0

    def _stage_fd_tables(self, nodes: dict[int, spawn.TaskSetup], start: int) -> int:
        """Give each parent of a task sharing its address space but not its fd table the
        descriptions of that table, held at spare fd numbers from `start` on (the child,
        cloned from the parent later, takes them from its copy: engine.restore.vmchild);
        returns how many numbers that takes. Each child has numbers of its own: parents
        may share one fd table."""
        end = start
        for p in self.owners:
            first = end
            for c in p.vm_children:
                if "files" not in c.shared and c.core.fds:
                    c.staged_at = end
                    nodes[p.pid].staged += [(end + f.fd, f.file_id) for f in c.core.fds]
                    end += max(f.fd for f in c.core.fds) + 1
            if end > first:
                self.staging[p.pid] = (first, end)
        return end - start

    def _vm_setup(self, t: _Task) -> blob.Table:
        assert t.vm_parent is not None
        return vmchild.setup_table(t.core, t.vm_parent.core, t.shared, t.staged_at,
                                   self.posix_locks.get(t.pid, []))

    def _clone_vm_child(self, t: _Task, window: layout.Window) -> None:
        """Create task t, which shares its parent's address space, by a clone injected
        into the parent, and run its set-up table (engine.restore.vmchild)."""
        parent = t.vm_parent
        assert parent is not None and parent.runner is not None and self.tree is not None
        ptrace.set_sigmask(parent.real, uapi.ALL_SIGNALS)  # the child inherits it
        tids, _ = ns.clone_tids(self.image, self.ns, t.pid)
        scratch = window.base + window.region_size - _SCRATCH
        res, real = vmchild.inject_clone(parent.runner, scratch,
                                         vmchild.clone_flags(t.shared), tids, signal.SIGCHLD)
        if real:
            self.tree.processes.add(real)
        if res != tids[0]:
            why = os.strerror(-res) if res < 0 else f"got pid {res}"
            raise EngineError("fork", f"task {t.pid}: cannot create it in the address space "
                                      f"of its parent {parent.pid}: {why}")
        vmchild.first_stop(real, f"task {t.pid}", self.opts.timeout)
        t.real = real
        t.real_tid[t.pid] = real
        t.runner = blob.BlobRunner(real, window.base, window.region_size, self.opts.timeout)
        _run(t.runner, self._vm_setup(t), "fork")

    def _close_staging(self) -> None:
        """Every child is made: the parents close the spare copies of their fd tables."""
        for t in self.owners:
            if t.pid in self.staging:
                assert t.runner is not None
                first, end = self.staging[t.pid]
                res = t.runner.run_one(uapi.SYS_close_range, first, end - 1, 0)
                if res < 0:
                    raise EngineError("fork", f"task {t.pid}: closing the fds held for its "
                                              f"children: {os.strerror(-res)}")

    def _rebuild(self, window: layout.Window, specials: dict[int, list[layout.Special]],
                 shsrc: dict[str, pages.PageSource]) -> None:
        fault_point("mm")
        for t in self.live:
            # Nothing may be delivered while the layout is half built.
            ptrace.set_sigmask(t.real, _TABLE_MASK)
        with _timed(self.opts, "layout"):
            # the state tables (and the page chunks, unless spawn waited for the tree to
            # make itself: then they were made meanwhile) are made while the tasks build
            # their layouts
            def meanwhile() -> None:
                self._state_tables(window)
                if self.chunks is None:
                    self._page_chunks()
            _run_all(((t.runner, self._unregister_rseq(t)) for t in self.owners), "mm",
                     meanwhile)
        assert self.chunks is not None
        if self.ipc is not None:
            self.ipc.finish()  # every segment is attached where it was
        fault_point("pages")
        with _timed(self.opts, "pages"):
            for t in self.owners:
                self._write_pages(t, self.chunks[t.pid])
            for sid, s in self.shmem.items():
                # Through the root's whole mapping: every task maps the same object.
                pages.write_shmem_pages(self.live[0].real, shsrc[sid], window.shmem_tmp[sid],
                                        s.size)
            taskattrs.memfd_attrs(self.live[0].real, list(self.shmem.values()), self.objfds)
            self.in_place.result()
        if self.lazy is not None:
            with _timed(self.opts, "lazy"):
                self.lazy.hand_over([(t.pid, t.mm, _runner(t)) for t in self.owners])
        with _timed(self.opts, "state"):
            # Tasks alone in their address space run their state tables at once; the
            # others one after another (they share the runner region), the owner last:
            # it unmaps the region they use too.
            alone = [t for t in self.owners if not t.vm_children]
            _run_all(((t.runner, self._state_table(t, window)) for t in alone), "state")
            self._after_state(alone, window)
            for t in self.owners:
                if t.vm_children:
                    for c in t.vm_children:
                        self._finish(c, window)
                    self._finish(t, window)

    def _state_tables(self, window: layout.Window) -> None:
        """Each task's state table (t.table2) and the calls deferred past it, made while
        the tasks build their layouts (_rebuild)."""
        files_by_id = self.image.files.by_id()
        # Every task has the root's credentials now: the root took the ones it restores
        # with before it made any task, and only the state tables change them. One read
        # serves all.
        view = state_table.CredView(read_status(self.live[0].real), self.ns)
        for t in self.live:
            held = [(f.fd, files_by_id[f.file_id]) for f in t.core.fds]
            t.table2, t.deferred = state_table.finish_table(
                t.core, t.mm, window, list(self.shmem.values()), self.objfds, view,
                root=t is self.live[0], held=held, pid=t.real, shared=t.shared)
            if t.core.ctty and t.core.ctty_pgrp and t.core.sid == t.core.pid:
                state_table.foreground(t.table2, t.core.ctty,
                                       ns.inner_pid(self.image, t.core.ctty_pgrp))
            state_table.close_table(t.table2, t.deferred, t.core)
            t.table2.prepare(window.base)
            t.view = view

    def _layout_tables(self, window: layout.Window,
                       specials: dict[int, list[layout.Special]]) -> None:
        """The tables that build the owners' address spaces (t.table1): the tasks' rseq
        registrations, which go first, are asked of them once they are seized
        (_unregister_rseq). Tasks laid out alike (a tree forked from one parent that kept
        its layout: 50 of 50 in the procs sweep) get copies of one table made once."""
        made: dict[object, blob.Table] = {}
        for t in self.owners:
            moves = self._moves(t.pid)
            key = (_layout_key(t.mm.vmas, specials[t.pid], moves) if len(self.owners) > 1
                   else None)
            table = made.get(key)
            if table is None:
                table = layout.layout_table(t.mm, window, specials[t.pid],
                                            list(self.shmem.values()), self.objfds, moves,
                                            self.ipc.sysv_sizes if self.ipc else None)
                table.prepare(window.base)
                made[key] = table
            t.table1 = table.copy()

    def _unregister_rseq(self, t: _Task) -> blob.Table:
        """Task t's layout table, its own rseq registration unregistered first."""
        assert t.table1 is not None
        conf = ptrace.get_rseq_config(t.real)
        if conf.rseq_abi_pointer:
            layout.unregister_rseq_first(t.table1, (conf.rseq_abi_pointer,
                                                    conf.rseq_abi_size, conf.signature))
        return t.table1

    def _moves(self, pid: int) -> dict[int, list[tuple[int, int, int]]]:
        """Premapped VMA start -> its moves (from, to, size) into place."""
        tp = self.premap.tasks.get(pid)
        if tp is None:
            return {}
        slot = self.premap.slot
        return {r.vma.start: [(slot(lo), lo, hi - lo) for lo, hi in r.pieces]
                for r in tp.regions}

    def _page_chunks(self) -> None:
        """Each owner's private pages to write (self.chunks): the chunks of the VMAs whose
        pages did not go in before the fork (premap) and, lazy, of the eager ones; the
        check of those the engine will copy from the pages files' mappings is started
        (pages.InPlaceCheck)."""
        lists = {}
        for t in self.owners:
            assert t.src is not None
            threads = t.threads + [th for c in t.vm_children for th in c.threads]
            vmas = t.mm.vmas if self.lazy is None else self.lazy.eager_vmas(t.mm, threads)
            tp = self.premap.tasks.get(t.pid)
            done: frozenset[int] = frozenset()
            if tp is not None:  # their pages went in before the fork
                done = frozenset(tp.starts())
                self.opts.page_bytes["task"] += sum(c.length for c in tp.writes)
            lists[t.pid] = pages.task_chunks(t.src, vmas, done)
        checked = iter(self.in_place.start([c for pair in lists.values() for c in pair]))
        self.chunks = {pid: _TaskPages(writable, forced, next(checked), next(checked))
                       for pid, (writable, forced) in lists.items()}

    def _write_pages(self, t: _Task, p: _TaskPages) -> None:
        """The task's private pages: long runs read by the task itself (selfread), the
        rest written by the engine. (Sharing the long runs between the task and an engine
        thread measured slower: 1.0-1.4 s against 0.65-0.8 s per GiB.)"""
        assert t.runner is not None
        long_runs, rest = selfread.runs(p.writable)
        try:
            left = selfread.read_in_task(t.runner, long_runs)
        except blob.TableError as e:
            raise EngineError("pages", f"task {t.pid}: {e}") from None
        # (checked chunks all come from the page cache: none is read by the task)
        by_engine = (pages.write_chunks(t.real, rest + left, False, p.writable_checked)
                     + pages.write_chunks(t.real, p.forced, True, p.forced_checked))
        self.opts.page_bytes["engine"] += by_engine
        self.opts.page_bytes["task"] += (sum(c.length for c in p.writable) - sum(
            c.length for c in rest + left))

    def _finish(self, t: _Task, window: layout.Window) -> None:
        """Task t's threads, state table and what follows it, one after another."""
        assert t.runner is not None
        _run(t.runner, self._state_table(t, window), "state")
        self._after_state([t], window)

    def _state_table(self, t: _Task, window: layout.Window) -> blob.Table:
        """Create task t's threads and run their tables; returns its own state table."""
        assert t.table2 is not None
        # Threads first: clone3 with set_tid needs the privileges the creds may drop.
        for th in t.threads[1:]:
            self._clone_thread(t, th, window)
        # The threads' tables first: they use the same region as table2, whose data the
        # deferred calls (pending signals, timers) still read afterwards.
        for th in t.threads[1:]:
            assert t.view is not None
            _run(t.thread_runners[th.tid],
                 state_table.thread_table(t.core, th, t.view, root=t is self.live[0]), "state")
        return t.table2

    def _after_state(self, tasks: list[_Task], window: layout.Window) -> None:
        """After the tasks' state tables, each task: its OOM score, pending signals, the
        calls left for last, its rseq areas' bytes, and (an owner) the runner region
        unmapped. In order in each task; the tasks make each call at once
        (blob.run_one_each)."""
        for t in tasks:
            taskattrs.set_oom_score_adj(t.real, t.core)
        fault_point("regs")
        self._drain_pending(tasks, window)
        if any(_deferred(t).calls for t in tasks):
            for t in tasks:  # a dumped pending SIGTRAP is queued below: it waits too
                for th in t.threads:
                    ptrace.set_sigmask(t.real_tid[th.tid], uapi.ALL_SIGNALS)
        for k in range(max((len(_deferred(t).calls) for t in tasks), default=0)):
            now = [(t, _deferred(t).calls[k]) for t in tasks if k < len(_deferred(t).calls)]
            results = blob.run_one_each([
                (_runner(t), nr, tuple(_table2(t).address(a, window.base)
                                       if isinstance(a, blob.DataRef) else a for a in args))
                for t, (nr, args, _what) in now])
            for (t, (_nr, _args, what)), res in zip(now, results):
                if res < 0:
                    raise EngineError("state", f"task {t.pid}: {what}: {os.strerror(-res)}")
        for t in tasks:
            src = (t.vm_parent or t).src
            for th in t.threads:
                if th.rseq is not None and th.rseq.ptr:
                    assert src is not None
                    # Registering rseq made the kernel write the current cpu into the
                    # area; put the dumped bytes back so memory is exactly as dumped.
                    _runner(t).write(th.rseq.ptr, src.read(th.rseq.ptr, th.rseq.size))
        # (a task on its parent's address space: the region is its parent's too, which
        # unmaps it last)
        owners = [t for t in tasks if t.vm_parent is None]
        results = blob.run_one_each([(_runner(t), uapi.SYS_munmap,
                                      (window.base, window.region_size)) for t in owners])
        for t, res in zip(owners, results):
            if res < 0:
                raise EngineError("state", f"task {t.pid}: unmap restorer: "
                                           f"{os.strerror(-res)}")

    def _drain_pending(self, tasks: list[_Task], window: layout.Window) -> None:
        """Take away every signal pending for the tasks now: none of them was dumped (the
        dumped ones are queued right after), they come from the restore itself. Their
        state tables took DRAIN_ENTRIES each: only a task whose last one took a signal
        too may have more."""
        left = [t for t in tasks if _runner(t).read_slot(_deferred(t).drained[-1]) >= 0]
        if not left:
            return
        for _ in range(_DRAIN_MAX):
            calls = []
            for t in left:
                drain = _deferred(t).drain
                assert drain is not None
                sigset, zero = (_table2(t).address(r, window.base) for r in drain)
                calls.append((_runner(t), uapi.SYS_rt_sigtimedwait, (sigset, 0, zero, 8)))
            results = blob.run_one_each(calls)
            left = [t for t, res in zip(left, results) if res >= 0]  # else EAGAIN: none
            if not left:
                return
        raise EngineError("state", f"task {left[0].pid}: more than {_DRAIN_MAX} signals "
                                   "pending from the restore")

    def _clone_thread(self, t: _Task, th: ThreadCore, window: layout.Window) -> None:
        """Create thread `th` of task t by an injected clone3 with set_tid (its tid in
        every pid namespace). It is auto-attached (PTRACE_O_TRACECLONE) and stops before
        its first instruction."""
        assert t.runner is not None and self.tree is not None
        tid = th.tid
        tids = list(reversed(th.ns_tid)) if th.ns_tid else [tid]
        if self.ns is not None and (self.ns.new_pid or self.ns.new_user):
            tids = tids[:1]  # as for processes: the tids inside only
        scratch = window.base + window.region_size - _SCRATCH
        res, real = vmchild.inject_clone(t.runner, scratch, _THREAD_FLAGS, tids)
        if real:
            self.tree.threads.add(real)
        if res != tids[0]:
            why = os.strerror(-res) if res < 0 else f"got tid {res}"
            raise EngineError("fork", f"task {t.pid}: cannot create thread {tid}: {why}")
        vmchild.first_stop(real, f"thread {tid}", self.opts.timeout)
        t.real_tid[tid] = real
        t.thread_runners[tid] = blob.BlobRunner(real, window.base, window.region_size,
                                                self.opts.timeout)

    def _release(self) -> None:
        for t in self.live:
            for th in t.threads:
                real = t.real_tid[th.tid]
                ptrace.set_regs(real, t.regs[th.tid])
                xstate = t.xstate[th.tid]
                if xstate is not None:
                    _set_xstate(real, xstate, f"{self.image.dir.file(names.core(t.pid))}: "
                                              f"thread {th.tid}")
                ptrace.set_sigmask(real, th.sigmask)
        fault_point("detach")
        stop = [t for t in self.live
                if self.opts.leave_stopped or state_table.ends_stopped(t.core)]
        # Parents first, each detached as soon as it is stopped: a child's stop then
        # notifies an untraced parent, which ignores SIGCHLD as it did when dumped (a
        # traced one would get it queued even when ignored).
        for t in stop:
            self._group_stop(t)
            for th in t.threads:
                ptrace.detach(t.real_tid[th.tid], 0)
        for t in self.live:
            if t not in stop:
                for th in t.threads:
                    ptrace.detach(t.real_tid[th.tid], 0)
        for t in stop:
            _wait_state(t.real, "T", self.opts.timeout)

    def _group_stop(self, t: _Task) -> None:
        """Put task t into group-stop while we still trace it, so that it stays stopped
        when detached and takes no other signal first (a pending SIGALRM would otherwise
        be delivered before the SIGSTOP, running its handler).

        A thread dumped inside rt_sigsuspend (rewound to restart it) first goes back into
        it, so that the stop interrupts it as the dump found it (its temporary mask in
        force), not before it; not when signals are pending or timers armed: the syscall
        would take those before the stop. Other syscalls are left rewound (_REENTERED)."""
        quiet = not (t.core.shared_pending or t.core.itimers or any(th.pending for th in t.threads))
        reentered = set()
        for th in t.threads:
            real = t.real_tid[th.tid]
            if quiet and th.in_syscall and _reenters_syscall(t.real, t.regs[th.tid]):
                self._enter_syscall(real, th.sigmask)
                reentered.add(real)
            else:
                ptrace.set_sigmask(real, uapi.ALL_SIGNALS)  # only SIGSTOP can be taken
        os.kill(t.real, signal.SIGSTOP)
        for th in t.threads:
            real = t.real_tid[th.tid]
            ptrace.cont(real, 0)
            while True:
                status = ptrace.wait_stop(real, self.opts.timeout)
                event, sig = ptrace.stop_event(status), os.WSTOPSIG(status)
                if event == uapi.PTRACE_EVENT_STOP:
                    break  # in group-stop
                if event == 0 and sig == signal.SIGSTOP:
                    ptrace.cont(real, sig)  # let it take the SIGSTOP: the group stops
                    continue
                raise EngineError("detach", f"thread {real}: unexpected stop {status:#x} "
                                            "on the way to group-stop")
            if real not in reentered:
                ptrace.set_sigmask(real, th.sigmask)

    def _enter_syscall(self, tid: int, mask: int) -> None:
        """Run the thread up to the syscall-entry-stop of its restarted syscall. Signals
        are blocked on the way (a pending one would be delivered first) and the thread's
        mask is put back there, before the syscall body reads it."""
        ptrace.set_sigmask(tid, uapi.ALL_SIGNALS)
        ptrace.ptrace(uapi.PTRACE_SYSCALL, tid, 0, 0)
        status = ptrace.wait_stop(tid, self.opts.timeout)
        if os.WSTOPSIG(status) != signal.SIGTRAP | 0x80:
            raise EngineError("detach", f"thread {tid}: no syscall-entry-stop ({status:#x})")
        ptrace.set_sigmask(tid, mask)


#: Syscalls _group_stop re-enters: only those that take a pending stop before doing
#: anything. A read, poll or epoll_wait would run first when its data is there, as it may
#: be: a signal can interrupt a wait just as data arrives (the kernel then returns
#: -ERESTARTSYS with the data queued), and the re-entered read took the data while the
#: restored task was "stopped" (transition/socket_stream, one CI run in many).
_REENTERED = frozenset({uapi.SYS_rt_sigsuspend})


def _reenters_syscall(pid: int, regs: UserRegs) -> bool:
    """True when the registers restart one of _REENTERED: rip on a `syscall` instruction
    with the syscall number in rax (a thread stopped after a syscall that completed is not
    one)."""
    if regs.orig_rax not in _REENTERED or regs.rax != regs.orig_rax:
        return False
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, 2, regs.rip) == b"\x0f\x05"
    except OSError:
        return False
    finally:
        os.close(fd)


def _layout_key(vmas: Sequence[Vma], specials: list[layout.Special],
                moves: dict[int, list[tuple[int, int, int]]]) -> object:
    """What a task's layout table is made of, besides what all tasks share: its VMAs (as
    their table file's bytes), vdso/vvar and premapped moves."""
    return (vmatable.encode(vmas), tuple(specials),
            tuple((start, tuple(pieces)) for start, pieces in sorted(moves.items())))


def _runner(t: _Task) -> blob.BlobRunner:
    assert t.runner is not None
    return t.runner


def _table2(t: _Task) -> blob.Table:
    assert t.table2 is not None
    return t.table2


def _deferred(t: _Task) -> state_table.Deferred:
    assert t.deferred is not None
    return t.deferred


def _run(runner: blob.BlobRunner, table: blob.Table, phase: str) -> None:
    try:
        runner.run(table)
    except blob.TableError as e:
        raise EngineError(phase, f"task {runner.pid}: {e}") from None


def _run_all(runs: Iterable[tuple[blob.BlobRunner | None, blob.Table]], phase: str,
             meanwhile: Callable[[], T] | None = None) -> T | None:
    """Run each table in its task, the tasks all at once: each is started as soon as it is
    made (the engine makes the next one while the tasks run theirs), then each is waited
    for; `meanwhile` (its result returned) runs in the engine before that wait. The first
    failure is raised once every started task has stopped again."""
    started: list[blob.BlobRunner] = []
    first: BaseException | None = None
    result = None
    with termination_held():
        try:
            for runner, table in runs:
                assert runner is not None
                if runner.start(table):
                    started.append(runner)
            if meanwhile is not None:
                result = meanwhile()
        except BaseException as e:  # noqa: BLE001 - raised below, once all are back
            first = e
        for runner in started:
            try:
                runner.finish()
            except blob.TableError as e:
                first = first or EngineError(phase, f"task {runner.pid}: {e}")
            except BaseException as e:  # noqa: BLE001 - as above
                first = first or e
    if first is not None:
        raise first
    return result


def _wait_state(pid: int, state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while read_stat(pid).state != state:
        if time.monotonic() > deadline:
            raise EngineError("detach", f"task {pid} did not reach state {state}")
        time.sleep(0.001)
