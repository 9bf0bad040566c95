"""Open files of a frozen tree: one FileRecord per open file description.

fds that share a description (dup'ed, inherited through fork) are found with
kcmp(KCMP_FILE) among fds pointing to the same inode, so a shared offset stays shared.
Content the restore cannot find elsewhere is saved: unlinked regular files whole, and
the unread data of pipes, read without consuming it (tee from a reader we open on the
pipe, into a private pipe we then drain).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.dump import anonfd, inetsk, mqueue, netlinksk, packetsk, pty, unixsk
from engine.dump.fdowner import read_owners
from engine.errors import EngineError
from engine.images import names
from engine.images.fdkinds import LockRecord, MqueueState
from engine.images.imgdir import ImageDir
from engine.images.records import FdEntry, FileRecord, MappedFile, Vma
from engine.kernel import uapi
from engine.kernel.sys import pidfd_getfd, pidfd_open, syscall
from engine.proc import locks
from engine.proc.fdinfo import FdInfo, read_fd, read_fds
from engine.proc.stat import read_stat
from engine.restore.files import SUPPORTED_TYPES

_KCMP_FILE = 0
_SPLICE_F_NONBLOCK = 2
_DELETED = " (deleted)"
_MEMFD = "/memfd:"
_PTMX = os.makedev(5, 2)  # a pty master: its pair is made again with the same index
_DEV_TTY = os.makedev(5, 0)  # /dev/tty: opens the opener's controlling terminal


@dataclass
class FileTable:
    """Open file descriptions collected so far, across every task of the tree."""

    files: list[FileRecord] = field(default_factory=list)
    # (st_dev, st_ino) -> [(file id, pid, fd)] representatives, for kcmp
    _by_inode: dict[tuple[int, int], list[tuple[int, int, int]]] = field(default_factory=dict)
    _pipe_sizes: dict[int, int] = field(default_factory=dict)  # pipe inode -> capacity
    diag: unixsk.Diag = field(default_factory=unixsk.Diag)
    repaired: inetsk.Repaired = field(default_factory=inetsk.Repaired)
    # our copies of files found in flight in unix sockets: kept open for kcmp until the end
    _own: list[int] = field(default_factory=list)
    _recording: set[tuple[int, int]] = field(default_factory=set)  # sockets being peeked
    mqueues: dict[int, MqueueState] = field(default_factory=dict)  # inode -> a queue seen
    # removed working directories no fd is on: (st_dev, st_ino) -> file id
    _removed_dirs: dict[tuple[int, int], int] = field(default_factory=dict)
    mapped: list[MappedFile] = field(default_factory=list)  # unlinked files tasks map
    # /dev/tty descriptions: file id -> the terminal each reaches (TIOCGDEV)
    _ttys: dict[int, int] = field(default_factory=dict)

    def check_complete(self, pids: set[int]) -> None:
        """After every task: what only the whole tree can tell (socket peers and the
        owners of POSIX locks are inside it)."""
        unixsk.check_peers(self.files)
        anonfd.check_pidfds(self.files, pids, {fid: (pid, fd) for reps in
                                               self._by_inode.values() for fid, pid, fd in reps})
        inetsk.check_tree(self.files, self.repaired.fresh)
        for r in self.files:
            for lk in r.locks:
                if lk.kind == "posix" and lk.owner not in pids:
                    raise EngineError("files", f"{r.path or r.link}: a POSIX lock of task "
                                               f"{lk.owner}, outside the dumped tree")

    def close(self) -> None:
        """Release the helpers (netlink sockets, our copies of files in flight)."""
        self.diag.close()
        for fd in self._own:
            os.close(fd)
        self._own.clear()

    def end(self, keep_repair: bool) -> None:
        """At the very end of the dump: release the connections in TCP repair mode,
        taking them out of it unless the tree is about to be killed (keep_repair)."""
        self.repaired.end(keep_repair)


def dump_fds(img: ImageDir, table: FileTable, pid: int) -> list[FdEntry]:
    """Record every fd of `pid`, adding new descriptions to `table`."""
    try:
        infos = read_fds(pid)
    except OSError as e:
        raise EngineError("files", f"cannot list fds of {pid}: {e.strerror}") from None
    entries = []
    new: list[tuple[int, FileRecord]] = []
    file_of_fd: dict[int, tuple[int, int, int]] = {}  # fd -> (file id, st_dev, st_ino)
    epolls: list[tuple[FileRecord, FdInfo]] = []
    for info in infos:
        try:
            st = os.stat(f"/proc/{pid}/fd/{info.fd}")
        except OSError as e:
            raise EngineError("files", f"task {pid} fd {info.fd}: {e.strerror}") from None
        key = (st.st_dev, st.st_ino)
        fid = _same_description(table, key, pid, info.fd)
        if fid is not None:
            anonfd.refuse_shared_pidfd(table.files[fid], pid, info.fd, table._by_inode[key])
        if fid is None:
            rec = _new_file(img, table, pid, info, st)
            fid = rec.id
            new.append((info.fd, rec))
            if rec.epoll is not None:
                epolls.append((rec, info))
        elif "lock" in info.extra:
            # fdinfo shows a POSIX lock only to its owner: this task's are new here.
            rec = table.files[fid]
            rec.locks += [lk for lk in _locks(pid, info) if lk.kind == "posix" and lk not in
                          rec.locks]
        file_of_fd[info.fd] = (fid, st.st_dev, st.st_ino)
        entries.append(FdEntry(info.fd, fid, info.cloexec))
    for rec, info in epolls:
        anonfd.resolve_watches(rec, pid, info, file_of_fd)
    try:
        read_owners(pid, new)
    except (OSError, RuntimeError, TimeoutError) as e:
        raise EngineError("files", f"fd owners of {pid}: {e}") from None
    return entries


def _same_description(table: FileTable, key: tuple[int, int], pid: int, fd: int) -> int | None:
    for fid, opid, ofd in table._by_inode.get(key, []):
        try:
            if syscall(uapi.SYS_kcmp, pid, opid, _KCMP_FILE, fd, ofd) == 0:
                return fid
        except OSError as e:
            if e.errno == errno.ENOSYS:
                return None  # no kcmp: every fd gets its own description (safe, less exact)
            raise EngineError("files", f"kcmp {pid}/{fd} vs {opid}/{ofd}: {e.strerror}") from None
    return None


def _type_of(st: os.stat_result, target: str) -> str:
    if target.startswith("anon_inode:"):
        return "anon_inode"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return "reg"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISCHR(mode):
        return "chr"
    if stat.S_ISBLK(mode):
        return "blk"
    if stat.S_ISFIFO(mode):
        return "pipe" if target.startswith("pipe:") else "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _record(img: ImageDir, table: FileTable, pid: int, info: FdInfo, st: os.stat_result,
            fid: int) -> FileRecord:
    kind = _type_of(st, info.target)
    if kind == "reg" and mqueue.is_mqueue(pid, info.fd):
        kind = "mqueue"
    if kind == "other":
        anonfd.refuse_unsupported(pid, info, kind)
    rec = FileRecord(id=fid, type=kind, flags=info.flags & ~uapi.O_CLOEXEC, mode=st.st_mode,
                     dev=st.st_dev, inode=st.st_ino, rdev=st.st_rdev, link=info.target)
    if kind not in SUPPORTED_TYPES:
        raise EngineError("files", f"task {pid} fd {info.fd}: cannot restore a {kind} file "
                                   f"({info.target})")
    if kind in ("reg", "dir", "chr", "blk", "fifo", "symlink"):
        path = info.target
        if path.endswith(_DELETED) and st.st_nlink == 0:
            rec.deleted = True
            path = path[: -len(_DELETED)]
        elif path.endswith(_DELETED) and not path.startswith(_MEMFD):
            _refuse_other_links(pid, f"task {pid} fd {info.fd}", path, st)
        rec.path = path
        if rec.deleted and not info.target.startswith(_MEMFD):
            _removed(rec, pid, f"task {pid} fd {info.fd}", f"/proc/{pid}/fd/{info.fd}", st)
    if kind in ("reg", "dir"):
        rec.pos = info.pos
    if kind == "reg":
        rec.size = st.st_size
        if info.target.startswith(_MEMFD):
            # A memfd's content is its shmem object, dumped once with the memory (and
            # shared with any mapping of it), not copied per fd.
            rec.shmem_id = names.shmem_id(st.st_ino)
        elif rec.deleted:
            rec.content = names.file_content(fid)
            rec.extents = _save_file(img, f"/proc/{pid}/fd/{info.fd}", f"{pid}/{info.fd}",
                                     rec.content, st.st_size)
    if "lock" in info.extra:
        rec.locks = _locks(pid, info)
    if kind == "anon_inode":
        anonfd.fill(rec, pid, info)
    if kind == "mqueue":
        mqueue.fill(img, table.mqueues, rec, pid, info.fd)
    if kind == "chr" and st.st_rdev == _PTMX:
        pty.fill(img, rec, pid, info.fd)
    if kind == "chr" and st.st_rdev == _DEV_TTY:
        table._ttys[fid] = _terminal_of(pid, info.fd)
    if kind == "socket":
        _socket(img, table, rec, pid, info.fd)
    if kind in ("pipe", "fifo"):
        rec.pipe_ino = st.st_ino
        rec.content = names.pipe_content(st.st_ino)
        if st.st_ino not in table._pipe_sizes:
            table._pipe_sizes[st.st_ino] = _save_pipe(img, pid, info.fd, rec.content)
        rec.pipe_size = table._pipe_sizes[st.st_ino]
    return rec


def _terminal_of(pid: int, fd: int) -> int:
    """The terminal a /dev/tty description reaches (its opener's controlling terminal
    then), asked on a copy of it: the engine opening /dev/tty would get its own."""
    try:
        pidfd = pidfd_open(pid)
        try:
            copy = pidfd_getfd(pidfd, fd)
        finally:
            os.close(pidfd)
        try:
            return int.from_bytes(fcntl.ioctl(copy, uapi.TIOCGDEV, bytes(4)), "little")
        finally:
            os.close(copy)
    except OSError as e:
        raise EngineError("files", f"task {pid} fd {fd}: which terminal /dev/tty reaches "
                                   f"(TIOCGDEV): {e.strerror}") from None


def resolve_ttys(table: FileTable, fds: dict[int, list[FdEntry]],
                 parents: dict[int, int]) -> None:
    """Give each /dev/tty description the session leader that opens it again at restore:
    the one whose controlling terminal it reaches, once it has taken the terminal and
    before it forks, so only it and its descendants get the description. Refused: a
    description no session leader of the tree can open, or that a task outside the
    leader's descendants holds. parents: every live task -> its parent."""
    if not table._ttys:
        return
    leaders = {}
    for pid in parents:
        st = read_stat(pid)
        if st.sid == pid and st.tty_nr:
            leaders[st.tty_nr] = pid
    for pid, entries in fds.items():
        for e in entries:
            tty = table._ttys.get(e.file_id)
            if tty is None:
                continue
            what = (f"task {pid} fd {e.fd}: cannot dump /dev/tty (the terminal "
                    f"{os.major(tty)}:{os.minor(tty)})")
            leader = leaders.get(tty)
            if leader is None:
                raise EngineError("files", f"{what}: no session leader of the dumped tree "
                                           "has it as its controlling terminal, so none could "
                                           "open it again")
            up = pid
            while up != leader and up in parents:
                up = parents[up]
            if up != leader:
                raise EngineError("files", f"{what}: only its session leader {leader} and "
                                           "that task's descendants could open it again")
            table.files[e.file_id].ctty_of = leader


def _refuse_other_links(pid: int, what: str, shown: str, st: os.stat_result) -> None:
    """A file /proc shows as "<path> (deleted)" that still has links: the name it was
    opened by was removed, and restore could not find its other names. (A file really
    named so is at that path.)"""
    try:
        here = os.lstat(f"/proc/{pid}/root{shown}")
        if (here.st_dev, here.st_ino) == (st.st_dev, st.st_ino):
            return
    except OSError:
        pass
    raise EngineError("files", f"{what}: cannot dump {shown}: its name was removed and "
                               f"it has {st.st_nlink} other link(s), which restore could not "
                               "find: not supported by this engine")


def _removed(rec: FileRecord, pid: int, what: str, link: str, st: os.stat_result) -> None:
    """A removed file, directory, symlink or FIFO in use (`link`: a /proc magic link to
    it): restore makes it again at its path and removes it, so its attributes (and a
    symlink's target) are kept. Refused: a removed device node (making one needs a
    privilege a user namespace lacks; no such case is supported), and an object whose
    directory is gone too (there is no path to make it at)."""
    assert rec.path is not None
    if rec.type in ("chr", "blk"):
        raise EngineError("files", f"{what}: cannot dump the removed device node {rec.path}: "
                                   "not supported by this engine")
    parent = os.path.dirname(rec.path)
    if not rec.path.startswith("/") or not os.path.isdir(f"/proc/{pid}/root{parent}"):
        raise EngineError("files", f"{what}: cannot dump the removed {rec.type} {rec.path}: "
                                   f"its directory {parent} is gone too, so restore could "
                                   "not make it again")
    rec.uid, rec.gid = st.st_uid, st.st_gid
    rec.atime_ns, rec.mtime_ns = st.st_atime_ns, st.st_mtime_ns
    if rec.type == "symlink":
        try:
            fd = os.open(link, os.O_PATH | os.O_CLOEXEC)  # the link itself, not followed
            try:
                rec.target = os.readlink("", dir_fd=fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise EngineError("files", f"{what}: cannot read the removed symlink "
                                       f"{rec.path}: {e.strerror}") from None


def dump_cwd(table: FileTable, pid: int) -> int | None:
    """The file id of task `pid`'s working directory when it was removed ("<path>
    (deleted)" in /proc), else None: a removed directory an fd of the tree is on (same
    inode), or a new record of it."""
    link = f"/proc/{pid}/cwd"
    try:
        target = os.readlink(link)
        st = os.stat(link)
    except OSError as e:
        raise EngineError("files", f"task {pid}: cannot read its cwd: {e.strerror}") from None
    if not target.endswith(_DELETED) or st.st_nlink != 0:
        return None
    key = (st.st_dev, st.st_ino)
    for held, _, _ in table._by_inode.get(key, []):
        if table.files[held].type == "dir" and table.files[held].deleted:
            return held
    if key not in table._removed_dirs:
        rec = FileRecord(id=len(table.files), type="dir",
                         flags=uapi.O_PATH | uapi.O_DIRECTORY, path=target[: -len(_DELETED)],
                         deleted=True, mode=st.st_mode, dev=st.st_dev, inode=st.st_ino,
                         link=target)
        _removed(rec, pid, f"task {pid} cwd", link, st)
        table.files.append(rec)
        table._removed_dirs[key] = rec.id
    return table._removed_dirs[key]


def dump_mapped(img: ImageDir, table: FileTable, pid: int, vmas: Sequence[Vma]) -> None:
    """The unlinked files task `pid` maps (after every fd of the tree is recorded): each
    one listed once in table.mapped, with the record of an fd on the same file (which
    holds its content) or a new record of its own with the content saved. The file is
    opened through /proc/PID/map_files (the engine runs as root outside every
    namespace of the tree)."""
    known = {(m.dev, m.inode) for m in table.mapped}
    for v in vmas:
        if v.kind != "file" or not v.deleted or (v.dev or "", v.inode) in known:
            continue
        assert v.path is not None and v.dev is not None
        what = f"task {pid} vma {v.start:#x}-{v.end:#x}"
        link = f"/proc/{pid}/map_files/{v.start:x}-{v.end:x}"
        try:
            st = os.stat(link)
        except OSError as e:
            raise EngineError("files", f"{what}: cannot open the unlinked file {v.path} it "
                                       f"maps: {e.strerror}") from None
        if st.st_nlink != 0:
            raise EngineError("files", f"{what}: cannot dump a mapping of {v.path}{_DELETED}: "
                                       f"the file still has {st.st_nlink} link(s) (its name "
                                       "was removed, or it is named so), which restore could "
                                       "not find: not supported by this engine")
        fid = next((f for f, _, _ in table._by_inode.get((st.st_dev, st.st_ino), [])
                    if table.files[f].type == "reg" and table.files[f].content is not None),
                   None)
        if fid is None:
            rec = FileRecord(id=len(table.files), type="reg", flags=uapi.O_RDWR, path=v.path,
                             deleted=True, mode=st.st_mode, dev=st.st_dev, inode=st.st_ino,
                             size=st.st_size, link=f"{v.path}{_DELETED}")
            _removed(rec, pid, what, link, st)
            rec.content = names.file_content(rec.id)
            rec.extents = _save_file(img, link, what, rec.content, st.st_size)
            table.files.append(rec)
            fid = rec.id
        table.mapped.append(MappedFile(v.dev, v.inode, fid))
        known.add((v.dev, v.inode))


def _locks(pid: int, info: FdInfo) -> list[LockRecord]:
    try:
        held = locks.parse(info.extra["lock"])
    except ValueError as e:
        raise EngineError("files", f"task {pid} fd {info.fd}: cannot dump a {e}: not "
                                   "supported by this engine") from None
    return [LockRecord(lk.kind, lk.write, lk.pid if lk.kind == "posix" else 0, lk.start,
                       0 if lk.end is None else lk.end - lk.start + 1) for lk in held]


def _socket(img: ImageDir, table: FileTable, rec: FileRecord, pid: int, fd: int) -> None:
    with unixsk.take(pid, fd) as s:
        if s.family == socket.AF_UNIX:
            key = (rec.dev, rec.inode)
            table._recording.add(key)
            try:
                unixsk.fill(img, table.diag, rec, pid, fd, s,
                            lambda own: _in_flight(img, table, pid, fd, own))
            finally:
                table._recording.discard(key)
        elif s.family in (socket.AF_INET, socket.AF_INET6):
            inetsk.fill(img, table.repaired, rec, pid, fd, s)
        elif s.family == socket.AF_NETLINK:
            netlinksk.fill(rec, pid, fd, s)
        elif s.family == socket.AF_PACKET:
            packetsk.fill(rec, pid, fd, s)
        else:
            raise unixsk.refuse_family(pid, fd, s, rec.link)


def _in_flight(img: ImageDir, table: FileTable, pid: int, fd: int, own: int) -> int:
    """The file id of a file in flight in the queue of task `pid`'s socket `fd`, given
    our own descriptor of it (kept until the dump ends, for kcmp)."""
    table._own.append(own)
    me = os.getpid()
    st = os.fstat(own)
    info = read_fd(me, own)
    key = (st.st_dev, st.st_ino)
    fid = _same_description(table, key, me, own)
    if fid is not None:
        return fid
    kind = _type_of(st, info.target)
    if key in table._recording or kind not in ("pipe", "socket", "anon_inode"):
        what = "a cycle of sockets" if key in table._recording else f"a {kind} file"
        raise EngineError("files", f"task {pid} fd {fd}: cannot dump {what} in flight in a "
                                   f"unix socket ({info.target}): not supported by this "
                                   "engine")
    return _new_file(img, table, me, info, st).id


def _new_file(img: ImageDir, table: FileTable, pid: int, info: FdInfo,
              st: os.stat_result) -> FileRecord:
    """Record a new open file description. Its id is taken first: files found in flight
    in a socket's queue are recorded while it is, and come after it."""
    fid = len(table.files)
    table.files.append(FileRecord(id=fid, type="other", flags=0))  # the slot, filled here
    table.files[fid] = rec = _record(img, table, pid, info, st, fid)
    table._by_inode.setdefault((st.st_dev, st.st_ino), []).append((fid, pid, info.fd))
    return rec


def _save_file(img: ImageDir, link: str, what: str, name: str, size: int) -> list[list[int]]:
    """Copy the data extents of an unlinked file (reopened through `link`, a /proc magic
    link: a description of our own, so the task's offset is untouched) into the image,
    back to back; returns the extents (holes stay holes when restored)."""
    try:
        src = os.open(link, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise EngineError("files", f"cannot reopen unlinked file {what}: "
                                   f"{e.strerror}") from None
    out = img.create_file(name)
    try:
        extents = _extents(src, size)
        for start, end in extents:
            pos = start
            while pos < end:
                n = os.sendfile(out, src, pos, end - pos)
                if n == 0:
                    raise EngineError("files", f"unlinked file {what}: read {pos} of "
                                               f"{size} bytes")
                pos += n
    except OSError as e:
        raise EngineError("files", f"unlinked file {what}: {e.strerror}") from None
    finally:
        os.close(src)
        os.close(out)
    return extents


def _extents(fd: int, size: int) -> list[list[int]]:
    """[start, end) of the data of a file (SEEK_DATA/SEEK_HOLE; all of it where the file
    system cannot tell)."""
    out: list[list[int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            if e.errno == errno.EINVAL:
                return [[0, size]] if size else []
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        out.append([start, end])
        pos = end
    return out


def _save_pipe(img: ImageDir, pid: int, fd: int, name: str) -> int:
    """Save the unread data of a pipe without consuming it; returns its capacity."""
    try:
        src = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise EngineError("files", f"cannot open pipe {pid}/{fd}: {e.strerror}") from None
    rd = wr = -1
    try:
        size = fcntl.fcntl(src, uapi.F_GETPIPE_SZ)
        queued = int.from_bytes(fcntl.ioctl(src, uapi.FIONREAD, b"\0\0\0\0"), "little")
        data = b""
        if queued:
            rd, wr = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            fcntl.fcntl(wr, uapi.F_SETPIPE_SZ, size)
            got = syscall(uapi.SYS_tee, src, wr, queued, _SPLICE_F_NONBLOCK)
            data = os.read(rd, got) if got else b""
            if len(data) != queued:
                raise EngineError("files", f"pipe {pid}/{fd}: copied {len(data)} of "
                                           f"{queued} queued bytes")
        img.write_bytes(name, data)
        return size
    except OSError as e:
        raise EngineError("files", f"pipe {pid}/{fd}: {e.strerror}") from None
    finally:
        for f in (src, rd, wr):
            if f >= 0:
                os.close(f)
