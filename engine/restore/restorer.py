"""Restore orchestration: image -> a live process tree with its dumped pids, memory, state.

Everything that does not need the tasks (the scratch window, files, tables) is planned
first, so a bad image fails before any process exists. Then:

1. spawn the tree (engine.restore.spawn): every task with its pid, fds, session, cwd...,
   each live one seized in its own SIGSTOP stop; zombies are zombies;
2. per task, one table run replaces its address space (engine.restore.layout); a shmem
   object is created by the first task mapping it and opened by the others through
   /proc/OWNER/map_files, so all of them share it;
3. pages are written per task and per shmem object (engine.restore.pages);
4. per task, the finishing table (engine.restore.finish), the last single syscalls, the
   dumped rseq bytes, registers, xstate and sigmask; then every task is released (detached,
   or left in group-stop).

Any failure kills every task of the new tree by pid.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from engine.errors import EngineError, commit
from engine.faults import fault_point
from engine.images import DumpImage, TaskImage, load
from engine.images.records import MmCore, ShmemEntry, TaskCore, ThreadCore, Vma
from engine.kernel import blob, pagecrc, ptrace, uapi
from engine.kernel.structs import CloneArgs, UserRegs
from engine.proc.stat import read_stat
from engine.proc.status import read_status
from engine.restore import (
    files,
    finish,
    identity,
    layout,
    ns,
    pages,
    selfread,
    spawn,
    taskattrs,
)
from engine.restore.lazy import LazyPages

_ALL_SIGNALS = (1 << 64) - 1
_SCRATCH = 4096
_SPAWN_FDS = 4  # the two pipes spawn() opens before forking the root
_THREAD_FLAGS = (uapi.CLONE_VM | uapi.CLONE_FS | uapi.CLONE_FILES | uapi.CLONE_SIGHAND
                 | uapi.CLONE_THREAD | uapi.CLONE_SYSVSEM)


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
    # Pages are checked where they are read (no second read of the files), except for
    # lazy pages: a page found damaged after the task runs could not be refused.
    image = load(opts.images_dir, opts.trusted, verify_pages=opts.lazy_pages)
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


def _set_xstate(tid: int, data: bytes, path: str) -> None:
    """Load a dumped XSAVE area, which must have this CPU's layout size (the kernel
    refuses another size with a bare errno)."""
    size = len(ptrace.get_xstate(tid))
    if len(data) != size:
        raise EngineError("regs", f"{path}: holds {len(data)} bytes, this CPU's xstate is "
                                  f"{size} (dumped on another CPU?)")
    try:
        ptrace.set_xstate(tid, data)
    except OSError as e:
        raise EngineError("regs", f"{path}: the kernel refuses this XSAVE area "
                                  f"({e.strerror})") from None


def _write_pidfile(path: str, pid: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{pid}\n")
    os.replace(tmp, path)


_DRAIN_MAX = 64 + 1024  # every standard signal, and a bound on queued real-time ones


class _Task:
    """One live task of the tree: its records, its tables and page source."""

    def __init__(self, image: DumpImage, ti: TaskImage) -> None:
        assert ti.mm is not None
        self.core: TaskCore = ti.core
        self.mm: MmCore = ti.mm
        self.pid = ti.core.pid
        self.thread: ThreadCore = next(t for t in ti.core.threads if t.tid == self.pid)
        # Main thread first: it creates the others.
        self.threads = [self.thread] + [t for t in ti.core.threads if t.tid != self.pid]
        self.regs = {th.tid: UserRegs.from_dict(th.regs) for th in self.threads}
        self.xstate = {th.tid: image.dir.read_bytes(th.xstate) if th.xstate else None
                       for th in self.threads}
        self.src: pages.PageSource | None = None
        self.real = self.pid  # the pid it got (differs only below a new user namespace)
        self.real_tid: dict[int, int] = {}  # dumped tid -> the tid it got
        self.runner: blob.BlobRunner | None = None
        self.thread_runners: dict[int, blob.BlobRunner] = {}
        self.view: finish.CredView | None = None
        self.table2: blob.Table | None = None
        self.deferred: finish.Deferred | None = None


class TreeRestorer:
    """Restores the whole tree of an image."""

    def __init__(self, image: DumpImage, opts: RestoreOptions,
                 lazy: LazyPages | None = None) -> None:
        self.image = image
        self.opts = opts
        self.lazy = lazy
        inv = image.inventory
        self.live = [_Task(image, image.tasks[t.pid]) for t in inv.tasks
                     if t.state != "zombie"]
        # Every shared memory object is created by the root before it forks (a memfd
        # also keeps an fd in every task until the end), so all tasks share them.
        self.shmem: dict[str, ShmemEntry] = {}
        for entry in inv.shmem:
            if entry.kind not in ("anon", "memfd"):
                raise EngineError("read", f"{image.path}: {entry.kind} shared memory "
                                          f"({entry.id}) is not supported")
            self.shmem[entry.id] = entry
        self.ns = ns.plan(image, opts.root)
        self.tree: spawn.Tree | None = None
        self.objfds: dict[str, int] = {}

    def _setup(self, window: layout.Window) -> spawn.TreeSetup:
        fplan = files.FilesPlan()
        try:
            return self._plan(window, fplan)
        except BaseException:
            fplan.close()
            raise

    def _plan(self, window: layout.Window, fplan: files.FilesPlan) -> spawn.TreeSetup:
        inv = self.image.inventory
        nodes: dict[int, spawn.TaskSetup] = {}
        pids = {t.pid for t in inv.tasks}
        for t in inv.tasks:
            core = self.image.tasks[t.pid].core
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
                                           cwd_file=core.cwd_file)
        mapped = fplan.take_mapped(self.image)
        fplan.check()
        for rec in fplan.files.values():
            if rec.ctty_of:
                nodes[rec.ctty_of].ctty_files.append(rec.id)
        if self.ns is not None and self.ns.new_user:
            fplan.map_owners(self.ns.inner_uid, self.ns.inner_gid)
        for t in inv.tasks:
            if t.pid != inv.root_pid:
                nodes[t.ppid].children.append(nodes[t.pid])
        spawn.plan_sessions(nodes[inv.root_pid])
        memfds = [(s.id, s.name or "", s.file_size) for s in self.shmem.values()
                  if s.kind == "memfd"]
        # The memfds' agreed fd numbers: above every fd the tree or the engine has (the
        # root inherits the engine's, including the spawn pipes made next).
        engine_fds = [int(n) for n in os.listdir("/proc/self/fd")]
        obj_base = max(files.floor(fplan), max(engine_fds) + 1 + _SPAWN_FDS)
        shared = [(window.shmem_tmp[s.id], s.size, s.id) for s in self.shmem.values()]
        return spawn.TreeSetup(nodes[inv.root_pid], fplan, window.region, self.ns,
                               memfds, obj_base, shared, mapped)

    def run(self) -> int:
        """Create, rebuild and release the tree; returns the root pid."""
        mine = layout.engine_specials()
        specials = {t.pid: layout.match_specials(t.mm, mine) for t in self.live}
        objs = len(self.shmem) + len(self.image.files.mapped)
        size = max(max(layout.layout_table_bytes(t.mm, objs),
                       finish.table_bytes_bound(t.core, t.mm)) for t in self.live)
        # One spare page at the end for single syscalls' arguments (clone3 of threads).
        window = layout.plan_window([t.mm for t in self.live],
                                    blob.region_size(size) + _SCRATCH,
                                    list(self.shmem.values()), specials[self.live[0].pid])
        shsrc: dict[str, pages.PageSource] = {}
        try:
            for t in self.live:
                t.src = pages.task_source(self.image, t.pid)
            shsrc = {sid: pages.shmem_source(self.image, sid) for sid in self.shmem}
            setup = self._setup(window)
            self.objfds = setup.obj_fds()
            with _timed(self.opts, "spawn"):
                try:
                    tree = spawn.spawn(setup, self.opts.timeout)
                finally:
                    setup.files.close()  # the root has copied what it needed
            self.tree = tree
            files_by_id = self.image.files.by_id()
            try:
                for t in self.live:
                    t.real = tree.real[t.pid]
                    t.real_tid[t.pid] = t.real
                    view = finish.CredView(read_status(t.real), self.ns)
                    held = [(f.fd, files_by_id[f.file_id]) for f in t.core.fds]
                    t.table2, t.deferred = finish.finish_table(
                        t.core, t.mm, window, list(self.shmem.values()), self.objfds, view,
                        root=t is self.live[0], held=held, pid=t.real)
                    if t.core.ctty and t.core.ctty_pgrp and t.core.sid == t.core.pid:
                        finish.foreground(t.table2, t.core.ctty,
                                          ns.inner_pid(self.image, t.core.ctty_pgrp))
                    t.view = view
                self._rebuild(window, specials, shsrc)
                with _timed(self.opts, "release"):
                    self._release()
                # The tree runs on its own: a termination signal no longer undoes it.
                commit()
            except BaseException:
                tree.kill_all()
                raise
        finally:
            for t in self.live:
                for r in [t.runner, *t.thread_runners.values()]:
                    if r is not None:
                        r.close()
                if t.src is not None:
                    t.src.close()
            for s in shsrc.values():
                s.close()
        return self.live[0].real

    def _rebuild(self, window: layout.Window, specials: dict[int, list[layout.Special]],
                 shsrc: dict[str, pages.PageSource]) -> None:
        fault_point("mm")
        for t in self.live:
            # Nothing may be delivered while the layout is half built.
            ptrace.set_sigmask(t.real, _ALL_SIGNALS)
            conf = ptrace.get_rseq_config(t.real)
            rseq = (conf.rseq_abi_pointer, conf.rseq_abi_size, conf.signature) \
                if conf.rseq_abi_pointer else None
            t.runner = blob.BlobRunner(t.real, window.base, window.region_size,
                                       self.opts.timeout)
            with _timed(self.opts, "layout"):
                table1 = layout.layout_table(t.mm, window, specials[t.pid], rseq,
                                             list(self.shmem.values()), self.objfds)
                _run(t.runner, table1, "mm")
        fault_point("pages")
        with _timed(self.opts, "pages"):
            for t in self.live:
                assert t.src is not None
                vmas = t.mm.vmas if self.lazy is None else self.lazy.eager_vmas(t.mm,
                                                                                 t.threads)
                self._write_pages(t, vmas)
            for sid, s in self.shmem.items():
                # Through the root's whole mapping: every task maps the same object.
                pages.write_shmem_pages(self.live[0].real, shsrc[sid], window.shmem_tmp[sid],
                                        s.size)
            taskattrs.memfd_attrs(self.live[0].real, list(self.shmem.values()), self.objfds)
        if self.lazy is not None:
            with _timed(self.opts, "lazy"):
                self.lazy.hand_over([(t.pid, t.real, t.mm) for t in self.live])
        with _timed(self.opts, "state"):
            for t in self.live:
                self._finish(t, window)

    def _write_pages(self, t: _Task, vmas: list[Vma]) -> None:
        """The task's private pages: long runs read by the task itself (selfread), the
        rest written by the engine. (Sharing the long runs between the task and an engine
        thread measured slower: 1.0-1.4 s against 0.65-0.8 s per GiB.)"""
        assert t.src is not None and t.runner is not None
        writable, forced = pages.task_chunks(t.src, vmas)
        long_runs, rest = selfread.runs(writable)
        try:
            left = selfread.read_in_task(t.runner, long_runs)
        except blob.TableError as e:
            raise EngineError("pages", f"task {t.pid}: {e}") from None
        by_engine = (pages.write_chunks(t.real, rest + left, False)
                     + pages.write_chunks(t.real, forced, True))
        self.opts.page_bytes["engine"] += by_engine
        self.opts.page_bytes["task"] += (sum(c.length for c in writable) - sum(
            c.length for c in rest + left))

    def _finish(self, t: _Task, window: layout.Window) -> None:
        assert t.runner is not None and t.table2 is not None and t.deferred is not None
        # Threads first: clone3 with set_tid needs the privileges the creds may drop.
        for th in t.threads[1:]:
            self._clone_thread(t, th, window)
        # The threads' tables first: they use the same region as table2, whose data the
        # deferred calls (SIGTRAP's sigaction) still read afterwards.
        for th in t.threads[1:]:
            assert t.view is not None
            _run(t.thread_runners[th.tid],
                 finish.thread_table(t.core, th, t.view, root=t is self.live[0]), "state")
        _run(t.runner, t.table2, "state")
        taskattrs.set_oom_score_adj(t.real, t.core)
        fault_point("regs")
        self._drain_pending(t, window)
        for nr, args, what in t.deferred.calls:
            real = [t.table2.address(a, window.base) if isinstance(a, blob.DataRef) else a
                    for a in args]
            res = t.runner.run_one(nr, *real)
            if res < 0:
                raise EngineError("state", f"task {t.pid}: {what}: {os.strerror(-res)}")
        for th in t.threads:
            if th.rseq is not None and th.rseq.ptr:
                assert t.src is not None
                # Registering rseq made the kernel write the current cpu into the area;
                # put the dumped bytes back so memory is exactly as dumped.
                t.runner.write(th.rseq.ptr, t.src.read(th.rseq.ptr, th.rseq.size))
        res = t.runner.run_one(uapi.SYS_munmap, window.base, window.region_size)
        if res < 0:
            raise EngineError("state", f"task {t.pid}: unmap restorer: {os.strerror(-res)}")

    def _drain_pending(self, t: _Task, window: layout.Window) -> None:
        """Take away every signal pending for the task now: none of them was dumped (the
        dumped ones are queued right after), they come from the restore itself."""
        assert t.runner is not None and t.table2 is not None and t.deferred is not None
        assert t.deferred.drain is not None
        sigset, zero = (t.table2.address(r, window.base) for r in t.deferred.drain)
        for _ in range(_DRAIN_MAX):
            if t.runner.run_one(uapi.SYS_rt_sigtimedwait, sigset, 0, zero, 8) < 0:
                return  # EAGAIN: nothing left
        raise EngineError("state", f"task {t.pid}: more than {_DRAIN_MAX} signals pending "
                                   "from the restore")

    def _clone_thread(self, t: _Task, th: ThreadCore, window: layout.Window) -> None:
        """Create thread `th` of task t by an injected clone3 with set_tid (its tid in
        every pid namespace). It is auto-attached (PTRACE_O_TRACECLONE) and stops before
        its first instruction."""
        assert t.runner is not None and self.tree is not None
        tid = th.tid
        tids = list(reversed(th.ns_tid)) if th.ns_tid else [tid]
        if self.ns is not None and self.ns.new_user:
            tids = tids[:1]  # as for processes: only the engine may choose outer ids
        scratch = window.base + window.region_size - _SCRATCH
        args = CloneArgs()
        args.flags = _THREAD_FLAGS
        args.set_tid = scratch + ctypes.sizeof(CloneArgs)
        args.set_tid_size = len(tids)
        t.runner.write(scratch, bytes(args) + struct.pack(f"<{len(tids)}i", *tids))
        ptrace.set_options(t.real, spawn.SEIZE_OPTIONS | uapi.PTRACE_O_TRACECLONE)
        res = t.runner.run_one(uapi.SYS_clone3, scratch, ctypes.sizeof(CloneArgs))
        ptrace.set_options(t.real, spawn.SEIZE_OPTIONS)
        real = t.runner.last_event_msg
        if res > 0:
            self.tree.threads.add(real)
        if res != tids[0]:
            why = os.strerror(-res) if res < 0 else f"got tid {res}"
            raise EngineError("fork", f"task {t.pid}: cannot create thread {tid}: {why}")
        status = ptrace.wait_stop(real, self.opts.timeout)
        if ptrace.stop_event(status) != uapi.PTRACE_EVENT_STOP:
            raise EngineError("fork", f"thread {tid} stopped unexpectedly ({status:#x})")
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
                    _set_xstate(real, xstate, self.image.dir.file(th.xstate or ""))
                ptrace.set_sigmask(real, th.sigmask)
        fault_point("detach")
        stop = [t for t in self.live if self.opts.leave_stopped or finish.ends_stopped(t.core)]
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

        A thread dumped inside a syscall (rewound to restart it) first goes back into it,
        so that the stop interrupts the syscall as the dump found it (sigsuspend's
        temporary mask in force...), not before it; not when signals are pending or timers
        armed: the syscall would take those before the stop."""
        quiet = not (t.core.shared_pending or t.core.itimers or any(th.pending for th in t.threads))
        reentered = set()
        for th in t.threads:
            real = t.real_tid[th.tid]
            if quiet and th.in_syscall and _restarts_syscall(t.real, t.regs[th.tid]):
                self._enter_syscall(real, th.sigmask)
                reentered.add(real)
            else:
                ptrace.set_sigmask(real, _ALL_SIGNALS)  # only SIGSTOP can be taken
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
        ptrace.set_sigmask(tid, _ALL_SIGNALS)
        ptrace.ptrace(uapi.PTRACE_SYSCALL, tid, 0, 0)
        status = ptrace.wait_stop(tid, self.opts.timeout)
        if os.WSTOPSIG(status) != signal.SIGTRAP | 0x80:
            raise EngineError("detach", f"thread {tid}: no syscall-entry-stop ({status:#x})")
        ptrace.set_sigmask(tid, mask)


def _restarts_syscall(pid: int, regs: UserRegs) -> bool:
    """True when the registers restart a syscall: rip on a `syscall` instruction with the
    syscall number in rax (a thread stopped after a syscall that completed is not one)."""
    if regs.signed("orig_rax") < 0 or regs.rax not in (regs.orig_rax, uapi.SYS_restart_syscall):
        return False
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, 2, regs.rip) == b"\x0f\x05"
    except OSError:
        return False
    finally:
        os.close(fd)


def _run(runner: blob.BlobRunner, table: blob.Table, phase: str) -> None:
    try:
        runner.run(table)
    except blob.TableError as e:
        raise EngineError(phase, f"task {runner.pid}: {e}") from None


def _wait_state(pid: int, state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while read_stat(pid).state != state:
        if time.monotonic() > deadline:
            raise EngineError("detach", f"task {pid} did not reach state {state}")
        time.sleep(0.001)
