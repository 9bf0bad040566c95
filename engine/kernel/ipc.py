"""SysV IPC and POSIX message queue syscalls, and a thread that works in a task's ipc
namespace.

SysV objects and POSIX queues belong to an ipc namespace, and a thread's ipc namespace
is its own (setns(CLONE_NEWIPC) is per thread): `NsThread` joins the namespace of a task
once and runs the engine's calls there, so /proc/sysvipc/*, /proc/sys/kernel/*_next_id
and shmget()/mq_open() all see that namespace. Every wrapper raises OSError on failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from engine.kernel import uapi
from engine.kernel.structs import IpcPerm, MqAttr, MsqidDs, SemBuf, SemidDs, ShmidDs
from engine.kernel.sys import setns, syscall

T = TypeVar("T")
_IPC_SYSCTL = "/proc/sys/kernel/"
_MQ_SYSCTL = "/proc/sys/fs/mqueue/"
#: the ipc namespace's own sysctls (name under /proc/sys -> path), in restore order
SYSCTLS = {f"kernel/{n}": _IPC_SYSCTL + n for n in
           ("msgmax", "msgmnb", "msgmni", "sem", "shmall", "shmmax", "shmmni")} | {
    f"fs/mqueue/{n}": _MQ_SYSCTL + n for n in
    ("msg_default", "msg_max", "msgsize_default", "msgsize_max", "queues_max")} | {
    "kernel/shm_rmid_forced": _IPC_SYSCTL + "shm_rmid_forced"}
#: the next id a new object of each kind gets (-1: the lowest free one)
NEXT_ID = {kind: f"{_IPC_SYSCTL}{kind}_next_id" for kind in ("shm", "sem", "msg")}


class NsThread:
    """A thread joined to the ipc namespace of `ns_path` (/proc/PID/ns/ipc) that runs the
    calls given to `call()` one at a time, each within `timeout` seconds. The thread
    leaves with close(), dropping its hold on the namespace."""

    def __init__(self, ns_path: str, timeout: float) -> None:
        self.timeout = timeout
        self._jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]] | None] = \
            queue.Queue()
        ready: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(ns_path, ready),
                                        name="ipc-ns", daemon=True)
        self._thread.start()
        err = ready.get(timeout=timeout)
        if err is not None:
            self._thread.join(timeout)
            raise err

    def _run(self, ns_path: str, ready: queue.Queue[BaseException | None]) -> None:
        try:
            fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd, uapi.CLONE_NEWIPC)
            finally:
                os.close(fd)
        except OSError as e:
            ready.put(OSError(e.errno, f"cannot join the ipc namespace {ns_path}: "
                                       f"{e.strerror}"))
            return
        ready.put(None)
        while (job := self._jobs.get()) is not None:
            fn, out = job
            try:
                out.put((True, fn()))
            except BaseException as e:  # noqa: BLE001 (handed to the caller)
                out.put((False, e))

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) in the namespace; its result, or its exception raised here."""
        out: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self._jobs.put((lambda: fn(*args), out))
        try:
            ok, value = out.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(f"ipc namespace call {getattr(fn, '__name__', fn)} took "
                               f"more than {self.timeout} s") from None
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def close(self) -> None:
        """End the thread (it finishes the call it may still be in)."""
        self._jobs.put(None)
        self._thread.join(self.timeout)


@contextlib.contextmanager
def effective_ids(uid: int, gid: int) -> Iterator[None]:
    """This thread's effective uid/gid for the block (raw syscalls: per thread, unlike
    libc's). A creator's ids become an object's cuid/cgid; the owner of a namespace's
    sysctls is its user namespace's root. Back to 0 after, which gives the capabilities
    back (real and saved ids stay 0 throughout)."""
    syscall(uapi.SYS_setresgid, -1, gid, -1)
    try:
        syscall(uapi.SYS_setresuid, -1, uid, -1)
        try:
            yield
        finally:
            syscall(uapi.SYS_setresuid, -1, 0, -1)
    finally:
        syscall(uapi.SYS_setresgid, -1, 0, -1)


def read_sysctl(path: str) -> str:
    """A sysctl's text, without the newline."""
    with open(path, encoding="ascii") as f:
        return f.read().strip()


def write_sysctl(path: str, value: str) -> None:
    """Write a sysctl (one write: the kernel parses what it gets at once)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode("ascii") + b"\n")
    finally:
        os.close(fd)


def set_perm(perm: IpcPerm, uid: int, gid: int, mode: int) -> None:
    """Fill the fields IPC_SET takes from a perm struct."""
    perm.uid, perm.gid, perm.mode = uid, gid, mode & 0o777


# ---- shared memory --------------------------------------------------------------------


def shmget(key: int, size: int, flags: int) -> int:
    """shmget(2): the segment's id."""
    return syscall(uapi.SYS_shmget, key, size, flags)


def shmat(shmid: int, flags: int, addr: int = 0) -> int:
    """shmat(2): the address it is attached at."""
    return syscall(uapi.SYS_shmat, shmid, addr, flags)


def shmdt(addr: int) -> None:
    """shmdt(2)."""
    syscall(uapi.SYS_shmdt, addr)


def shm_stat(shmid: int) -> ShmidDs:
    """shmctl(IPC_STAT)."""
    ds = ShmidDs()
    syscall(uapi.SYS_shmctl, shmid, uapi.IPC_STAT, ds)
    return ds


def shmctl(shmid: int, cmd: int, ds: ShmidDs | None = None) -> None:
    """shmctl(2) with a command that returns nothing (IPC_SET, IPC_RMID, SHM_LOCK)."""
    syscall(uapi.SYS_shmctl, shmid, cmd, ds)


# ---- semaphores -----------------------------------------------------------------------


def semget(key: int, nsems: int, flags: int) -> int:
    """semget(2): the set's id."""
    return syscall(uapi.SYS_semget, key, nsems, flags)


def sem_stat(semid: int) -> SemidDs:
    """semctl(IPC_STAT)."""
    ds = SemidDs()
    syscall(uapi.SYS_semctl, semid, 0, uapi.IPC_STAT, ds)
    return ds


def sem_set(semid: int, ds: SemidDs) -> None:
    """semctl(IPC_SET)."""
    syscall(uapi.SYS_semctl, semid, 0, uapi.IPC_SET, ds)


def sem_values(semid: int, nsems: int) -> list[int]:
    """semctl(GETALL)."""
    values = (ctypes.c_ushort * nsems)()
    syscall(uapi.SYS_semctl, semid, 0, uapi.GETALL, values)
    return list(values)


def sem_pid(semid: int, num: int) -> int:
    """semctl(GETPID): the last process that changed semaphore `num`, as the calling
    thread's pid namespace sees it (0: none, or not visible there)."""
    return syscall(uapi.SYS_semctl, semid, num, uapi.GETPID, 0)


def sem_setval(semid: int, num: int, value: int) -> None:
    """semctl(SETVAL): the value, and the caller as the semaphore's last pid."""
    syscall(uapi.SYS_semctl, semid, num, uapi.SETVAL, value)


def semop(semid: int, ops: list[tuple[int, int, int]]) -> None:
    """semop(2) with (num, op, flags) operations, done at once."""
    arr = (SemBuf * len(ops))(*(SemBuf(n, o, f) for n, o, f in ops))
    syscall(uapi.SYS_semop, semid, arr, len(ops))


def semctl_rmid(semid: int) -> None:
    """semctl(IPC_RMID)."""
    syscall(uapi.SYS_semctl, semid, 0, uapi.IPC_RMID, 0)


# ---- message queues -------------------------------------------------------------------


def msgget(key: int, flags: int) -> int:
    """msgget(2): the queue's id."""
    return syscall(uapi.SYS_msgget, key, flags)


def msg_stat(msqid: int) -> MsqidDs:
    """msgctl(IPC_STAT)."""
    ds = MsqidDs()
    syscall(uapi.SYS_msgctl, msqid, uapi.IPC_STAT, ds)
    return ds


def msgctl(msqid: int, cmd: int, ds: MsqidDs | None = None) -> None:
    """msgctl(2) with a command that returns nothing (IPC_SET, IPC_RMID)."""
    syscall(uapi.SYS_msgctl, msqid, cmd, ds)


def msg_copy(msqid: int, index: int, size: int) -> tuple[int, bytes]:
    """The message at position `index` of the queue, left in it (MSG_COPY, which needs
    CONFIG_CHECKPOINT_RESTORE): (type, text); `size` must hold the largest message."""
    buf = ctypes.create_string_buffer(8 + size)
    n = syscall(uapi.SYS_msgrcv, msqid, buf, size, index,
                uapi.IPC_NOWAIT | uapi.MSG_COPY)
    return int.from_bytes(buf.raw[:8], "little", signed=True), buf.raw[8:8 + n]


def msgsnd(msqid: int, mtype: int, text: bytes) -> None:
    """msgsnd(2), never waiting for room."""
    buf = ctypes.create_string_buffer(mtype.to_bytes(8, "little", signed=True) + text,
                                      8 + len(text))
    syscall(uapi.SYS_msgsnd, msqid, buf, len(text), uapi.IPC_NOWAIT)


# ---- POSIX message queues -------------------------------------------------------------


def mq_open(name: str, flags: int, mode: int = 0, attr: MqAttr | None = None) -> int:
    """mq_open(3) by the raw syscall: `name` without its leading "/"."""
    path = ctypes.create_string_buffer(os.fsencode(name))
    return syscall(uapi.SYS_mq_open, path, flags, mode, attr)


def mq_unlink(name: str) -> None:
    """mq_unlink(3): `name` without its leading "/"."""
    syscall(uapi.SYS_mq_unlink, ctypes.create_string_buffer(os.fsencode(name)))


def mq_getattr(fd: int) -> MqAttr:
    """mq_getattr(3)."""
    attr = MqAttr()
    syscall(uapi.SYS_mq_getsetattr, fd, None, attr)
    return attr


def mq_receive(fd: int, size: int) -> tuple[int, bytes]:
    """The first message (highest priority, oldest): (priority, data). On a blocking
    description with an empty queue: ETIMEDOUT at once (an expired timeout)."""
    buf = ctypes.create_string_buffer(size)
    prio = ctypes.c_uint()
    expired = (ctypes.c_long * 2)(0, 0)
    n = syscall(uapi.SYS_mq_timedreceive, fd, buf, size, prio, expired)
    return prio.value, buf.raw[:n]


def mq_send(fd: int, data: bytes, prio: int) -> None:
    """mq_send(3) with an expired timeout: ETIMEDOUT rather than waiting for room."""
    buf = ctypes.create_string_buffer(data, max(len(data), 1))
    expired = (ctypes.c_long * 2)(0, 0)
    syscall(uapi.SYS_mq_timedsend, fd, buf, len(data), prio, expired)
