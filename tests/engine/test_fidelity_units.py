"""Unit tests of the planning code for restored task/file/memory state (no processes)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from engine.dump import anonfd, notify, sessions
from engine.dump.tree import FrozenTree, Proc
from engine.errors import EngineError
from engine.images.records import FileRecord, MmCore, RecordError, ThreadCore, Vma
from engine.kernel import blob, uapi
from engine.proc.fdinfo import FdInfo
from engine.restore import layout, spawn
from engine.restore.pty import devpts_mount_args

PAGE = 4096


def _tree(*procs: Proc) -> FrozenTree:
    by_pid = {p.pid: p for p in procs}
    for p in procs:
        if p.ppid in by_pid:
            by_pid[p.ppid].children.append(p.pid)
    return FrozenTree(root=procs[0].pid, procs=by_pid, seized=[])


def test_sessions_accepts_a_sibling_made_child() -> None:
    """N is in S's session, its parent T is not: S (T's child, alive) can create it."""
    sessions.check(_tree(Proc(10, 1, 10, 10, "alive"), Proc(11, 10, 11, 11, "alive"),
                         Proc(12, 10, 11, 11, "alive")))


def test_sessions_refuses_a_group_without_leader() -> None:
    """X's group 11 is no task of the tree and not its parent's: refused, named."""
    with pytest.raises(EngineError, match="task 12: process group 11 has no leader"):
        sessions.check(_tree(Proc(10, 1, 10, 10, "alive"), Proc(12, 10, 11, 10, "alive")))


def test_sessions_refuses_a_session_no_live_sibling_is_in() -> None:
    """The only other task in session 11 is a zombie: nobody can create N there."""
    with pytest.raises(EngineError, match="task 12: session 11 is not its parent's"):
        sessions.check(_tree(Proc(10, 1, 10, 10, "alive"), Proc(11, 10, 11, 11, "zombie"),
                             Proc(12, 10, 11, 11, "alive")))


def _setup(pid: int, pgid: int | None, sid: int | None,
           zombie: int | None = None) -> spawn.TaskSetup:
    return spawn.TaskSetup(pid, pgid, sid, [], "/", 0o22, [], zombie_status=zombie)


def test_plan_sessions_gives_the_child_to_its_sibling() -> None:
    """N (session 11, parent T in session 10) is created by sibling S, not by T."""
    t, s, n = _setup(10, 10, 10), _setup(11, 11, 11), _setup(12, 11, 11)
    t.children = [s, n]
    spawn.plan_sessions(t)
    assert s.adopted == [n] and n.by_sibling
    assert t.made_first() == [s]


def test_plan_sessions_refuses_without_a_sibling() -> None:
    t, n = _setup(10, 10, 10), _setup(12, 11, 11)
    t.children = [n]
    with pytest.raises(EngineError, match="task 12: session 11"):
        spawn.plan_sessions(t)


def _mm(vmas: list[Vma]) -> MmCore:
    return MmCore(start_code=0, end_code=0, start_data=0, end_data=0, start_brk=0, brk=0,
                  start_stack=0, arg_start=0, arg_end=0, env_start=0, env_end=0,
                  auxv=[0, 0], vmas=vmas, pages="q")


def test_layout_restores_hints_and_mlock() -> None:
    """sr/rr become madvise(SEQUENTIAL/RANDOM), lo becomes mlock of the whole VMA."""
    vmas = [Vma(0x10000 * (i + 1), 0x10000 * (i + 1) + PAGE, 3, 0x22, 0, "anon",
                vmflags=["rd", "wr", flag]) for i, flag in enumerate(("sr", "rr", "lo"))]
    w = layout.Window(1 << 40, 1 << 20, (1 << 40) + (2 << 20))
    t = layout.layout_table(_mm(vmas), w, [], [], {})
    advice = [(r[0], r[2]) for r in _rows(t, uapi.SYS_madvise)]
    assert (0x10000, uapi.MADV_SEQUENTIAL) in advice and (0x20000, uapi.MADV_RANDOM) in advice
    assert [r[:2] for r in _rows(t, uapi.SYS_mlock)] == [(0x30000, PAGE)]


def _rows(t: blob.Table, nr: int) -> list[tuple[int, ...]]:
    """The arguments of every call of syscall nr the layout table's rows entries make."""
    return [r for i, e in enumerate(t.entries) if e.nr == nr and e.flags & blob.F_ROWS
            for r in t.rows_of(i)]


def test_layout_maps_a_private_memfd_from_its_fd() -> None:
    """A MAP_PRIVATE memfd VMA is an mmap of the memfd's inherited fd at its offset."""
    v = Vma(0x500000, 0x502000, 3, uapi.MAP_PRIVATE, 2 * PAGE, "shmem", path="/memfd:x",
            shmem_id="shmem-9")
    w = layout.Window(1 << 40, 1 << 20, (1 << 40) + (2 << 20))
    t = layout.layout_table(_mm([v]), w, [], [], {"shmem-9": 77})
    m = next(e for e in t.entries if e.nr == uapi.SYS_mmap)
    assert m.args[0] == 0x500000 and m.args[4:6] == (77, 2 * PAGE)
    assert not _rows(t, uapi.SYS_mmap)  # an entry of its own, not an anonymous row


def test_records_check_the_new_ranges() -> None:
    """Extents must be ordered and inside the file; owners and signals in range."""
    FileRecord(1, "reg", 0, path="/f", size=100, extents=[[0, 10], [50, 100]]).validate()
    for bad in (FileRecord(1, "reg", 0, path="/f", size=100, extents=[[50, 100], [0, 10]]),
                FileRecord(1, "reg", 0, path="/f", size=100, extents=[[0, 200]]),
                FileRecord(1, "reg", 0, path="/f", owner_type=7, owner_pid=1),
                FileRecord(1, "reg", 0, path="/f", signum=65)):
        with pytest.raises(RecordError):
            bad.validate()
    th = ThreadCore(1, {"rip": 0, "rsp": 0}, None, 0, sched_policy=4)
    with pytest.raises(RecordError, match="sched policy"):
        th.validate()


def _drain(fd: int) -> int:
    total = 0
    try:
        while True:
            total += os.eventfd_read(fd)
    except BlockingIOError:
        return total


@pytest.mark.parametrize("count", [0, 1, 2, 7])
@pytest.mark.parametrize("semaphore", [False, True])
def test_eventfd_semaphore_probed_where_fdinfo_does_not_say(count: int, semaphore: bool
                                                             ) -> None:
    """Before 6.7 fdinfo has no eventfd-semaphore line: the dump reads the mode off a copy
    of the fd (here our own, through pidfd_getfd) and leaves the counter as it was."""
    fd = os.eventfd(count, os.EFD_NONBLOCK | (os.EFD_SEMAPHORE if semaphore else 0))
    try:
        rec = FileRecord(id=1, type="anon_inode", flags=0)
        info = FdInfo(fd=fd, target="anon_inode:[eventfd]", pos=0, flags=0, mnt_id=0, ino=0,
                      extra={"eventfd-count": f"{count:x}"})
        anonfd.fill(rec, os.getpid(), info)
        assert rec.eventfd is not None
        assert (rec.eventfd.count, rec.eventfd.semaphore) == (count, semaphore)
        assert _drain(fd) == count
    finally:
        os.close(fd)


def test_inode_found_near_the_tasks_cwd_when_no_handle_decodes(tmp_path: Path) -> None:
    """A watched file two levels under the task's cwd is found by its inode number (the
    fallback for filesystems that cannot decode file handles); an inode that is not
    there is not found."""
    target = tmp_path / "a" / "b" / "watched"
    target.parent.mkdir(parents=True)
    target.write_text("x")
    st = target.stat()
    kdev = (os.major(st.st_dev) << 20) | os.minor(st.st_dev)
    child = subprocess.Popen(["sleep", "30"], cwd=tmp_path)
    try:
        assert notify.search_inode(child.pid, kdev, st.st_ino) == str(target)
        assert notify.search_inode(child.pid, kdev, st.st_ino + 1000003) is None
    finally:
        child.kill()
        child.wait()


def test_devpts_mount_takes_rw_ro_as_flags() -> None:
    """mountinfo's super options start with rw/ro, which a legacy-API devpts (6.12 and
    older) refuses in mount(2) data: static/pty_pair [ns] failed there with EINVAL."""
    assert devpts_mount_args("rw,mode=620,ptmxmode=666") == (0, "mode=620,ptmxmode=666")
    assert devpts_mount_args("ro,gid=5,mode=620") == (uapi.MS_RDONLY, "gid=5,mode=620")
    assert devpts_mount_args("rw") == (0, "")
