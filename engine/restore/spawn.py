"""Create the process tree with the dumped pids; do in the children what is easiest there.

The engine clone3()s the root with set_tid; it continues as a copy of the engine (still
Python) and, like every task after it:

1. becomes a session / process group leader again, or joins its dumped group,
2. (root only) opens every open file description of the tree (engine.restore.files), so
   that each task inherits them and shared descriptions stay shared,
3. builds the private memory it shares copy-on-write with its children or its parent
   (engine.restore.premap), then forks its children with their pids (group leaders
   first), which do the same; a child dumped sharing its fd table or fs info with it is
   cloned with CLONE_FILES / CLONE_FS,
4. zombies exit right there with their dumped status,
5. puts its fds in place and closes the rest, maps the table runner region at the address
   the engine chose, sets cwd, umask and resource limits (its own: no CAP_SYS_RESOURCE),
6. waits for the engine's go (every live task has been seized by then) and raises SIGSTOP.

Tasks sharing one fd table place its fds once: its first holder does, after every other
holder has forked its children (they need the open file descriptions the placing closes),
and it closes the control pipes after every holder has read its go (`files.FdTableSync`).
Tasks sharing their parent's address space are not spawned: engine/restore/vmchild.py.

Being traced, SIGSTOP gives a signal-delivery-stop, not a group-stop: the engine takes over
there and never lets the signal through. A task that fails writes "pid\\0phase\\0message"
to the shared error pipe and exits; the engine then kills the whole new tree by pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import resource
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from engine import fdbudget
from engine.errors import EngineError
from engine.faults import fault_point
from engine.images.records import FdEntry, RlimitRecord
from engine.kernel import ipc, ptrace, uapi
from engine.kernel import sys as ksys
from engine.kernel.structs import CloneArgs
from engine.proc import tasks
from engine.proc.stat import read_stat
from engine.proc.status import read_status
from engine.restore import files, forktable, ns, premap
from engine.restore.ns import NsSetup

_REGION_PROT = uapi.PROT_READ | uapi.PROT_WRITE | uapi.PROT_EXEC
_REGION_FLAGS = uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS | uapi.MAP_FIXED_NOREPLACE
SEIZE_OPTIONS = uapi.PTRACE_O_EXITKILL | uapi.PTRACE_O_TRACESYSGOOD
_MAX_ERR = 4000  # below PIPE_BUF: one report is one atomic write on the shared pipe
#: the fds of the pipes spawn() opens before it forks the root (error, go, ready)
PIPE_FDS = 6
_ERROR_POLL_S = 0.05  # how often a wait for a task's stop looks for reported errors


@dataclass
class TaskSetup:
    """What one task does before it stops (or, for a zombie, before it exits)."""

    pid: int  # as the engine sees it
    pgid: int | None  # in the task's own pid namespace; None: led from outside the tree
    sid: int | None
    fds: list[FdEntry]
    cwd: str
    umask: int
    limits: list[RlimitRecord]
    comm: str = ""
    set_tid: list[int] = field(default_factory=list)  # pids innermost ns first ([] = [pid])
    fixed_pid: bool = True  # set_tid reaches the engine's pid ns (the real pid is `pid`)
    zombie_status: int | None = None  # wait status of a dumped zombie
    share_flags: int = 0  # CLONE_FILES / CLONE_FS: tables it shares with its parent
    # (fd number, file id): descriptions held at spare numbers (between the tree's fds and
    # obj_base, free in every task) for the children cloned into its address space later
    # with fd tables of their own (engine/restore/vmchild.py)
    staged: list[tuple[int, int]] = field(default_factory=list)
    ctty: str | None = None  # a session leader's controlling terminal, taken after setsid
    cwd_file: int | None = None  # a removed cwd: the file id of its description (fchdir)
    # /dev/tty descriptions (file ids) this session leader opens once it has its terminal
    ctty_files: list[int] = field(default_factory=list)
    children: list[TaskSetup] = field(default_factory=list)
    # siblings in this task's session that its parent cannot create (not in the parent's
    # session, not leading their own): this task creates them with CLONE_PARENT
    adopted: list[TaskSetup] = field(default_factory=list)
    by_sibling: bool = False  # created by a sibling (see adopted)
    # SysV semaphores this task changed last: (set id, number, value), set by the task
    # itself so that it is their last pid again
    sems: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def inner_pid(self) -> int:
        """The task's pid in its own pid namespace."""
        return self.set_tid[0] if self.set_tid else self.pid

    def fd_table_sharers(self) -> list[TaskSetup]:
        """The tasks below this one that share its fd table."""
        out = []
        for c in self.children:
            if c.share_flags & uapi.CLONE_FILES:
                out += [c, *c.fd_table_sharers()]
        return out

    def made_first(self) -> list[TaskSetup]:
        """The children this task creates itself (not those a sibling creates), group
        leaders first: a child joining a sibling's group needs the leader to exist."""
        leaders = {c.pgid for c in self.children}
        mine = [c for c in self.children if not c.by_sibling]
        return sorted(mine, key=lambda c: (c.inner_pid not in leaders, c.pid))

    def walk(self) -> list[TaskSetup]:
        """This task and all its descendants, parents before children."""
        out = [self]
        for c in self.children:
            out.extend(c.walk())
        return out


@dataclass
class TreeSetup:
    """The whole tree: its tasks, its files and the runner region's address."""

    root: TaskSetup
    files: files.FilesPlan
    region: tuple[int, int]
    ns: NsSetup | None = None
    # memfd objects (shmem id, name, size) the root creates at fds obj_base, obj_base+1...
    memfds: list[tuple[str, str, int]] = field(default_factory=list)
    obj_base: int = 0
    # every shared memory object (address, size, shmem id): the root maps each whole
    # there before forking, so every task inherits the same objects
    shmem: list[tuple[int, int, str]] = field(default_factory=list)
    # private memory each task builds before it forks (engine.restore.premap), and the
    # slot area all of it lives in
    premap: dict[int, premap.TaskPremap] = field(default_factory=dict)
    premap_areas: list[tuple[int, int]] = field(default_factory=list)
    # SysV semaphores last changed by a process gone since: its pid in the tree's pid
    # namespace -> (set id, number, value); the root makes such a process for each
    gone_sems: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)
    # unlinked files some task maps (deleted_key, file id): the root holds a description
    # of each at the fds after the memfds', until the tasks' finish tables
    mapped: list[tuple[str, int]] = field(default_factory=list)

    @property
    def low(self) -> int:
        """The lowest fd number of the descriptions and pipes the root opens for the tree
        (above every fd number a task has and the root's objects)."""
        return self.obj_base + self.objs

    @property
    def inner_pids(self) -> dict[int, int]:
        """Every task's pid as the engine sees it -> its pid in its own pid namespace."""
        return {t.pid: t.inner_pid for t in self.root.walk()}

    def memfd_fds(self) -> dict[str, int]:
        """shmem id -> the fd number of its memfd in every task until the finish table."""
        return {sid: self.obj_base + i for i, (sid, _, _) in enumerate(self.memfds)}

    def obj_fds(self) -> dict[str, int]:
        """memfd_fds(), and deleted_key -> the fd number of a mapped unlinked file."""
        base = self.obj_base + len(self.memfds)
        return self.memfd_fds() | {key: base + j for j, (key, _) in enumerate(self.mapped)}

    @property
    def objs(self) -> int:
        """How many fds from obj_base on are the root's objects (memfds, mapped files)."""
        return len(self.memfds) + len(self.mapped)



def _set_limits(limits: list[RlimitRecord]) -> None:
    for lim in limits:
        soft = resource.RLIM_INFINITY if lim.soft == uapi.RLIM_INFINITY else lim.soft
        hard = resource.RLIM_INFINITY if lim.hard == uapi.RLIM_INFINITY else lim.hard
        try:
            resource.setrlimit(lim.resource, (soft, hard))
        except (OSError, ValueError) as e:
            raise EngineError("files", f"cannot set limit {lim.name} to ({lim.soft}, "
                                       f"{lim.hard}): {e}") from None


def _set_session(t: TaskSetup) -> None:
    """A session or group leader becomes one again; otherwise the task joins the dumped
    group, which must already exist in its (inherited) session. A session or group led
    from outside the tree (the root of a tree started by a shell or an init) is left as
    inherited from the engine, like CRIU's --shell-job. Ids are compared in the task's own
    pid namespace, the only view getsid()/getpgid() give."""
    me = t.inner_pid
    try:
        if t.sid == me:
            os.setsid()
            if t.ctty is not None:
                _take_ctty(t.ctty)
        elif t.sid is not None and os.getsid(0) != t.sid:
            raise EngineError("fork", f"task {t.pid}: session {t.sid} is not its parent's "
                                      "and the task does not lead it")
        if t.pgid is not None and t.pgid != os.getpgid(0):
            os.setpgid(0, 0 if t.pgid == me else t.pgid)
    except OSError as e:
        raise EngineError("fork", f"task {t.pid}: cannot restore session {t.sid} / "
                                  f"process group {t.pgid}: {e.strerror}") from None


def _take_ctty(path: str) -> None:
    """Make `path` the new session's controlling terminal, before any child is forked (a
    child gets its controlling terminal from its parent at fork)."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.ioctl(fd, uapi.TIOCSCTTY, 0)
    finally:
        os.close(fd)


def _clone_with_pid(t: TaskSetup, flags: int = 0, single: bool = False) -> int:
    """clone3 (fork-like, plus namespace `flags`) with the task's pids; 0 in the child.
    `single`: this process has no other thread (see _clone3)."""
    return _clone3(t.set_tid or [t.pid], flags, t.pid, single)


def _clone3(pids: list[int], flags: int, name: int, single: bool = False) -> int:
    """clone3 with these pids (innermost first); `name`: the pid errors give.

    The child tells the interpreter it is one (PyOS_AfterFork_Child: locks and thread
    states of threads it does not have) unless the caller is `single`: a process with
    no other thread (a task of the new tree, the engine without worker threads) leaves
    nothing to fix up, and the fix-up cost each task 0.6 ms and 250 page faults."""
    tid = (ctypes.c_int * len(pids))(*pids)
    args = CloneArgs()
    args.flags = flags
    # With CLONE_PARENT clone3 takes no exit signal: the child gets the creator's.
    args.exit_signal = 0 if flags & uapi.CLONE_PARENT else signal.SIGCHLD
    args.set_tid = ctypes.addressof(tid)
    args.set_tid_size = len(pids)
    deadline = time.monotonic() + forktable.PID_FREE_TIMEOUT
    while True:
        try:
            child = ksys.clone3(args)
            break
        except OSError as e:
            # A thread that just ended (the file owner's, engine.restore.fsowner) keeps its
            # tid in the tree's pid namespace a little after join() returned.
            if e.errno == errno.EEXIST and time.monotonic() < deadline:
                time.sleep(0.001)
                continue
            if e.errno == errno.EEXIST:
                raise EngineError("fork", f"pid {name} is taken") from None
            raise EngineError("fork", f"clone3 with pid {name} {pids}: {e.strerror}") from None
    if child == 0 and not single:
        ksys.after_fork_child()
    return child


def _set_sems(sems: list[tuple[int, int, int]]) -> None:
    """SETVAL each semaphore: its value, and this process as its last pid."""
    for semid, num, value in sems:
        try:
            ipc.sem_setval(semid, num, value)
        except OSError as e:
            raise EngineError("fork", f"semaphore set {semid} #{num}: {e.strerror}") \
                from None


def _gone_sem_setters(gone: dict[int, list[tuple[int, int, int]]]) -> None:
    """In the root, before any task of the tree: for each pid that changed semaphores
    last and is gone, a process with that pid sets them and exits (reaped at once, so the
    pid is free again)."""
    for pid, sems in sorted(gone.items()):
        child = _clone3([pid], 0, pid)
        if child == 0:
            try:
                _set_sems(sems)
            except BaseException:  # noqa: BLE001 - the status says it
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(child, 0)
        if status:
            raise EngineError("fork", f"the process setting the semaphores last changed by "
                                      f"pid {pid} failed (status {status:#x})")


def plan_sessions(root: TaskSetup) -> None:
    """Give each child in a session its parent is not in (and does not lead) to a sibling
    in that session, which creates it with CLONE_PARENT (the parent stays the same, the
    session is inherited). A child no sibling can create is refused with its ids."""
    for t in root.walk():
        for c in t.children:
            if c.sid is None or c.sid in (c.inner_pid, t.sid):
                continue
            maker = next((s for s in t.children if s is not c and s.sid == c.sid
                          and s.zombie_status is None and not s.by_sibling), None)
            if c.share_flags:
                raise EngineError("fork", f"task {c.pid}: shares tables with its parent but "
                                          f"is in session {c.sid}, not its parent's")
            if maker is None:
                raise EngineError("fork", f"task {c.pid}: session {c.sid} is not its "
                                          "parent's, the task does not lead it and no "
                                          "sibling is in it")
            maker.adopted.append(c)
            c.by_sibling = True


def _make_group(c: TaskSetup, pid: int) -> None:
    """The parent makes a group-leading child's group at once (as a shell does for a
    job), so a sibling forked next can join it: the child's own setpgid may come later.
    Not for a session leader: setsid() refuses a process that already leads a group."""
    if c.pgid == c.inner_pid and c.sid != c.inner_pid:
        try:
            os.setpgid(pid, pid)
        except OSError as e:
            raise EngineError("fork", f"task {c.pid}: cannot make its process group: "
                                      f"{e.strerror}") from None


def _exit_as(status: int) -> None:
    """End this process so that its parent's wait() sees `status`."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    os._exit(os.WEXITSTATUS(status))


def _task(tree: TreeSetup, t: TaskSetup, ctl: list[int], by_file: dict[int, int],
          sync: files.FdTableSync | None = None) -> None:
    """Runs in the new task; never returns. `sync`: given to a task that shares its fd
    table with its parent (see files.FdTableSync)."""
    go_r, err_w, ready_w = ctl[:3]  # then the objects' fds, kept for the engine's tables
    first = sync is None  # the first holder of its fd table
    try:
        _set_session(t)
        _set_sems(t.sems)
        if t.ctty_files:
            files.open_ctty(tree.files, t.ctty_files, by_file, tree.low)
        if tree.premap_areas:
            # before the children are forked: they inherit it copy-on-write
            premap.build(tree.premap.get(t.pid), tree.premap_areas, tree.obj_fds())
        group = [t, *t.fd_table_sharers()] if first else []  # who _place is for
        if len(group) > 1:
            sync = files.FdTableSync(len(group) - 1, tree.low)
        for c in t.made_first():
            child = _clone_with_pid(c, c.share_flags, single=True)
            if child == 0:
                _task(tree, c, ctl, by_file,
                      sync if c.share_flags & uapi.CLONE_FILES else None)
            _make_group(c, child)
        for c in t.adopted:
            if _clone_with_pid(c, uapi.CLONE_PARENT, single=True) == 0:
                _task(tree, c, ctl, by_file)
        # comm first: a zombie shows it too.
        name = ctypes.create_string_buffer(os.fsencode(t.comm)[:15])
        ksys.prctl(uapi.PR_SET_NAME, name)
        if t.zombie_status is not None:
            _exit_as(t.zombie_status)
        fault_point("files")
        if t.cwd_file is not None:
            os.fchdir(by_file[t.cwd_file])  # before place() closes the description
        _place(tree, group, ctl, by_file, sync)
        start, end = tree.region
        ksys.mmap(start, end - start, _REGION_PROT, _REGION_FLAGS)
        if t.cwd_file is None:
            os.chdir(t.cwd)
        os.umask(t.umask)
        _set_limits(t.limits)
        os.write(ready_w, b"r")
        if os.read(go_r, 1) != b"g":
            if sync is not None and not first:
                sync.tell(b"X")
            os._exit(3)  # the engine is gone (EXITKILL would kill us anyway)
        _after_go(tree, group, ctl, sync)
        os.kill(os.getpid(), signal.SIGSTOP)
    except EngineError as e:
        _report(err_w, t.pid, e.phase, e.message)
    except OSError as e:
        _report(err_w, t.pid, "files", f"{e.filename or ''} {e.strerror}".strip())
    # Anything else must still end the child: it must never return into the engine.
    except BaseException as e:  # noqa: BLE001
        _report(err_w, t.pid, "fork", f"{type(e).__name__}: {e}")
    if not first and sync is not None:
        with contextlib.suppress(OSError):
            sync.tell(b"X")
    os._exit(1)


def _place(tree: TreeSetup, group: list[TaskSetup], ctl: list[int], by_file: dict[int, int],
           sync: files.FdTableSync | None) -> None:
    """The fds of the task's table: `group` is the first holder and the tasks sharing its
    table, who waits for the others to have forked; [] in each of the others."""
    if not group:
        assert sync is not None
        sync.tell(b"F")
        return
    if sync is not None:
        sync.wait(b"F")
    files.place(tree.files, [x.pid for x in group], group[0].fds, by_file,
                ctl + list(sync.fds if sync else ()), [fd for x in group for fd in x.staged])


def _after_go(tree: TreeSetup, group: list[TaskSetup], ctl: list[int],
              sync: files.FdTableSync | None) -> None:
    """Every task exists now: the first holder of a table (`group` as for _place) opens
    its pidfds, then closes the control pipes once every other holder has read its go."""
    if not group:
        assert sync is not None
        sync.tell(b"D")
        return
    files.open_pidfds(tree.files, [x.pid for x in group], group[0].fds, tree.inner_pids)
    if sync is not None:
        sync.wait(b"D")
        sync.close()
    for fd in ctl[:3]:
        os.close(fd)


def _room_for_fds(tree: TreeSetup) -> None:
    """Room under RLIMIT_NOFILE for every object above obj_base and every task's fds,
    before the fork (the tasks inherit it; each sets its dumped limits once its fds are
    placed)."""
    need = max(fdbudget.needed(tree.files.max_fd, len(tree.files.files) + tree.objs),
               tree.obj_base + tree.objs + len(tree.files.files) + 1)
    why = fdbudget.make_room(need)
    if why:
        raise EngineError("files", f"the tree needs {need} fds open at once: {why}")


def _root(tree: TreeSetup, go_r: int, err_w: int, ready_w: int) -> None:
    """The root task's first steps; never returns."""
    ctl = [go_r, err_w, ready_w]
    try:
        if tree.ns is not None:
            if tree.ns.waits and os.read(go_r, 1) != b"m":
                os._exit(3)  # the engine is gone
            ns.setup_inside(tree.ns)
        _gone_sem_setters(tree.gone_sems)
        # memfds at their agreed numbers, then everything else above them (and so above
        # every fd number any task will have).
        memfds = tree.memfd_fds()
        for sid, name, size in tree.memfds:
            fd = os.memfd_create(name, os.MFD_ALLOW_SEALING)
            os.ftruncate(fd, size)
            if fd != memfds[sid]:
                os.dup2(fd, memfds[sid])
                os.close(fd)
        for addr, size, sid in tree.shmem:
            fd = memfds.get(sid, -1)
            ksys.mmap(addr, size, uapi.PROT_READ | uapi.PROT_WRITE,
                      uapi.MAP_SHARED | uapi.MAP_FIXED_NOREPLACE
                      | (uapi.MAP_ANONYMOUS if fd < 0 else 0), fd, 0)
        low = tree.low
        ctl = [files.move_above(fd, low) for fd in ctl]
        # Files are opened with the engine's own credentials (in a new user namespace the
        # task only becomes root inside afterwards), as the dumped tree opened them.
        by_file = files.open_all(tree.files, low, memfds)
        objs = tree.obj_fds()
        for key, fid in tree.mapped:
            os.dup2(by_file[fid], objs[key])  # the layout reopens it through /proc/self/fd
        if tree.ns is not None and tree.ns.new_user:
            ns.become_root_inside()
        ctl += list(objs.values())
    except EngineError as e:
        _report(ctl[1], tree.root.pid, e.phase, e.message)
        os._exit(1)
    except BaseException as e:  # noqa: BLE001 - as in _task
        _report(ctl[1], tree.root.pid, "files", f"{type(e).__name__}: {e}")
        os._exit(1)
    if forktable.unsupported(tree) is None:
        _by_table(tree, ctl, by_file)
    _task(tree, tree.root, ctl, by_file)


def _by_table(tree: TreeSetup, ctl: list[int], by_file: dict[int, int]) -> None:
    """The root makes the tree with one syscall table (engine/restore/forktable.py);
    never returns."""
    try:
        failed = forktable.run(forktable.build(tree, ctl, by_file), ctl[1])
    except EngineError as e:  # a premapped page that fails its check
        failed = (tree.root.pid, e.phase, e.message)
    except BaseException as e:  # noqa: BLE001 - as in _task
        failed = (tree.root.pid, "fork", f"{type(e).__name__}: {e}")
    if failed is None:
        os._exit(3)  # the engine is gone (EXITKILL would kill us anyway)
    _report(ctl[1], *failed)
    os._exit(1)


def _report(err_w: int, pid: int, phase: str, message: str) -> None:
    try:
        os.write(err_w, f"{pid}\0{phase}\0{message}\n".encode()[:_MAX_ERR])
    except OSError:
        pass


class Tree:
    """The tasks the engine created: their real pids, which pids are ours, killing them.

    Tasks are named by their dumped pids; `real` maps them to the pids they got, as the
    engine sees them: the same, except in a new pid namespace, where a task gets only its
    pid inside chosen and the engine finds it by that pid.
    """

    def __init__(self, setup: TreeSetup, root_real: int) -> None:
        self.setup = setup
        self.tasks = setup.root.walk()
        self.parent = {c.pid: t.pid for t in self.tasks for c in t.children}
        self.live = [t.pid for t in self.tasks if t.zombie_status is None]
        self.real: dict[int, int] = {setup.root.pid: root_real}
        self.threads: set[int] = set()  # real tids of threads created later (our tracees)
        # real pids of processes created later by a clone injected into their parent
        # (engine/restore/vmchild.py): killed with the tree
        self.processes: set[int] = set()

    def _expected_parent(self, pid: int) -> int | None:
        if pid == self.setup.root.pid:
            return os.getpid()
        return self.real.get(self.parent[pid])

    def find(self, t: TaskSetup) -> int | None:
        """The real pid of task t once it exists (None before)."""
        if t.pid in self.real:
            return self.real[t.pid]
        parent = self._expected_parent(t.pid)
        if parent is None:
            return None
        if t.fixed_pid:
            found = t.pid if self._child_of(t.pid, parent) else None
        else:
            found = _child_by_inner_pid(parent, t.inner_pid)
        if found is not None:
            self.real[t.pid] = found
        return found

    @staticmethod
    def _child_of(pid: int, parent: int) -> bool:
        try:
            ppid = read_stat(pid).ppid
        except (FileNotFoundError, ProcessLookupError):
            return False
        return ppid in (parent, os.getpid())

    def ours(self, pid: int) -> bool:
        """True when task `pid` (dumped pid) exists and is the one we created: its parent
        is a task of the tree (the one we made it from, or, once that one died, the pid
        namespace's init or a subreaper of the tree), or us (the subreaper)."""
        real = self.real.get(pid)
        if real is None or self._expected_parent(pid) is None:
            return False
        try:
            ppid = read_stat(real).ppid
        except (FileNotFoundError, ProcessLookupError):
            return False
        return ppid == os.getpid() or ppid != real and ppid in self.real.values()

    def kill_all(self, timeout: float = 10.0) -> None:
        """SIGKILL every task of the tree that exists and is ours, and reap them (we are
        the subreaper, so orphans come to us)."""
        for t in self.tasks:
            self.find(t)
        victims: dict[int, int | None] = {}  # real pid -> start time (a reused pid is not ours)
        for t in self.tasks:
            if self.ours(t.pid):
                victims[self.real[t.pid]] = _start_time(self.real[t.pid])
        for pid in self.processes:
            victims[pid] = _start_time(pid)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # Reap everything we can, whoever its parent is now: a killed tracee stays a
        # zombie until we, its tracer, wait for it, and its parent (maybe a dying
        # pid-namespace init, which waits for it) cannot finish before that.
        deadline = time.monotonic() + timeout
        waitable = sorted(self.threads) + list(victims)
        while True:
            for pid in waitable:
                try:
                    os.waitpid(pid, os.WNOHANG | uapi.WALL)
                except ChildProcessError:
                    pass
            left = [p for p, start in victims.items() if _start_time(p) == start]
            if not left:
                return
            if time.monotonic() > deadline:
                raise EngineError("fork", f"tasks {left} did not die after SIGKILL")
            time.sleep(0.001)


def _start_time(pid: int) -> int | None:
    """Start time of pid, None once it is gone (reaped)."""
    try:
        return read_stat(pid).starttime
    except (FileNotFoundError, ProcessLookupError):
        return None


def _child_by_inner_pid(parent: int, inner: int) -> int | None:
    try:
        kids = tasks.children(parent)
    except (FileNotFoundError, ProcessLookupError):
        return None
    for kid in kids:
        try:
            if read_status(kid).ns_pid[-1:] == (inner,):
                return kid
        except (FileNotFoundError, ProcessLookupError):
            continue
    return None


def spawn(setup: TreeSetup, timeout: float,
          prepare: Callable[[int], None] | None = None,
          meanwhile: Callable[[], None] | None = None,
          idle: Callable[[], None] | None = None) -> Tree:
    """Create every task; return once each live one is seized and in its SIGSTOP stop and
    each zombie is a zombie. On failure nothing of the tree is left. `prepare(root pid)`
    fills the root's new namespaces (setup.ns.prepared) while the root waits;
    `meanwhile()` is the engine's own work while the tree makes itself, `idle()` more of
    it, done only if the tree is not made yet after that (the engine would wait)."""
    fault_point("fork")
    ksys.set_child_subreaper(True)
    _room_for_fds(setup)
    err_r, err_w = os.pipe()
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    try:
        try:
            # the interpreter's after-fork fix-up only where the engine has other threads
            single = len(os.listdir("/proc/self/task")) == 1
            child = _clone_with_pid(setup.root, setup.ns.clone_flags if setup.ns else 0,
                                    single)
        except EngineError:
            for fd in (err_r, err_w, go_r, go_w, ready_r, ready_w):
                os.close(fd)
            raise
        if child == 0:
            os.close(err_r)
            os.close(go_w)
            os.close(ready_r)
            _root(setup, go_r, err_w, ready_w)
        os.close(err_w)
        os.close(go_r)
        os.close(ready_w)
        os.set_blocking(err_r, False)
        tree = Tree(setup, child)
        if setup.ns is not None and setup.ns.waits:
            try:
                _prepare_root(setup.ns, child, prepare)
            except BaseException:
                tree.kill_all()
                raise
            os.write(go_w, b"m")  # the root waits for this before anything else
        try:
            if meanwhile is not None:
                meanwhile()
            _seize_all(tree, err_r, go_w, ready_r, timeout, idle)
        except BaseException:
            tree.kill_all()
            raise
    finally:
        for fd in (err_r, go_w, ready_r):
            try:
                os.close(fd)
            except OSError:
                pass
    return tree


def _prepare_root(nss: NsSetup, child: int, prepare: Callable[[int], None] | None) -> None:
    """What the engine does in the root's new namespaces while the root waits."""
    if nss.new_user:
        try:
            ns.write_id_maps(child, nss)
        except OSError as e:
            raise EngineError("fork", f"cannot write the id maps of {child}: {e}") from None
    if prepare is not None:
        prepare(child)


def _check_errors(err_r: int) -> None:
    try:
        raw = os.read(err_r, _MAX_ERR)
    except BlockingIOError:
        return
    if raw:
        # a task of the table's reports its failed entry (engine/restore/forktable.py)
        report = forktable.decode_reports(raw)
        if report is None:
            pid_s, phase, message = raw.decode(errors="replace").split("\n")[0].split("\0", 2)
        else:
            pid, phase, message = report
            pid_s = str(pid)
        raise EngineError(phase, message if phase == "fork" else f"{message} (task {pid_s})")


def _seize_all(tree: Tree, err_r: int, go_w: int, ready_r: int, timeout: float,
               idle: Callable[[], None] | None) -> None:
    deadline = time.monotonic() + timeout
    # Seize only once every task is made (each live one says so on the ready pipe, after
    # its children, right before it waits for its go): a traced parent would stop for
    # the SIGCHLD of each zombie child it makes, before it has made the next child.
    _wait_ready(len(tree.live), err_r, ready_r, deadline, idle)
    for t in tree.tasks:
        if tree.find(t) is None:
            raise EngineError("fork", f"task {t.pid} was not found where it was made")
    for pid in tree.live:  # each waits for its go byte: none has stopped yet
        try:
            ptrace.seize(tree.real[pid], SEIZE_OPTIONS)
        except OSError as e:
            # EPERM/ESRCH: the task is exiting, most likely after a failed set-up whose
            # report is on its way: that report is the error to give.
            time.sleep(0.05)
            _check_errors(err_r)
            raise EngineError("fork", f"task {pid} could not be seized: {e.strerror}") \
                from None
    try:
        os.write(go_w, b"g" * len(tree.live))
    except BrokenPipeError:
        # Every task exited after it was seized (a set-up that failed, e.g. the root's
        # opening of the files): its report, written before it exited, says why.
        _check_errors(err_r)
        raise EngineError("fork", "every new task exited before it was set up") from None
    for pid in tree.live:
        _wait_sigstop(tree.real[pid], err_r, deadline)
    for t in tree.tasks:
        if t.zombie_status is not None:
            while read_stat(tree.real[t.pid]).state != "Z":
                _check_errors(err_r)
                if time.monotonic() > deadline:
                    raise EngineError("fork", f"task {t.pid} did not become a zombie")
                time.sleep(0.0005)


def _wait_ready(count: int, err_r: int, ready_r: int, deadline: float,
                idle: Callable[[], None] | None = None) -> None:
    """Wait until `count` tasks said they are ready; a task's report on the error pipe
    ends the wait with that error, and so does every task gone. `idle()` runs first if
    the tasks are not all ready by then."""
    poller = select.poll()
    poller.register(err_r, select.POLLIN)
    poller.register(ready_r, select.POLLIN)
    got = 0
    while got < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise EngineError("fork", f"{count - got} of {count} tasks not made in time")
        events = dict(poller.poll(0 if idle is not None else left * 1000))
        if not events and idle is not None:
            idle()
            idle = None
            continue
        if err_r in events:
            _check_errors(err_r)  # raises the report; at EOF, the ready pipe tells
            if not events[err_r] & select.POLLIN:
                poller.unregister(err_r)
        if ready_r in events:
            raw = os.read(ready_r, count - got)
            if not raw:
                _check_errors(err_r)
                raise EngineError("fork", "every new task exited before it was set up")
            got += len(raw)


def _wait_sigstop(pid: int, err_r: int, deadline: float) -> None:
    """Wait for the task's own SIGSTOP; other signals (SIGCHLD of a zombie child made
    just now) are discarded: they are not part of the dumped state. Errors reported by any
    task are checked between short waits: a task that failed may not be able to exit
    (a pid namespace's init waits for its traced children, which only we could reap)."""
    while True:
        _check_errors(err_r)
        left = deadline - time.monotonic()
        if left <= 0:
            raise EngineError("fork", f"task {pid} did not stop after its set-up in time")
        try:
            status = ptrace.wait_stop(pid, min(left, _ERROR_POLL_S))
        except ptrace.TaskExited:
            _check_errors(err_r)
            raise EngineError("fork", f"task {pid} exited before it was set up") from None
        except TimeoutError:
            continue
        sig = os.WSTOPSIG(status)
        if sig == signal.SIGSTOP and not ptrace.stop_event(status):
            return
        ptrace.cont(pid, 0)
