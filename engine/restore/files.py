"""The fd tables of restored tasks, rebuilt inside the freshly forked children (Python).

The engine prepares a `FilesPlan` for the whole tree before forking (reading every content
file of the image there, so a bad image fails before any task exists). The root task calls
`open_all()` before it forks anything: one new open file description per dumped one, all
above every fd number of the tree, so every task inherits all of them and descriptions
shared between tasks (a pipe between parent and child, a file offset) stay shared. Each
task then calls `place()`: its descriptions go to its fd numbers and every other fd is
closed, except the ones it still needs to talk to the engine.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from engine.errors import EngineError
from engine.images import DumpImage
from engine.images.fdkinds import LockRecord
from engine.images.imgdir import CRC_CHUNK
from engine.images.records import FdEntry, FileRecord, TaskCore, deleted_key
from engine.kernel import uapi
from engine.kernel.sys import syscall
from engine.restore import anonfd, inetsk, locks, mqueue, netlinksk, packetsk, unixsk
from engine.restore import pty as ptyrst
from engine.restore.fsowner import as_fs_owner

# Status flags that open() cannot be trusted to leave as dumped and fcntl(F_SETFL) sets.
_SETFL_FLAGS = uapi.O_APPEND | uapi.O_NONBLOCK | uapi.O_ASYNC | uapi.O_DIRECT | uapi.O_NOATIME
# Flags that only mean something at creation time (and O_CLOEXEC, which is per fd).
_RENAME_EXCHANGE = 2
_OPEN_ONLY = uapi.O_CREAT | uapi.O_EXCL | uapi.O_TRUNC | uapi.O_CLOEXEC
#: file types restore rebuilds (the dump refuses the others while the tree can run on)
SUPPORTED_TYPES = ("reg", "dir", "chr", "blk", "pipe", "fifo", "anon_inode", "socket",
                   "symlink", "mqueue")


@dataclass
class SavedData:
    """The saved data of an unlinked file, streamed from its image file into the new
    file (it may be larger than memory), each MiB checked against the inventory's CRC32
    as it is read. The image file is opened before the fork: the root task may no longer
    reach the image directory by path (a new root), but it inherits the fd."""

    fd: int
    path: str
    sums: list[int]  # CRC32 of each CRC_CHUNK piece

    def chunks(self) -> Iterator[memoryview]:
        """The data in CRC_CHUNK pieces, in order, each checked."""
        buf = bytearray(CRC_CHUNK)
        for i, want in enumerate(self.sums):
            n = os.preadv(self.fd, [buf], i * CRC_CHUNK)
            if n and zlib.crc32(memoryview(buf)[:n]) != want:
                raise EngineError("files", f"{self.path}: checksum mismatch in the MiB at "
                                           f"byte {i * CRC_CHUNK}: the file is damaged")
            yield memoryview(buf)[:n]


@dataclass
class FilesPlan:
    """Every open file description the tree's tasks use, read before the fork."""

    files: dict[int, FileRecord] = field(default_factory=dict)
    contents: dict[int, bytes] = field(default_factory=dict)  # file id -> saved data
    saved: dict[int, SavedData] = field(default_factory=dict)  # unlinked files' data
    max_fd: int = -1  # highest fd number of any task
    owners: dict[int, tuple[int, int]] = field(default_factory=dict)  # id -> ids as seen inside

    def map_owners(self, uid: Callable[[int], int], gid: Callable[[int], int]) -> None:
        """Translate the owners of recreated files into the tasks' user namespace (the
        root task creates them there); an unmapped id fails before any task exists."""
        for rec in self.files.values():
            if recreated(rec) or rec.unix is not None and rec.unix.name[:1] not in ("", "\0") \
                    or rec.pty is not None:
                self.owners[rec.id] = (uid(rec.uid), gid(rec.gid))
            elif rec.mqueue is not None:
                self.owners[rec.id] = (uid(rec.mqueue.uid), gid(rec.mqueue.gid))

    pids: set[int] = field(default_factory=set)  # every task's pid
    own_ipc: bool = False  # the tree gets an ipc namespace of its own (POSIX queues)
    epolls: anonfd.EpollPlan = field(default_factory=anonfd.EpollPlan)
    # task pid -> [(file id, lock)]: the POSIX locks each task takes (set by check())
    posix_locks: dict[int, list[tuple[int, LockRecord]]] = field(default_factory=dict)

    def add_task(self, image: DumpImage, core: TaskCore, spawned: bool = True) -> None:
        """Take in one task's fds; refuse unsupported file types early. A task not
        spawned (made later in its parent's address space, which holds its descriptions
        for it: engine/restore/vmchild.py) arms no epoll watch."""
        by_id = image.files.by_id()
        for fde in core.fds:
            rec = by_id[fde.file_id]
            if rec.type not in SUPPORTED_TYPES:
                raise EngineError("files", f"task {core.pid} fd {fde.fd}: cannot restore a "
                                           f"{rec.type} file ({rec.link or rec.path})")
            if rec.type == "reg" and rec.deleted and rec.content is None \
                    and rec.shmem_id is None:
                raise EngineError("files", f"task {core.pid} fd {fde.fd}: unlinked file "
                                           f"{rec.path} has no saved content")
            self._take(image, rec)
            self.max_fd = max(self.max_fd, fde.fd)
        if core.cwd_file is not None:
            self._take(image, by_id[core.cwd_file])  # a removed cwd: fchdir'ed into
        if spawned:
            self.epolls.add_task(core.pid, core.fds, by_id)
        self.pids.add(core.pid)

    def _take(self, image: DumpImage, rec: FileRecord) -> None:
        """One description and its content, with the files in flight in its queue (a
        unix socket's), which no task holds and open_all opens all the same."""
        self.files[rec.id] = rec
        if rec.type == "reg" and rec.content is not None:
            if rec.id not in self.saved:
                self.saved[rec.id] = SavedData(image.dir.open_file(rec.content),
                                               image.dir.file(rec.content),
                                               image.dir.checksums[rec.content])
        elif rec.content is not None and rec.id not in self.contents:
            self.contents[rec.id] = image.dir.read_bytes(rec.content)
        by_id = image.files.by_id()
        for fid in {f for ids in (rec.unix.rights if rec.unix else []) for f in ids}:
            if fid not in self.files and fid in by_id:
                self._take(image, by_id[fid])

    def take_mapped(self, image: DumpImage) -> list[tuple[str, int]]:
        """The unlinked files tasks map: their records join the plan (open_all makes
        each file again, once per inode with an fd's description of it); returns
        (deleted_key, file id) for each."""
        by_id = image.files.by_id()
        for m in image.files.mapped:
            self._take(image, by_id[m.file_id])
        return [(deleted_key(m.dev, m.inode), m.file_id) for m in image.files.mapped]

    def close(self) -> None:
        """Close the image files of saved data (the engine's copies: once the tree is
        made, or when it could not be)."""
        for d in self.saved.values():
            os.close(d.fd)
        self.saved.clear()

    def check(self) -> None:
        """Once every task is in: what needs the whole tree (epoll watches have a task to
        arm them; socket pairs are complete)."""
        self.epolls.check()
        unixsk.check(self.files, self.contents)
        self.posix_locks = locks.posix_by_owner(self.files)
        for owner in self.posix_locks.keys() - self.pids:
            raise EngineError("read", f"a POSIX lock of task {owner}, not in the image")
        for rec in self.files.values():
            if rec.pidfd is not None and rec.pidfd.pid not in self.pids:
                raise EngineError("read", f"file {rec.id}: a pidfd of pid {rec.pidfd.pid}, "
                                          "not in the image")


def move_above(fd: int, floor: int) -> int:
    """Duplicate fd to the lowest free number >= floor, close the original."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD, floor)
    os.close(fd)
    return new


class FdTableSync:
    """How the restored tasks sharing one fd table wait for each other (engine.restore.
    spawn): on a pipe, at `low` or above (above every fd number of the tree), each other
    holder writes F once it has forked its children and D once it has read its go, or X
    when it fails; the first holder waits for all of them before placing the fds (which
    closes every description) and before closing the control pipes."""

    def __init__(self, others: int, low: int) -> None:
        self.others = others
        r, w = os.pipe()
        self.fds = (move_above(r, low), move_above(w, low))
        self.seen = {b"F": 0, b"D": 0}

    def tell(self, what: bytes) -> None:
        """From another holder: F, D or X."""
        os.write(self.fds[1], what)

    def wait(self, what: bytes) -> None:
        """In the first holder: until every other holder has said `what`."""
        while self.seen[what] < self.others:
            got = os.read(self.fds[0], 64)
            if not got or b"X" in got:
                raise EngineError("fork", "a task sharing the fd table failed")
            for b in (b"F", b"D"):
                self.seen[b] += got.count(b)

    def close(self) -> None:
        """In the first holder, once every other one has said D."""
        for fd in self.fds:
            os.close(fd)


class _Opener:
    """Opens one file per description; pipes and unlinked files are shared by key."""

    def __init__(self, plan: FilesPlan, floor: int, memfds: dict[str, int]) -> None:
        self.plan = plan
        self.floor = floor
        self.memfds = memfds  # shmem id -> the memfd the root created for it
        self.pipes: dict[int, tuple[int, int]] = {}  # pipe_ino -> (read end, write end)
        self.ends_used: set[tuple[int, int]] = set()  # (pipe_ino, end) given to a description
        self.unlinked: dict[tuple[int, int], int] = {}  # (dev, inode) -> fd on the new file
        # (dev, inode) -> where a removed directory, symlink or FIFO was made again
        self.remade: dict[tuple[int, int], str] = {}
        self.fifo_helpers: dict[int, int] = {}  # pipe_ino -> O_RDWR fd keeping it open
        # recreated unlinked files (path, name it was made at when the path was taken,
        # a directory?), removed once every description is open
        self.to_unlink: list[tuple[str, str | None, bool]] = []
        self.socks = unixsk.Sockets(plan.files, plan.contents, plan.owners, floor)
        self.queues = mqueue.Queues(plan.files, plan.contents, plan.owners, plan.own_ipc)
        self.repaired: list[int] = []  # file ids of TCP connections still in repair mode

    def open(self, rec: FileRecord) -> int:
        """A new fd (above the floor) on a description equal to `rec`."""
        fd = self._open(rec)
        return fd if fd >= self.floor else move_above(fd, self.floor)

    def _flags(self, rec: FileRecord) -> int:
        return (rec.flags & ~_OPEN_ONLY) | uapi.O_NOCTTY

    def _open(self, rec: FileRecord) -> int:
        if rec.type == "mqueue":
            return self.queues.fd(rec)
        if rec.type == "pipe":
            return self._pipe_end(rec)
        if rec.type == "fifo":
            return self._fifo_end(rec)
        if rec.type == "anon_inode":
            fd = anonfd.create(rec)
            _set_status_flags(fd, rec)
            return fd
        if rec.type == "socket" and rec.inet is not None:
            fd = inetsk.create(rec, self.plan.contents.get(rec.id, b""))
            if rec.inet.repair is not None:
                self.repaired.append(rec.id)
            _set_status_flags(fd, rec)
            return fd
        if rec.type == "socket" and rec.netlink is not None:
            fd = netlinksk.create(rec)
            _set_status_flags(fd, rec)
            return fd
        if rec.type == "socket" and rec.packet is not None:
            fd = packetsk.create(rec)
            _set_status_flags(fd, rec)
            return fd
        if rec.type == "socket":
            fd = self.socks.end(rec)  # the description's fd itself: one fd per socket
            _set_status_flags(fd, rec)
            return fd
        if rec.pty is not None:
            fd = ptyrst.open_master(rec, self._flags(rec), self.plan.contents.get(rec.id, b""),
                                    self.plan.owners.get(rec.id))
        elif rec.shmem_id is not None:
            # A memfd: a new description of the very object the mappings share.
            fd = os.open(f"/proc/self/fd/{self.memfds[rec.shmem_id]}", self._flags(rec))
        elif rec.type == "reg" and rec.deleted:
            fd = self._unlinked(rec)
        elif rec.deleted:  # a removed directory or symlink
            fd = os.open(self._remade(rec), self._flags(rec))
        else:
            assert rec.path is not None
            fd = os.open(rec.path, self._flags(rec))
        _set_status_flags(fd, rec)
        if rec.type in ("reg", "dir") and rec.pos and not rec.flags & uapi.O_PATH:
            os.lseek(fd, rec.pos, os.SEEK_SET)
        return fd

    def _unlinked(self, rec: FileRecord) -> int:
        """Recreate an unlinked file at its old path from its content (holes kept), with
        its owner, mode and times, reopen it with the dumped flags; it is unlinked once
        every description is open (so its fd reads '<path> (deleted)' as before)."""
        assert rec.path is not None
        key = (rec.dev, rec.inode)
        if key not in self.unlinked:
            owner = self.plan.owners.get(rec.id)
            try:
                tmp = _create(rec.path, owner)
                self.to_unlink.append((rec.path, None, False))
            except FileExistsError:
                # A new file took the name: recreate beside it; open_all swaps the two
                # names, so the old file's dentry still has the old name.
                aside = _aside(rec.path)
                tmp = _create(aside, owner)
                self.to_unlink.append((rec.path, aside, False))
            self._fill_file(tmp, rec)
            self.unlinked[key] = move_above(tmp, self.floor)
        return os.open(f"/proc/self/fd/{self.unlinked[key]}", self._flags(rec))

    def _remade(self, rec: FileRecord) -> str:
        """Where a removed directory, symlink or FIFO is made again (at its path, or
        beside a new object that took the name, as for unlinked files), with its owner,
        mode and times; removed again once every description is open."""
        assert rec.path is not None
        key = (rec.dev, rec.inode)
        if key not in self.remade:
            owner = self.plan.owners.get(rec.id)
            where = rec.path
            try:
                _make_node(rec, where, owner)
                self.to_unlink.append((rec.path, None, rec.type == "dir"))
            except FileExistsError:
                where = _aside(rec.path)
                _make_node(rec, where, owner)
                self.to_unlink.append((rec.path, where, rec.type == "dir"))
            _node_attrs(where, rec, chown=owner is None)
            self.remade[key] = where
        return self.remade[key]

    def _fill_file(self, fd: int, rec: FileRecord) -> None:
        extents = rec.extents if rec.extents is not None else [[0, rec.size]]
        os.ftruncate(fd, rec.size)
        _write_extents(fd, self.plan.saved[rec.id], extents)
        if rec.id not in self.plan.owners:  # (in a user namespace: created as the owner)
            os.fchown(fd, rec.uid, rec.gid)
        os.fchmod(fd, (rec.mode & 0o7777) or 0o600)  # after chown, which clears set-id
        if rec.mtime_ns:
            os.utime(fd, ns=(rec.atime_ns, rec.mtime_ns))

    def _pipe_end(self, rec: FileRecord) -> int:
        assert rec.pipe_ino is not None
        if rec.pipe_ino not in self.pipes:
            r, w = os.pipe()
            _set_pipe_size(w, rec)
            self._fill(w, rec)
            self.pipes[rec.pipe_ino] = (move_above(r, self.floor), move_above(w, self.floor))
        r, w = self.pipes[rec.pipe_ino]
        end = w if rec.flags & uapi.O_ACCMODE == uapi.O_WRONLY else r
        if (rec.pipe_ino, end) in self.ends_used:
            # Another description of the same pipe (the task reopened it through
            # /proc/PID/fd): a new one of its own, with its own status flags.
            fd = os.open(f"/proc/self/fd/{end}", self._flags(rec) | os.O_NONBLOCK)
        else:
            # The first description of this end is the end itself.
            fd = fcntl.fcntl(end, fcntl.F_DUPFD, self.floor)
            self.ends_used.add((rec.pipe_ino, end))
        _set_status_flags(fd, rec)
        return fd

    def _fifo_end(self, rec: FileRecord) -> int:
        assert rec.path is not None and rec.pipe_ino is not None
        path = self._remade(rec) if rec.deleted else rec.path
        if rec.pipe_ino not in self.fifo_helpers:
            # An O_RDWR helper keeps both sides open, so the real opens never block.
            helper = os.open(path, os.O_RDWR | os.O_NONBLOCK)
            _set_pipe_size(helper, rec)
            self._fill(helper, rec)
            self.fifo_helpers[rec.pipe_ino] = move_above(helper, self.floor)
        fd = os.open(path, self._flags(rec) | os.O_NONBLOCK)
        _set_status_flags(fd, rec)
        return fd

    def _fill(self, wfd: int, rec: FileRecord) -> None:
        data = memoryview(self.plan.contents.get(rec.id, b""))
        if not data:
            return
        os.set_blocking(wfd, False)
        try:
            while data:
                data = data[os.write(wfd, data):]
        except BlockingIOError:
            raise EngineError("files", f"pipe {rec.pipe_ino}: saved data does not fit "
                                       f"the pipe") from None


def _write_extents(fd: int, saved: SavedData, extents: list[list[int]]) -> None:
    """Write the saved data, back to back in the image, to its extents of the file."""
    chunks = saved.chunks()
    buf = memoryview(b"")
    for start, end in extents:
        while start < end:
            if not buf:
                buf = next(chunks, memoryview(b""))
                if not buf:
                    raise EngineError("files", f"{saved.path}: the data ends before its "
                                               f"extent {start}-{end}")
            n = os.pwrite(fd, buf[:end - start], start)
            buf, start = buf[n:], start + n


def _set_status_flags(fd: int, rec: FileRecord) -> None:
    if rec.flags & uapi.O_PATH:
        return
    cur = fcntl.fcntl(fd, fcntl.F_GETFL)
    want = (cur & ~_SETFL_FLAGS) | (rec.flags & _SETFL_FLAGS)
    if want != cur:
        fcntl.fcntl(fd, fcntl.F_SETFL, want)


def recreated(rec: FileRecord) -> bool:
    """Whether restore makes the file of `rec` again (and removes it): an unlinked
    regular file with saved content, a removed directory, symlink or FIFO."""
    return rec.deleted and (rec.type == "reg" and rec.content is not None
                            or rec.type in ("dir", "symlink", "fifo"))


def _aside(path: str) -> str:
    """Where a removed object is made again when a new one took its name."""
    return f"{path}.restored-{os.getpid()}"


def _make_node(rec: FileRecord, path: str, owner: tuple[int, int] | None) -> None:
    """Make the removed directory, symlink or FIFO of `rec` at path (by a thread with
    the owner's fs ids in a user namespace, as _create)."""
    def make() -> None:
        if rec.type == "dir":
            os.mkdir(path, 0o700)
        elif rec.type == "symlink":
            assert rec.target is not None
            os.symlink(rec.target, path)
        else:
            os.mkfifo(path, 0o600)
    if owner is None:
        make()
    else:
        as_fs_owner(owner, make)


def _node_attrs(path: str, rec: FileRecord, chown: bool) -> None:
    """Owner (unless made by the owner), mode (a symlink has none) and times."""
    if chown:
        os.chown(path, rec.uid, rec.gid, follow_symlinks=False)
    if rec.type != "symlink":
        os.chmod(path, rec.mode & 0o7777)  # after chown, which clears set-id bits
    if rec.mtime_ns:
        os.utime(path, ns=(rec.atime_ns, rec.mtime_ns), follow_symlinks=False)


def _set_pipe_size(fd: int, rec: FileRecord) -> None:
    """Give a new pipe (or FIFO) the dumped capacity, before its data is written."""
    if rec.pipe_size and fcntl.fcntl(fd, uapi.F_GETPIPE_SZ) != rec.pipe_size:
        fcntl.fcntl(fd, uapi.F_SETPIPE_SZ, rec.pipe_size)


def _create(path: str, owner: tuple[int, int] | None) -> int:
    """A new file at path (O_EXCL). With `owner` (ids inside the tasks' user namespace),
    it is created by a thread whose fsuid/fsgid are those ids: this task's own ids are
    unmapped there (so it could not chown a file it made), and fs ids are per thread."""
    flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC
    if owner is None:
        return os.open(path, flags, 0o600)
    return as_fs_owner(owner, lambda: os.open(path, flags, 0o600))


def floor(plan: FilesPlan) -> int:
    """Lowest fd number above every fd of the tree: the tasks' own fds live there."""
    return max(plan.max_fd + 1, 3)


def open_all(plan: FilesPlan, low: int, memfds: dict[str, int]) -> dict[int, int]:
    """In the root task, before forking: open every description (file id -> fd, all at
    or above `low`); recreated unlinked files are unlinked again at the end. memfds:
    shmem id -> fd of the memfd the root created for that object."""
    opener = _Opener(plan, low, memfds)
    by_file: dict[int, int] = {}
    # pty masters first: their slaves are opened by path
    for rec in sorted(plan.files.values(), key=lambda r: (r.pty is None, r.id)):
        if rec.pidfd is not None or rec.ctty_of:
            continue  # opened later: by its holder once every task exists (open_pidfds);
            # /dev/tty by its session leader once it has its terminal (open_ctty)
        try:
            by_file[rec.id] = opener.open(rec)
            locks.take_file_locks(by_file[rec.id], rec)
        except OSError as e:
            raise EngineError("files", f"{rec.type} {rec.path or rec.link}: "
                                       f"{e.strerror}") from None
    try:
        opener.socks.finish(by_file)
    except OSError as e:
        raise EngineError("files", f"unix sockets: {e.strerror}") from None
    inetsk.finish([(by_file[fid], plan.files[fid]) for fid in opener.repaired])
    for path, aside, is_dir in opener.to_unlink:
        try:
            _unlink(path, aside, is_dir)
        except OSError as e:
            raise EngineError("files", f"unlinking the recreated {path}: {e.strerror}") \
                from None
    return by_file


def _unlink(path: str, aside: str | None, is_dir: bool) -> None:
    """Unlink the recreated file (rmdir a directory); made at `aside` because a new file
    holds `path`, it first swaps names with that file (renameat2 RENAME_EXCHANGE), which
    then gets its name back."""
    remove = os.rmdir if is_dir else os.unlink
    if aside is None:
        remove(path)
        return
    old = ctypes.create_string_buffer(os.fsencode(aside))
    new = ctypes.create_string_buffer(os.fsencode(path))
    syscall(uapi.SYS_renameat2, uapi.AT_FDCWD, old, uapi.AT_FDCWD, new, _RENAME_EXCHANGE)
    remove(path)
    os.rename(aside, path)


def place(plan: FilesPlan, pids: list[int], fds: list[FdEntry], by_file: dict[int, int],
          kept: list[int], staged: list[tuple[int, int]]) -> None:
    """In task pids[0] (pids[1:] share its fd table, so this is theirs too): put its
    descriptions at its fd numbers, and the `staged` ones (fd number, file id) at theirs
    (free numbers above every fd of the tree, for children cloned into these tasks'
    address space later), arm the epoll watches the plan gave these tasks, close every
    other fd except `kept` (which the caller has moved to floor(plan) or above), then take
    the tasks' POSIX locks through the table's fds."""
    for fde in sorted(fds, key=lambda f: f.fd):
        if fde.file_id in by_file:  # (not pidfds: open_pidfds)
            os.dup2(by_file[fde.file_id], fde.fd, inheritable=not fde.cloexec)
    for fd, fid in staged:
        os.dup2(by_file[fid], fd, inheritable=False)
    watches = [w for pid in pids for w in plan.epolls.by_task.get(pid, [])]
    anonfd.arm(anonfd.deferred(watches, plan.files)[0], by_file)
    _close_all_but({f.fd for f in fds} | set(kept) | {fd for fd, _ in staged})
    # Last: closing any fd of a file drops the process's POSIX locks on it.
    owned = [lock for pid in pids for lock in plan.posix_locks.get(pid, [])]
    locks.take_posix(owned, {f.file_id: f.fd for f in fds})


def open_ctty(plan: FilesPlan, ids: list[int], by_file: dict[int, int], low: int) -> None:
    """In a session leader that has just taken its controlling terminal, before it
    forks: the /dev/tty descriptions (file ids) that reach it, at or above `low`, added
    to by_file (so its descendants inherit them)."""
    for fid in ids:
        rec = plan.files[fid]
        assert rec.path is not None
        try:
            fd = os.open(rec.path, (rec.flags & ~_OPEN_ONLY) | uapi.O_NOCTTY)
            _set_status_flags(fd, rec)
        except OSError as e:
            raise EngineError("files", f"chr {rec.path} (the controlling terminal): "
                                       f"{e.strerror}") from None
        by_file[fid] = fd if fd >= low else move_above(fd, low)


def open_pidfds(plan: FilesPlan, pids: list[int], fds: list[FdEntry],
                inner_pid: dict[int, int]) -> None:
    """In task pids[0] (as for place), once every task exists: its pidfds, then the epoll
    watches of them (armed through the task's own fds on the epolls)."""
    anonfd.open_pidfds(fds, plan.files, inner_pid)
    watches = [w for pid in pids for w in plan.epolls.by_task.get(pid, [])]
    later = anonfd.deferred(watches, plan.files)[1]
    anonfd.arm(later, {f.file_id: f.fd for f in fds})


def _close_all_but(keep: set[int]) -> None:
    """Close every fd of this process that is not in `keep` (close_range on the gaps)."""
    open_fds = [int(n) for n in os.listdir("/proc/self/fd")]
    top = max(open_fds + list(keep)) + 1
    start = 0
    for fd in sorted(keep) + [top]:
        if fd > start:
            os.closerange(start, fd)
        start = fd + 1
