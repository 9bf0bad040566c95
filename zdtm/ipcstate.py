"""What the tasks of a tree can see of an ipc namespace of their own: its SysV objects
and its sysctls, read from outside, independently of any engine.

SysV objects belong to an ipc namespace, which a thread may join by itself (setns is per
thread for ipc): a short-lived thread joins the tree's namespace and reads
/proc/sysvipc/{shm,sem,msg} (which show the reader's namespace), each semaphore set's
values and last pids (semctl GETALL, GETPID), each queue's msg_qbytes (IPC_STAT) and
messages (msgrcv MSG_COPY: copied, not taken), each segment's data (an attach of its own,
read-only, dropped at once) and the namespace's sysctls under /proc/sys.

Compared per object: id (the object's name), key, mode, owner and creator, size and
attach count, content digest and data layout of a segment; values, last pids (as the
tree's own pid of a task of the tree, "none", or "outside") and whether a semop changed
a set (otime set); msg_qbytes, message count, bytes, and a digest of the types and texts
in queue order. Not compared: times (atime/dtime/ctime/otime/stime/rtime: no interface
sets them) and the pids of the last operations on segments and queues (cpid, lpid,
lspid, lrpid: the kernel records whoever did it, the harness's own attach included).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import threading
from collections.abc import Mapping

from zdtm import filestate, proc
from zdtm.plumbing import libc

#: one namespace: object ("shm 3", "sem 0", "msg 1", "sysctls") -> field -> value
IpcState = dict[str, dict[str, str]]

_CLONE_NEWIPC = 0x08000000
_SYS_SHMAT, _SYS_SHMDT, _SYS_SEMCTL, _SYS_MSGRCV, _SYS_MSGCTL = 30, 67, 66, 70, 71
_SHM_RDONLY = 0o10000
_IPC_STAT, _GETPID, _GETALL = 2, 11, 13
_IPC_NOWAIT, _MSG_COPY = 0o4000, 0o40000
_MSQID_DS_SIZE = 120  # struct msqid64_ds on x86_64
_MSG_QBYTES_OFFSET = 88  # after ipc64_perm (48) and stime, rtime, ctime, cbytes, qnum
SYSCTLS = ("kernel/msgmax", "kernel/msgmnb", "kernel/msgmni", "kernel/sem", "kernel/shmall",
           "kernel/shmmax", "kernel/shmmni", "kernel/shm_rmid_forced",
           "fs/mqueue/msg_default", "fs/mqueue/msg_max", "fs/mqueue/msgsize_default",
           "fs/mqueue/msgsize_max", "fs/mqueue/queues_max")
_PAGE = 4096


def _call(nr: int, *args: int | ctypes.Array[ctypes.c_char] | ctypes.c_void_p) -> int:
    res = int(libc.syscall(ctypes.c_long(nr), *[
        ctypes.c_long(a) if isinstance(a, int) else a for a in args]))
    if res == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res


def _owner(row: Mapping[str, int]) -> dict[str, str]:
    return {"key": f"{row['key'] & 0xFFFFFFFF:#x}", "mode": f"{row['perms']:o}",
            "owner uid:gid": f"{row['uid']}:{row['gid']}",
            "creator uid:gid": f"{row['cuid']}:{row['cgid']}"}


def _segment(row: Mapping[str, int]) -> dict[str, str]:
    """A segment, its data read through a read-only attach of this process."""
    out = _owner(row) | {"size": str(row["size"]), "attaches": str(row["nattch"])}
    mapped = (row["size"] + _PAGE - 1) & ~(_PAGE - 1)
    addr = _call(_SYS_SHMAT, row["shmid"], 0, _SHM_RDONLY)
    try:
        fd = os.open(f"/proc/self/map_files/{addr:x}-{addr + mapped:x}",
                     os.O_RDONLY | os.O_CLOEXEC)
    finally:
        _call(_SYS_SHMDT, addr)
    try:
        out["data layout"] = filestate.data_layout(fd, row["size"])
        out["content sha256"] = filestate.content_digest(fd, row["size"])
    finally:
        os.close(fd)
    return out


def _sem_set(row: Mapping[str, int], inner: Mapping[int, int]) -> dict[str, str]:
    n = row["nsems"]
    values = (ctypes.c_ushort * n)()
    _call(_SYS_SEMCTL, row["semid"], 0, _GETALL, ctypes.cast(values, ctypes.c_void_p))
    last = []
    for i in range(n):
        pid = _call(_SYS_SEMCTL, row["semid"], i, _GETPID, 0)
        last.append("none" if pid == 0 else f"pid {inner[pid]}" if pid in inner
                    else "outside")
    return _owner(row) | {"semaphores": str(n), "values": " ".join(map(str, values)),
                          "last pids": ", ".join(last),
                          "changed by semop": "yes" if row["otime"] else "no"}


def _queue(row: Mapping[str, int]) -> dict[str, str]:
    ds = ctypes.create_string_buffer(_MSQID_DS_SIZE)
    _call(_SYS_MSGCTL, row["msqid"], _IPC_STAT, ds)
    qbytes = int.from_bytes(ds.raw[_MSG_QBYTES_OFFSET:_MSG_QBYTES_OFFSET + 8], "little")
    out = _owner(row) | {"msg_qbytes": str(qbytes), "messages": str(row["qnum"]),
                         "bytes": str(row["cbytes"])}
    size = max(row["cbytes"], 1)
    buf = ctypes.create_string_buffer(8 + size)
    h = hashlib.sha256()
    for i in range(row["qnum"]):
        try:
            n = _call(_SYS_MSGRCV, row["msqid"], buf, size, i, _IPC_NOWAIT | _MSG_COPY)
        except OSError as e:
            if e.errno == errno.ENOSYS:
                out["messages sha256"] = "not read: msgrcv MSG_COPY needs " \
                                         "CONFIG_CHECKPOINT_RESTORE"
                return out
            raise
        h.update(buf.raw[:8] + n.to_bytes(8, "little") + buf.raw[8:8 + n])
    out["messages sha256"] = h.hexdigest()[:16]
    return out


def _read(inner: Mapping[int, int]) -> IpcState:
    """The calling thread's ipc namespace (see the module docstring)."""
    out: IpcState = {"sysctls": {name: " ".join(proc.read_text(f"/proc/sys/{name}").split())
                                 for name in SYSCTLS}}
    for row in proc.parse_sysvipc(proc.read_text("/proc/sysvipc/shm")):
        out[f"shm {row['shmid']}"] = _segment(row)
    for row in proc.parse_sysvipc(proc.read_text("/proc/sysvipc/sem")):
        out[f"sem {row['semid']}"] = _sem_set(row, inner)
    for row in proc.parse_sysvipc(proc.read_text("/proc/sysvipc/msg")):
        out[f"msg {row['msqid']}"] = _queue(row)
    return out


def capture(pid: int, inner: Mapping[int, int], timeout: float = 10.0) -> IpcState:
    """The ipc namespace of `pid` as its tasks see it; `inner`: every task of the tree,
    pid as the harness sees it -> its pid in its own namespace (for semaphores' last
    pids)."""
    result: dict[str, object] = {}

    def visit() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWIPC) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns: {os.strerror(err)}")
            finally:
                os.close(fd)
            result["state"] = _read(inner)
        except OSError as e:
            result["error"] = e

    # The thread ends with the visit: it never goes back to the harness's namespace.
    t = threading.Thread(target=visit, name=f"ipc-{pid}", daemon=True)
    t.start()
    t.join(timeout)
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    if "state" not in result:
        raise TimeoutError(f"reading the ipc namespace of pid {pid} timed out")
    return result["state"]  # type: ignore[return-value]
