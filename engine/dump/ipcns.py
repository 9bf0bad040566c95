"""The tree's own ipc namespace (ipc.json): its sysctls and SysV objects, read from a
thread that joined it (engine.kernel.ipc.NsThread), without changing what the tree sees.

- Segments: /proc/sysvipc/shm, the content through an attach of our own (SHM_RDONLY):
  its data extents from the object (map_files, SEEK_DATA), read through the mapping.
- Semaphore sets: values (GETALL) and each semaphore's last pid (GETPID), told apart as a
  task of the tree, a process gone since (its number in the tree's pid namespace, asked
  from the root by an injected GETPID), or one the tree's pid namespace does not see.
- Message queues: msg_qbytes (IPC_STAT) and every message copied (msgrcv MSG_COPY, which
  leaves the queue as it was).

Refused while the tree runs on (each names the object): SysV attaches in a tree that
shares the engine's ipc namespace (its objects outlive the tree and are the host's), an
attach that does not map its segment whole, tasks in another ipc namespace than the
root's, hugetlb segments, a message MSG_COPY cannot read, a gone last pid whose number a
task now has.

Not seen, so neither dumped nor refused: semaphore undo adjustments (semop SEM_UNDO).
No interface shows them, and kcmp(KCMP_SYSVSEM) cannot tell a task that has some: every
task that ever made a thread has an undo list (glibc's threads share it, CLONE_SYSVSEM).
A restored task has none pending.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.dump import namespaces
from engine.dump.pages import Run, Staging, write_pages
from engine.dump.shmem import data_runs
from engine.errors import EngineError
from engine.images import ipcns, names
from engine.images.imgdir import ImageDir
from engine.images.ipcns import IpcImage, MsgQueue, Semaphore, SemSet, ShmSegment
from engine.images.records import Vma
from engine.kernel import ipc, uapi
from engine.kernel import sys as ksys
from engine.kernel.inject import Injector
from engine.proc import sysvipc

IPC_TIMEOUT = 10.0  # for each call in the namespace (none of them waits)
_INJECT_TIMEOUT = 10.0


@dataclass
class _Tables:
    """What one visit of the namespace read."""

    sysctls: dict[str, str]
    shm: list[dict[str, int]]
    sem: list[tuple[dict[str, int], list[int], list[int]]]  # row, values, pids (ours)
    msg: list[tuple[dict[str, int], int, list[tuple[int, bytes]]]]  # row, qbytes, msgs


def dump(img: ImageDir, root: int, live: list[int], vmas: dict[int, Sequence[Vma]],
         tasks: Callable[[], dict[int, int]], staging: Staging) -> bool:
    """Write ipc.json for the tree rooted at `root` when it has an ipc namespace of its
    own (True), or refuse what depends on the engine's. `live`: the live processes,
    `vmas`: each one's VMAs, `tasks`: gives every task's pid as the engine sees it -> its
    pid in its own pid namespace (zombies included: a semaphore's last pid may be one),
    asked only for a namespace of the tree's own."""
    own = namespaces.inode(os.getpid(), "ipc")
    tree = _tree_namespace(root, live)
    attached = {pid: [v for v in vs if v.kind == "sysv"] for pid, vs in vmas.items()}
    if tree == own:
        for pid, vs in attached.items():
            if vs:
                raise EngineError("memory", f"task {pid}: vma {vs[0].start:#x}-{vs[0].end:#x}"
                                            f" ({vs[0].path}): SysV shared memory of the "
                                            "engine's own ipc namespace, which outlives the "
                                            "tree: only an ipc namespace of the tree's own "
                                            "is dumped")
        return False
    ns = ipc.NsThread(f"/proc/{root}/ns/ipc", IPC_TIMEOUT)
    try:
        tables = ns.call(_read_tables)
        sizes = {r["id"]: ipcns.mapped_size(r["size"]) for r in tables.shm}
        for pid, vs in attached.items():
            try:
                ipcns.attaches(vs, sizes)
            except ValueError as e:
                raise EngineError("memory", f"task {pid}: {e}: cannot be attached so "
                                            "again") from None
        shm = [_segment(img, ns, row, staging) for row in tables.shm]
    finally:
        ns.close()
    sems = _sem_sets(root, tables.sem, tasks())
    msgs = [_queue(img, row, qbytes, copies) for row, qbytes, copies in tables.msg]
    img.write_json(names.IPC, IpcImage(tables.sysctls, shm, sems, msgs))
    return True


def _tree_namespace(root: int, live: list[int]) -> int:
    """The root's ipc namespace, which every task of the tree must share."""
    tree = namespaces.inode(root, "ipc")
    for pid in live:
        ino = namespaces.inode(pid, "ipc")
        if ino != tree:
            raise EngineError("memory", f"task {pid} is in ipc namespace {ino}, the root "
                                        f"{root} in {tree}: an ipc namespace below the "
                                        "root's is not supported")
    return tree


def _read_tables() -> _Tables:
    """In the namespace: its sysctls, objects, semaphore values and pids, messages."""
    sysctls = {name: " ".join(ipc.read_sysctl(path).split())
               for name, path in ipc.SYSCTLS.items()}
    sem = []
    for row in sysvipc.read("sem"):
        n = row["nsems"]
        sem.append((row, ipc.sem_values(row["id"], n),
                    [ipc.sem_pid(row["id"], i) for i in range(n)]))
    msg = []
    for row in sysvipc.read("msg"):
        qbytes = ipc.msg_stat(row["id"]).qbytes
        msg.append((row, qbytes, _copy_messages(row, int(sysctls["kernel/msgmax"]))))
    return _Tables(sysctls, sysvipc.read("shm"), sem, msg)


def _copy_messages(row: dict[str, int], msgmax: int) -> list[tuple[int, bytes]]:
    out = []
    for i in range(row["qnum"]):
        try:
            out.append(ipc.msg_copy(row["id"], i, max(row["cbytes"], 1)))
        except OSError as e:
            why = {errno.ENOSYS: "msgrcv MSG_COPY needs a kernel with "
                                 "CONFIG_CHECKPOINT_RESTORE",
                   errno.EINVAL: f"it may be larger than kernel/msgmax ({msgmax}), the most "
                                 "MSG_COPY reads"}.get(e.errno or 0, e.strerror or "")
            raise EngineError("memory", f"message queue {row['id']} (key {row['key']:#x}): "
                                        f"message {i} cannot be read without taking it: "
                                        f"{why}") from None
    return out


def _segment(img: ImageDir, ns: ipc.NsThread, row: dict[str, int],
             staging: Staging) -> ShmSegment:
    """A segment and its content (an attach of our own, read-only, for the copy)."""
    shmid, size = row["id"], row["size"]
    mapped = ipcns.mapped_size(size)
    try:
        addr = ns.call(ipc.shmat, shmid, uapi.SHM_RDONLY)
    except OSError as e:
        raise EngineError("memory", f"shm segment {shmid}: cannot attach it to copy it: "
                                    f"{e.strerror}") from None
    try:
        runs = _data_runs(shmid, addr, mapped)
        mem = os.open("/proc/self/mem", os.O_RDONLY | os.O_CLOEXEC)
        try:
            write_pages(img, names.sysv_shm_pagemap(shmid), names.sysv_shm_pages(shmid),
                        runs, 0, mem, staging, addr)
        finally:
            os.close(mem)
    finally:
        ipc.shmdt(addr)
    return ShmSegment(shmid, row["key"], row["perms"], row["uid"], row["gid"], row["cuid"],
                      row["cgid"], size, names.sysv_shm_pagemap(shmid),
                      names.sysv_shm_pages(shmid))


def _data_runs(shmid: int, addr: int, mapped: int) -> list[Run]:
    """The segment's data extents, found on the object behind our attach at `addr`.
    Read through the mapping: pread stops at the end of a segment that is no page
    multiple, the mapping reads that page's tail as zeros."""
    fd = os.open(f"/proc/self/map_files/{addr:x}-{addr + mapped:x}",
                 os.O_RDONLY | os.O_CLOEXEC)
    try:
        if ksys.fs_type(fd) == uapi.HUGETLBFS_MAGIC:
            raise EngineError("memory", f"shm segment {shmid}: a hugetlb segment "
                                        "(SHM_HUGETLB) is not supported")
        return [Run(r.addr, r.length, True) for r in data_runs(fd, mapped)]
    finally:
        os.close(fd)


def _sem_sets(root: int, raw: list[tuple[dict[str, int], list[int], list[int]]],
              tasks: dict[int, int]) -> list[SemSet]:
    """The sets, each semaphore's last pid told apart (see the module docstring)."""
    gone = [(row["id"], i) for row, _, pids in raw for i, p in enumerate(pids)
            if p and p not in tasks]
    inner = _pids_in_tree(root, gone) if gone else {}
    taken = set(tasks.values())
    out = []
    for row, values, pids in raw:
        sems = []
        for i, (value, pid) in enumerate(zip(values, pids)):
            if not pid:
                # no last pid the engine sees: never changed, unless by one it cannot see
                sems.append(Semaphore(value, "outside" if value else "none"))
            elif pid in tasks:
                sems.append(Semaphore(value, "task", pid))
            elif inner[(row["id"], i)] == 0:
                sems.append(Semaphore(value, "outside"))
            elif inner[(row["id"], i)] in taken:
                raise EngineError("memory", f"semaphore set {row['id']} #{i}: last changed "
                                            f"by pid {inner[(row['id'], i)]}, gone, whose "
                                            "number a task of the tree has now: it cannot "
                                            "be given back")
            else:
                sems.append(Semaphore(value, "gone", inner[(row["id"], i)]))
        sets = SemSet(row["id"], row["key"], row["perms"], row["uid"], row["gid"],
                      row["cuid"], row["cgid"], sems, row["otime"] != 0)
        out.append(sets)
    return out


def _pids_in_tree(root: int, sems: list[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """GETPID of each semaphore as the tree's pid namespace sees it (0: it does not),
    asked by the root task (a thread cannot join another pid namespace)."""
    out = {}
    with Injector(root, _INJECT_TIMEOUT) as inj:
        for semid, num in sems:
            res = inj.syscall(uapi.SYS_semctl, semid, num, uapi.GETPID, 0)
            if res < 0:
                raise EngineError("memory", f"semaphore set {semid} #{num}: GETPID in task "
                                            f"{root}: {os.strerror(-res)}")
            out[(semid, num)] = res
    return out


def _queue(img: ImageDir, row: dict[str, int], qbytes: int,
           copies: list[tuple[int, bytes]]) -> MsgQueue:
    content = names.sysv_msg_content(row["id"])
    img.write_bytes(content, b"".join(text for _, text in copies))
    return MsgQueue(row["id"], row["key"], row["perms"], row["uid"], row["gid"], row["cuid"],
                    row["cgid"], qbytes, [t for t, _ in copies], [len(t) for _, t in copies],
                    content)
