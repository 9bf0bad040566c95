"""Per-task state set by prctl, sched_*, ioprio_* and /proc knobs, as the task observes it.

Read from outside where the kernel shows it: THP disable (status THP_enabled), timer slack
(/proc/PID/timerslack_ns), oom_score_adj, the LSM label (/proc/PID/attr/current, absent
without an LSM), io priority (ioprio_get), the scheduling attributes (sched_getattr: policy
flags such as reset-on-fork, utilisation clamps, deadline parameters; policy, priority and
nice themselves are in the ``task`` check). Dumpable, child subreaper, the parent-death
signal and the membarrier registrations only the task can ask for: zdtm.ptrace_visit.visit reads
them in the same ptrace visit as the rseq configuration (not in a task under seccomp, whose
filter could kill it for an injected call). The private-expedited ones (plain, sync_core,
rseq) show as their barrier succeeding instead of failing EPERM; the global-expedited one
only through MEMBARRIER_CMD_GET_REGISTRATIONS (6.6+): before that kernel it is not visible
anywhere (MEMBARRIER_CMD_GLOBAL_EXPEDITED succeeds whether or not the caller registered).

"stopped by signal" (yes/no) is not read here: the harness itself SIGSTOPs the tree, so the
lifecycle tells which tasks the test had stopped (before its freeze) and which the restore
left stopped (before the freeze after it), see snapshot.capture(held=...).
"""

from __future__ import annotations

import ctypes
import os

from zdtm.plumbing import libc

_SYS_IOPRIO_GET = 252  # x86_64
_SYS_SCHED_GETATTR = 315
IOPRIO_WHO_PROCESS = 1
SCHED_FLAG_RESET_ON_FORK = 1
IN_TASK = ("dumpable", "child_subreaper", "pdeathsig", "membarrier registrations")


class _SchedAttr(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("policy", ctypes.c_uint32),
                ("flags", ctypes.c_uint64), ("nice", ctypes.c_int32),
                ("priority", ctypes.c_uint32), ("runtime", ctypes.c_uint64),
                ("deadline", ctypes.c_uint64), ("period", ctypes.c_uint64),
                ("util_min", ctypes.c_uint32), ("util_max", ctypes.c_uint32)]


def _sys(nr: int, *args: object) -> int:
    res = libc.syscall(ctypes.c_long(nr), *args)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").strip("\0\n ")
    except OSError:
        return None  # no LSM, or a knob this kernel lacks


def _sched(tid: int) -> dict[str, str]:
    attr = _SchedAttr()
    try:
        _sys(_SYS_SCHED_GETATTR, ctypes.c_long(tid), ctypes.byref(attr),
             ctypes.c_uint(ctypes.sizeof(attr)), ctypes.c_uint(0))
    except OSError:
        return {}
    out = {"sched reset_on_fork": str(bool(attr.flags & SCHED_FLAG_RESET_ON_FORK))}
    if attr.runtime or attr.deadline or attr.period:
        out["sched deadline"] = f"runtime {attr.runtime} deadline {attr.deadline} " \
                                f"period {attr.period}"
    out["sched util clamp"] = f"{attr.util_min}..{attr.util_max}"
    return out


def read(pid: int, status: dict[str, str]) -> dict[str, str]:
    """The outside-visible per-task state of a live process (its main thread)."""
    out: dict[str, str] = {}
    if "THP_enabled" in status:
        out["thp_disable"] = "no" if status["THP_enabled"] == "1" else "yes"
    for key, path in (("timer_slack_ns", "timerslack_ns"), ("oom_score_adj", "oom_score_adj"),
                      ("lsm label", "attr/current")):
        value = _read(f"/proc/{pid}/{path}")
        if value is not None:
            out[key] = value
    try:
        prio = _sys(_SYS_IOPRIO_GET, ctypes.c_int(IOPRIO_WHO_PROCESS), ctypes.c_int(pid))
        out["ioprio"] = f"class {prio >> 13} level {prio & 0x1fff}"
    except OSError:
        pass
    out.update(_sched(pid))
    return out
