"""Per-task attributes that are neither memory nor credentials: scheduling policy and
nice (per thread), transparent huge pages disabled and membarrier registrations (per mm),
oom_score_adj (per process), owners and signals of the task's open files.

The table parts run in the task (before its credentials are restored, so the engine's
privileges still allow a lower nice or a real-time policy); oom_score_adj is written by
the engine into /proc, since the task's own credentials may not lower it.
"""

from __future__ import annotations

import os
import struct

from engine.errors import EngineError
from engine.images.records import FileRecord, ShmemEntry, TaskCore, ThreadCore
from engine.kernel import blob, uapi

_PRIO_PROCESS = 0


def sched_part(t: blob.Table, th: ThreadCore) -> None:
    """Policy, rt priority and nice of the calling thread (tid 0 = itself), where they
    differ from what a new thread of the engine inherits."""
    if (th.sched_policy, th.rt_priority) != (os.sched_getscheduler(0), 0):
        param = t.data(struct.pack("<i", th.rt_priority))
        t.add(uapi.SYS_sched_setscheduler, 0, th.sched_policy, param,
              what=f"sched policy {th.sched_policy} of {th.tid}")
    if th.nice != os.getpriority(_PRIO_PROCESS, 0):
        t.add(uapi.SYS_setpriority, _PRIO_PROCESS, 0, th.nice, what=f"nice {th.nice}")


def thp_part(t: blob.Table, core: TaskCore) -> None:
    """PR_SET_THP_DISABLE as dumped (bit 1: PR_THP_DISABLE_EXCEPT_ADVISED)."""
    if core.thp_disable & 1:
        t.add(uapi.SYS_prctl, uapi.PR_SET_THP_DISABLE, 1, core.thp_disable & 2, 0, 0,
              what="prctl(PR_SET_THP_DISABLE)")


def membarrier_part(t: blob.Table, core: TaskCore) -> None:
    """Register the mm again for each membarrier command it was registered for."""
    for bit in range(core.membarrier.bit_length()):
        if core.membarrier & (1 << bit):
            t.add(uapi.SYS_membarrier, 1 << bit, 0, 0, what=f"membarrier register {1 << bit:#x}")


def set_oom_score_adj(real_pid: int, core: TaskCore) -> None:
    """Write the dumped oom_score_adj, if the new task (which inherited the engine's)
    has another."""
    path = f"/proc/{real_pid}/oom_score_adj"
    try:
        with open(path, "r+", encoding="ascii") as f:
            if int(f.read()) != core.oom_score_adj:
                f.seek(0)
                f.write(str(core.oom_score_adj))
    except OSError as e:
        raise EngineError("state", f"task {core.pid}: oom_score_adj "
                                   f"{core.oom_score_adj}: {e.strerror}") from None


def fown_part(t: blob.Table, held: list[tuple[int, FileRecord]]) -> None:
    """F_SETOWN_EX and F_SETSIG on the task's fds whose descriptions had them (every task
    holding one sets the same values; the owner pid is in the task's own namespace)."""
    for fd, rec in held:
        if rec.owner_pid:
            owner = t.data(struct.pack("<ii", rec.owner_type, rec.owner_pid))
            t.add(uapi.SYS_fcntl, fd, uapi.F_SETOWN_EX, owner, what=f"owner of fd {fd}")
        if rec.signum:
            t.add(uapi.SYS_fcntl, fd, uapi.F_SETSIG, rec.signum, what=f"signal of fd {fd}")


#: upper bound of what fown_part adds per fd to a table
FOWN_BYTES_PER_FD = 2 * blob.ENTRY_SIZE + 16


def memfd_attrs(root_real: int, shmem: list[ShmemEntry], objfds: dict[str, int]) -> None:
    """Owner and times of each memfd, once its pages are written (writing them made it
    new), set by the engine through the root's fd (ids as the engine sees them: the root
    may be in a user namespace where its own ids are unmapped)."""
    for s in shmem:
        if s.kind != "memfd" or not s.mtime_ns:
            continue
        path = f"/proc/{root_real}/fd/{objfds[s.id]}"
        try:
            os.chown(path, s.uid, s.gid)
            os.utime(path, ns=(s.atime_ns, s.mtime_ns))
        except OSError as e:
            raise EngineError("pages", f"memfd {s.name!r}: owner/times: {e.strerror}") from None
