"""Fill the tree's new ipc namespace with its SysV objects and sysctls (ipc.json).

The engine does it from a thread that joined the namespace (engine.kernel.ipc.NsThread),
after the root is cloned into it and before the root goes on (spawn's `prepare`), so
every object exists when the tasks attach segments (layout) and set semaphores:

- sysctls first raised to what the objects and queues need (the creator of an object
  only gets what its namespace's limits allow: the engine has no CAP_SYS_RESOURCE), the
  dumped values written at the end (`finish`);
- each object made with its id (kernel/{shm,sem,msg}_next_id) by a thread whose
  effective ids are its creator's (cuid/cgid), then given its owner and mode (IPC_SET);
- segments filled through an attach of the engine's; a message queue made while
  kernel/msgmnb is its msg_qbytes (raising it by IPC_SET needs CAP_SYS_RESOURCE), its
  messages sent in order;
- a semaphore keeps its last pid: a task of the tree sets its own (spawn, `task_sems`),
  one gone since is set by a short-lived process the root makes with that pid
  (`gone_sems`), one outside the tree's pid namespace by the engine; a set that a semop
  changed gets an otime (of the restore) from a semop of the engine that changes no
  value;
- segments marked for removal are removed once the tasks attached them (`finish`).

Sysctls of the ipc namespace are owned by its user namespace's root: the thread writes
them with that uid as its effective one (next_id needs CAP_SYS_ADMIN there instead).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from engine.errors import EngineError
from engine.images import DumpImage
from engine.images.fdkinds import MqueueState
from engine.images.ipcns import IpcImage, MsgQueue, SemSet, ShmSegment
from engine.images.records import PAGE_SIZE
from engine.kernel import ipc, uapi
from engine.restore import pages

_TIMEOUT = 10.0
_CREATE = uapi.IPC_CREAT | uapi.IPC_EXCL


@dataclass
class IpcPlan:
    """What the new ipc namespace gets, and who sets which semaphore."""

    image: DumpImage
    record: IpcImage
    queues: list[MqueueState]  # the POSIX queues the root will make there
    root_ids: tuple[int, int] = (0, 0)  # the owner of the namespace's sysctls
    #: task pid -> [(set id, number, value)] it sets itself
    task_sems: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)
    #: pid in the tree's pid namespace -> [(set id, number, value)] a process of that
    #: pid sets, made and reaped by the root before the tree's tasks
    gone_sems: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)
    _ns: ipc.NsThread | None = None

    @property
    def sysv_sizes(self) -> dict[int, int]:
        """Segment id -> what an attach maps."""
        return {s.id: s.mapped_size for s in self.record.shm}

    def prepare(self, root_pid: int) -> None:
        """Make every object in the namespace of `root_pid` (just cloned, waiting)."""
        try:
            self._ns = ipc.NsThread(f"/proc/{root_pid}/ns/ipc", _TIMEOUT)
            self._ns.call(self._fill)
        except OSError as e:
            raise EngineError("fork", f"ipc namespace: {e.strerror or e}") from None

    def finish(self) -> None:
        """Once every task attached its segments: remove those marked for removal, and
        give the namespace its dumped sysctls."""
        assert self._ns is not None
        try:
            self._ns.call(self._finish)
        except OSError as e:
            raise EngineError("mm", f"ipc namespace: {e.strerror or e}") from None

    def close(self) -> None:
        """Let go of the namespace (every path)."""
        if self._ns is not None:
            self._ns.close()
            self._ns = None

    # ---- in the namespace's thread ----------------------------------------------------

    def _fill(self) -> None:
        self._write_sysctls(_raised(self.record, self.queues))
        for seg in self.record.shm:
            self._segment(seg)
        for sems in self.record.sem:
            self._sem_set(sems)
        for q in self.record.msg:
            self._queue(q)

    def _finish(self) -> None:
        for seg in self.record.shm:
            if seg.mode & uapi.SHM_DEST:
                ipc.shmctl(seg.id, uapi.IPC_RMID)
        self._write_sysctls(self.record.sysctls)

    def _write_sysctls(self, values: dict[str, str]) -> None:
        with ipc.effective_ids(*self.root_ids):
            for name, path in ipc.SYSCTLS.items():
                if name in values:
                    try:
                        ipc.write_sysctl(path, values[name])
                    except OSError as e:
                        raise OSError(e.errno, f"sysctl {name} = {values[name]}: "
                                               f"{e.strerror}") from None

    @contextmanager
    def _made(self, kind: str, obj: ShmSegment | SemSet | MsgQueue) -> Iterator[None]:
        """Around the get() that makes `obj`: its id next (the kernel forgets it once
        used; a failed restore leaves it in a namespace that dies with the tree), its
        creator's ids."""
        try:
            ipc.write_sysctl(ipc.NEXT_ID[kind], str(obj.id))
            with ipc.effective_ids(obj.cuid, obj.cgid):
                yield
        except OSError as e:
            raise OSError(e.errno, f"{kind} {obj.id} (key {obj.key:#x}): {e.strerror}") \
                from None

    def _segment(self, seg: ShmSegment) -> None:
        with self._made("shm", seg):
            got = ipc.shmget(seg.key, seg.size, _CREATE | seg.mode & 0o777)
        _same_id("shm segment", seg.id, got)
        ds = ipc.shm_stat(seg.id)
        ipc.set_perm(ds.perm, seg.uid, seg.gid, seg.mode)
        ipc.shmctl(seg.id, uapi.IPC_SET, ds)
        assert self.image.ipc is not None
        addr = ipc.shmat(seg.id, 0)
        src = pages.PageSource.of(self.image, self.image.ipc.pagemaps[seg.id], seg.pages,
                                  None)
        try:
            pages.write_shmem_pages(os.getpid(), src, addr, seg.mapped_size)
        finally:
            src.close()
            ipc.shmdt(addr)
        if seg.mode & uapi.SHM_LOCKED:
            ipc.shmctl(seg.id, uapi.SHM_LOCK)

    def _sem_set(self, sems: SemSet) -> None:
        with self._made("sem", sems):
            got = ipc.semget(sems.key, len(sems.sems), _CREATE | sems.mode & 0o777)
        _same_id("semaphore set", sems.id, got)
        ds = ipc.sem_stat(sems.id)
        ipc.set_perm(ds.perm, sems.uid, sems.gid, sems.mode)
        ipc.sem_set(sems.id, ds)
        changed = next((i for i, s in enumerate(sems.sems) if s.last != "none"), None)
        if sems.operated and changed is not None:
            # otime: a semop that leaves every value as it is (its pid is set again below)
            ipc.semop(sems.id, [(changed, 1, uapi.IPC_NOWAIT), (changed, -1, uapi.IPC_NOWAIT)])
        for i, s in enumerate(sems.sems):
            if s.last == "outside":
                ipc.sem_setval(sems.id, i, s.value)

    def _queue(self, q: MsgQueue) -> None:
        with ipc.effective_ids(*self.root_ids):
            ipc.write_sysctl(ipc.SYSCTLS["kernel/msgmnb"], str(q.qbytes))
        with self._made("msg", q):
            got = ipc.msgget(q.key, _CREATE | q.mode & 0o777)
        _same_id("message queue", q.id, got)
        ds = ipc.msg_stat(q.id)
        ipc.set_perm(ds.perm, q.uid, q.gid, q.mode)
        ipc.msgctl(q.id, uapi.IPC_SET, ds)
        data = memoryview(self.image.dir.read_bytes(q.content))
        for mtype, size in zip(q.types, q.sizes):
            ipc.msgsnd(q.id, mtype, bytes(data[:size]))
            data = data[size:]


def plan(image: DumpImage, queues: list[MqueueState],
         uid_map: list[list[int]] | None, gid_map: list[list[int]] | None) -> IpcPlan | None:
    """The plan of an image whose tree had an ipc namespace of its own (None without);
    the id maps of the tree's new user namespace, if any, name the sysctls' owner."""
    if image.ipc is None:
        return None
    out = IpcPlan(image, image.ipc.record, queues,
                  (_outside(uid_map, 0), _outside(gid_map, 0)))
    for sems in out.record.sem:
        for i, s in enumerate(sems.sems):
            if s.last == "task":
                out.task_sems.setdefault(s.pid, []).append((sems.id, i, s.value))
            elif s.last == "gone":
                out.gone_sems.setdefault(s.pid, []).append((sems.id, i, s.value))
    return out


def _outside(rows: list[list[int]] | None, inside: int) -> int:
    for ins, out, count in rows or []:
        if ins <= inside < ins + count:
            return out + inside - ins
    if rows:
        raise EngineError("read", f"id {inside} is not mapped in the tree's user namespace")
    return inside


def _same_id(what: str, want: int, got: int) -> None:
    if got != want:
        raise OSError(0, f"{what} {want} was made as {got}")


def _raised(rec: IpcImage, queues: list[MqueueState]) -> dict[str, str]:
    """Each limit sysctl at least what making every object (and POSIX queue) needs."""
    need = {
        "kernel/shmmni": [len(rec.shm)],
        "kernel/shmmax": [max((s.size for s in rec.shm), default=0)],
        "kernel/shmall": [sum(s.mapped_size for s in rec.shm) // PAGE_SIZE],
        "kernel/sem": [max((len(s.sems) for s in rec.sem), default=0),
                       sum(len(s.sems) for s in rec.sem), 2, len(rec.sem)],
        "kernel/msgmni": [len(rec.msg)],
        "kernel/msgmax": [max((n for q in rec.msg for n in q.sizes), default=0)],
        "fs/mqueue/queues_max": [len(queues)],
        "fs/mqueue/msg_max": [max((q.maxmsg for q in queues), default=0)],
        "fs/mqueue/msgsize_max": [max((q.msgsize for q in queues), default=0)],
    }
    out = {}
    for name, value in rec.sysctls.items():
        if name in need:
            have = [int(w) for w in value.split()]
            value = " ".join(str(max(h, n)) for h, n in zip(have, need[name] + have[len(
                need[name]):]))
        out[name] = value
    return out
