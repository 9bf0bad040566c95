"""Typed records of the image format (see docs/IMAGES.md).

Every JSON file of an image directory is one of these dataclasses, serialised with
`engine.images.codec.to_json` and read back with `engine.images.codec.from_json`, which checks
the type of every field against the annotations below and then calls the record's
`validate()` for the range checks that types cannot express.

The records are shaped for trees (several tasks, several threads per task, objects shared
between tasks by id) even where the dumper only handles one task so far.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from engine.images.fdkinds import (
    EpollWatch,
    EventfdState,
    FanotifyState,
    InetSocketState,
    InotifyWatch,
    LockRecord,
    MqueueState,
    NetlinkSocketState,
    PacketSocketState,
    PidfdState,
    PtyState,
    SignalfdState,
    TimerfdState,
    UnixSocketState,
)
from engine.kernel.uapi import MEMBARRIER_REGISTRATIONS

FORMAT_NAME = "pyengine-images"
# 2: VMAs are arrays; 3: checksums; 4: page checksums; 5: VMAs in a binary table
# (docs/IMAGES.md)
FORMAT_VERSION = 6
PAGE_SIZE = 4096
# Highest user-space address on x86_64 with 4-level paging (plus the vsyscall page,
# which sits above it and is recorded but never restored).
USER_ADDR_LIMIT = 1 << 47
VSYSCALL_START = 0xFFFFFFFFFF600000
U64_MAX = (1 << 64) - 1
#: PID_MAX_LIMIT on 64-bit (include/linux/threads.h): no pid, tid or pgid is above it
PID_MAX_LIMIT = 1 << 22

TASK_STATES = ("alive", "stopped", "zombie")
#: kernel tables a process can share with its parent (TaskEntry.shared): the address
#: space (CLONE_VM), fd table (CLONE_FILES), fs info (CLONE_FS), signal handlers
#: (CLONE_SIGHAND, which clone() gives only with CLONE_VM)
SHARED_TABLES = ("vm", "files", "fs", "sighand")
IMAGE_KINDS = ("dump", "pre-dump")
# sysv: an attach of a SysV shared memory segment (`inode` is the segment's id)
VMA_KINDS = ("anon", "file", "shmem", "sysv", "heap", "stack", "vdso", "vvar", "vsyscall",
             "other")
SCHED_POLICIES = (0, 1, 2, 3, 5)  # OTHER, FIFO, RR, BATCH, IDLE (DEADLINE is refused)
FILE_TYPES = ("reg", "dir", "pipe", "fifo", "chr", "blk", "socket", "anon_inode", "symlink",
              "mqueue", "other")  # symlink: an O_PATH|O_NOFOLLOW fd on the link itself
_MAPS_DEV = re.compile(r"[0-9a-f]{2,}:[0-9a-f]{2,}")  # "MAJ:MIN" as /proc/PID/maps shows it


#: user_regs_struct (engine.kernel.structs.UserRegs) field names: a thread's `regs` has
#: exactly these keys
REG_NAMES = frozenset((
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
    "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
    "gs_base", "ds", "es", "fs", "gs"))
#: What PTRACE_SETREGS accepts (arch/x86/kernel/ptrace.c): 16-bit selectors of RPL 3, cs
#: and ss non-null, fs/gs bases below TASK_SIZE_MAX.
_SELECTORS_NONNULL = ("cs", "ss")
_SELECTORS = ("ds", "es", "fs", "gs")
_TASK_SIZE_MAX = USER_ADDR_LIMIT - PAGE_SIZE
_MAP_SHARED = 1  # of the MAP_SHARED/MAP_PRIVATE pair (the low two bits of mmap flags)
#: every O_* flag an open file description can carry (fdinfo flags, octal in /proc)
OPEN_FLAGS_KNOWN = (0o3 | 0o100 | 0o200 | 0o400 | 0o1000 | 0o2000 | 0o4000 | 0o10000
                    | 0o20000 | 0o40000 | 0o100000 | 0o200000 | 0o400000 | 0o1000000
                    | 0o2000000 | 0o4000000 | 0o10000000 | 0o20000000)


class RecordError(ValueError):
    """A record holds a value outside its allowed range (the codec adds the file name)."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise RecordError(message)


def _check_u64(value: int, what: str) -> None:
    _check(0 <= value <= U64_MAX, f"{what} out of range: {value}")


def _all_u64(values: Iterable[int]) -> bool:
    """Whether every value is a u64 (one look at the extremes: a task's registers, its
    auxv; the value out of range is then found by _check_u64 one by one)."""
    values = list(values)
    return not values or 0 <= min(values) and max(values) <= U64_MAX


def _check_regs(tid: int, regs: dict[str, int]) -> None:
    """Every register present, u64, and acceptable to PTRACE_SETREGS."""
    keys = set(regs)
    if keys != REG_NAMES:
        missing, extra = sorted(REG_NAMES - keys), sorted(keys - REG_NAMES)
        _check(False, f"thread {tid}: regs missing {missing}" if missing
               else f"thread {tid}: unknown regs {extra}")
    if not _all_u64(regs.values()):
        for k, v in regs.items():
            _check_u64(v, f"thread {tid} reg {k}")
    for k in _SELECTORS_NONNULL + _SELECTORS:
        v = regs[k]
        ok = v <= 0xFFFF and (v & 3) == 3 or (v == 0 and k in _SELECTORS)
        _check(ok, f"thread {tid}: reg {k} {v:#x} is not a user segment selector")
    for k in ("fs_base", "gs_base"):
        _check(regs[k] < _TASK_SIZE_MAX, f"thread {tid}: reg {k} {regs[k]:#x} beyond user space")


def _is_pid(value: int, zero_ok: bool = False) -> bool:
    """A pid the kernel can have (0 too where it means none)."""
    return (0 if zero_ok else 1) <= value <= PID_MAX_LIMIT


def _check_nspid(pid: int, ns_pid: list[int], what: str) -> None:
    """An NSpid line: empty, or the pid as the engine sees it first, then one positive
    pid per nested pid namespace (at most 33 levels, as the kernel allows)."""
    if ns_pid:
        _check(ns_pid[0] == pid and len(ns_pid) <= 33 and all(map(_is_pid, ns_pid)),
               f"{what} {ns_pid} does not start with {pid}")


def _check_addr_range(start: int, end: int, what: str) -> None:
    _check(start % PAGE_SIZE == 0 and end % PAGE_SIZE == 0, f"{what} not page aligned")
    _check(0 <= start < end, f"{what} empty or negative: {start:#x}-{end:#x}")
    _check(end <= USER_ADDR_LIMIT or start >= VSYSCALL_START, f"{what} beyond user space")


# ---------------------------------------------------------------------------------------
# inventory.json


@dataclass
class TaskEntry:
    """One process of the dumped tree, as listed in the inventory."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    threads: list[int]
    exit_code: int | None = None  # zombies only: the wait status a reaper would get
    ns_pid: list[int] = field(default_factory=list)  # NSpid: outermost first, own ns last
    #: the kernel tables (SHARED_TABLES) the process shares with its parent
    shared: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Check ranges: pids positive, state known, at least one thread unless a zombie,
        shared tables known (signal handlers only with the address space).

        pgid/sid 0 is what /proc shows for a leader outside the dumper's pid namespace
        (e.g. a CI job inside a container): restored as led from outside the tree."""
        _check(_is_pid(self.pid), f"task {self.pid}: pid out of range")
        for name in ("pgid", "sid", "ppid"):
            _check(_is_pid(getattr(self, name), zero_ok=True),
                   f"task {self.pid}: {name} out of range")
        _check(self.state in TASK_STATES, f"task {self.pid}: unknown state {self.state!r}")
        if self.state != "zombie":
            _check(self.pid in self.threads, f"task {self.pid}: main thread not in threads")
        _check(all(map(_is_pid, self.threads)), f"task {self.pid}: bad thread id")
        _check_nspid(self.pid, self.ns_pid, f"task {self.pid}: ns_pid")
        _check(len(set(self.shared)) == len(self.shared)
               and all(k in SHARED_TABLES for k in self.shared),
               f"task {self.pid}: bad shared tables {self.shared}")
        _check(not self.shared or self.state != "zombie",
               f"task {self.pid}: a zombie shares no table")
        _check("sighand" not in self.shared or "vm" in self.shared,
               f"task {self.pid}: shares the signal handlers without the address space")


def _check_shared(tasks: list[TaskEntry], root: int) -> None:
    """What restore needs to share a task's tables with its parent again (the dump
    refuses anything else, engine/dump/sharing.py): a live parent in the image; the
    sessions of a task created from its parent; for a task sharing the address space, which
    is created by a clone injected into its parent: no children, its parent's session, its
    parent's process group or one of its own nobody else joins."""
    by_pid = {t.pid: t for t in tasks}
    for t in tasks:
        if not t.shared:
            continue
        parent = by_pid.get(t.ppid)
        _check(t.pid != root and parent is not None and parent.state != "zombie",
               f"task {t.pid}: shares tables with a parent that is not a live task of the "
               "image")
        assert parent is not None
        _check(t.sid in (t.pid, parent.sid),
               f"task {t.pid}: shares tables with its parent but is in another session")
        if "vm" not in t.shared:
            continue
        others = [o for o in tasks if o is not t]
        _check(not any(o.ppid == t.pid for o in others),
               f"task {t.pid}: shares its parent's address space and has children")
        _check(t.sid == parent.sid and (t.pgid == parent.pgid or t.pgid == t.pid and not any(
            o.pgid == t.pid for o in others)),
               f"task {t.pid}: shares its parent's address space but not its session or "
               "process group")


SHMEM_KINDS = ("anon", "memfd")
NS_TYPES = ("pid", "pid_for_children", "mnt", "net", "uts", "ipc", "user", "cgroup", "time",
            "time_for_children")


@dataclass
class ShmemEntry:
    """One object of the kernel's shmem mount: anonymous shared memory
    (MAP_SHARED|MAP_ANONYMOUS) or a memfd (SysV segments are the ipc namespace's:
    ipc.json). Every VMA and fd that refers to it names its `id`, so a tree restores it
    once and shares it."""

    id: str  # stable name derived from the object's inode, used in file names
    size: int  # bytes, page aligned: max(file size, the largest extent any task maps)
    inode: int
    pagemap: str  # file name of its pagemap (offsets are object offsets)
    pages: str
    kind: str = "anon"
    name: str | None = None  # memfd: the name given to memfd_create
    file_size: int = 0  # exact i_size (memfd: what ftruncate set, maybe not page aligned)
    seals: int = 0  # memfd: F_GET_SEALS
    # memfd: owner (as the dumper sees ids) and times; mtime_ns 0: not recorded
    uid: int = 0
    gid: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0

    def validate(self) -> None:
        """Check the id is a safe file-name part and the size is page aligned."""
        _check(min(self.uid, self.gid, self.atime_ns, self.mtime_ns) >= 0,
               f"shmem {self.id}: negative owner or time")
        _check(_safe_name(self.id), f"shmem id {self.id!r} is not a safe name")
        _check(self.size > 0 and self.size % PAGE_SIZE == 0, f"shmem {self.id}: bad size")
        _check(0 <= self.file_size <= self.size, f"shmem {self.id}: bad file size")
        _check(self.kind in SHMEM_KINDS, f"shmem {self.id}: unknown kind {self.kind!r}")
        _check(_safe_name(self.pagemap) and _safe_name(self.pages), f"shmem {self.id}: bad file")


@dataclass
class NamespaceRecord:
    """One namespace the tree uses (from /proc/PID/ns/*), with what restore must put into
    a new one of its kind: uts names (asked with an injected uname()), user ns id maps."""

    type: str  # "pid", "mnt", "net", "uts", "ipc", "user", "cgroup", "time"
    inode: int
    shared_with_engine: bool  # the engine's own namespace: restore must not create it
    first_pid: int  # a task of the tree that is in it
    hostname: str | None = None
    domainname: str | None = None
    uid_map: list[list[int]] | None = None  # [inside, outside, count] rows
    gid_map: list[list[int]] | None = None

    def validate(self) -> None:
        """Known type, map rows of three."""
        _check(self.type in NS_TYPES, f"unknown namespace type {self.type!r}")
        for m in (self.uid_map or []) + (self.gid_map or []):
            _check(len(m) == 3 and all(x >= 0 for x in m), f"bad id map row {m}")


@dataclass
class DumpStatsRecord:
    """stats.json: figures of the dump that wrote the image (informational; no reader
    depends on it). `frozen_s`: from the first seize until the last task was let go (for
    a dump: until its last record was written); `pages_frozen`: pages written while the
    tree was frozen; `pages_total`: pages written in all (private and shared)."""

    kind: str
    frozen_s: float
    pages_frozen: int
    pages_total: int
    pages_in_parent: int
    tasks: int
    threads: int
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Inventory:
    """inventory.json: what this image directory holds and where its parent is."""

    format: str
    version: int
    kind: str
    root_pid: int
    tasks: list[TaskEntry]
    shmem: list[ShmemEntry] = field(default_factory=list)
    parent: str | None = None  # relative path to the parent image dir (incremental dumps)
    created: float = 0.0  # time.time() of the dump, informational
    namespaces: list[NamespaceRecord] = field(default_factory=list)
    #: every other file of the image -> CRC32 of each 1 MiB piece (imgdir.CRC_CHUNK)
    checksums: dict[str, list[int]] = field(default_factory=dict)
    #: the file of the tree's own ipc namespace (names.IPC), None when it has none
    ipc: str | None = None

    def validate(self) -> None:
        """Check format/version, the root is listed, pids are unique, checksums sane."""
        _check(self.format == FORMAT_NAME, f"format is {self.format!r}, not {FORMAT_NAME!r}")
        _check(self.version == FORMAT_VERSION, f"unsupported version {self.version}")
        _check(self.kind in IMAGE_KINDS, f"unknown kind {self.kind!r}")
        pids = [t.pid for t in self.tasks]
        _check(len(pids) == len(set(pids)), "duplicate pid in task list")
        _check(self.root_pid in pids, f"root pid {self.root_pid} not in task list")
        _check_shared(self.tasks, self.root_pid)
        ids = [s.id for s in self.shmem]
        _check(len(ids) == len(set(ids)), "duplicate shmem id")
        _check(self.ipc in (None, "ipc.json"), f"ipc file {self.ipc!r} is not ipc.json")
        if self.parent is not None:
            _check(not self.parent.startswith("/"), "parent link must be relative")
            _check(self.parent.strip("./") != "", f"parent link {self.parent!r} is this image or above it")
        for name, crcs in self.checksums.items():
            _check(_safe_name(name), f"checksums: bad file name {name!r}")
            _check(len(crcs) > 0 and all(0 <= c <= 0xFFFFFFFF for c in crcs),
                   f"checksums of {name}: bad values")

    def task(self, pid: int) -> TaskEntry:
        """The task entry of pid (KeyError when absent)."""
        for t in self.tasks:
            if t.pid == pid:
                return t
        raise KeyError(pid)


def _safe_name(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..") and "\0" not in name


# ---------------------------------------------------------------------------------------
# core-PID.json


@dataclass
class SigInfoRecord:
    """One queued signal: the raw 128-byte siginfo as hex (what PTRACE_PEEKSIGINFO gives)."""

    signo: int
    raw: str

    def validate(self) -> None:
        """Signal number 1..64, raw exactly 128 bytes of hex."""
        _check(1 <= self.signo <= 64, f"bad signal {self.signo}")
        _check(len(self.raw) == 256, "siginfo must be 128 bytes")
        bytes.fromhex(self.raw)


@dataclass
class RseqRecord:
    """The thread's rseq registration (PTRACE_GET_RSEQ_CONFIGURATION)."""

    ptr: int
    size: int
    signature: int
    flags: int = 0

    def validate(self) -> None:
        """Pointer in u64, size sane."""
        _check_u64(self.ptr, "rseq ptr")
        _check(0 <= self.size <= 4096, f"rseq size {self.size}")


@dataclass
class AltStack:
    """sigaltstack() of a thread (stack_t)."""

    sp: int
    flags: int
    size: int

    def validate(self) -> None:
        """Fields in range."""
        _check_u64(self.sp, "sigaltstack sp")
        _check_u64(self.size, "sigaltstack size")


def xstate_text(area: bytes) -> str:
    """ThreadCore.xstate of an XSAVE area: its hex without the trailing zero bytes (with
    xstate_size, its length, load.py gives back the very same bytes)."""
    return area.rstrip(b"\0").hex()


@dataclass
class ThreadCore:
    """Per-thread state."""

    tid: int
    regs: dict[str, int]  # user_regs_struct field name -> value
    # the raw NT_X86_XSTATE regset in hex without its trailing zero bytes (an 11 KiB
    # area with AMX is 2 KiB of data or less: mostly unused components), None if
    # unavailable; load.py decodes and bounds it. In the core record as CRIU keeps the
    # FPU state in its core: a file of its own cost a file creation per thread (~0.1 ms
    # on an ext4 full of recently deleted inodes).
    xstate: str | None
    sigmask: int
    pending: list[SigInfoRecord] = field(default_factory=list)
    rseq: RseqRecord | None = None
    sigaltstack: AltStack | None = None
    ns_tid: list[int] = field(default_factory=list)  # NSpid of the thread
    comm: str = ""  # the thread's own name (PR_SET_NAME / task/TID/comm)
    pdeath_signal: int = 0  # PR_GET_PDEATHSIG (per thread in the kernel)
    clear_child_tid: int | None = None
    robust_list: int | None = None
    robust_list_len: int | None = None
    in_syscall: bool = False  # stopped inside an interrupted syscall (orig_rax >= 0)
    sched_policy: int = 0  # SCHED_* (stat field 41), per thread
    rt_priority: int = 0  # stat field 40
    nice: int = 0  # stat field 19
    xstate_size: int = 0  # the whole XSAVE area's size in bytes (trailing zeros included)

    def validate(self) -> None:
        """Check the tid, the mask and that all register values are u64."""
        _check(self.tid > 0, "tid must be > 0")
        _check_nspid(self.tid, self.ns_tid, f"thread {self.tid}: ns_tid")
        _check(self.sched_policy in SCHED_POLICIES, f"thread {self.tid}: bad sched policy "
                                                    f"{self.sched_policy}")
        _check(0 <= self.rt_priority <= 99, f"thread {self.tid}: bad rt priority")
        _check(-20 <= self.nice <= 19, f"thread {self.tid}: bad nice {self.nice}")
        _check_u64(self.sigmask, "sigmask")
        _check_regs(self.tid, self.regs)


@dataclass
class SigactionRecord:
    """One signal's disposition (struct kernel_sigaction as rt_sigaction returns it).
    Written as a JSON array of the fields in this order (ROW, see codec): 62 per task."""

    ROW: ClassVar[bool] = True
    #: each field's range, all validate checks (the codec checks a task's 62 in bulk)
    BOUNDS: ClassVar[tuple[tuple[int, int], ...]] = ((1, 64),) + ((0, U64_MAX),) * 4

    signo: int
    handler: int  # 0 = SIG_DFL, 1 = SIG_IGN, else a code address
    flags: int
    restorer: int
    mask: int

    def validate(self) -> None:
        """Signal number and u64 fields (BOUNDS)."""
        _check(1 <= self.signo <= 64, f"bad signal {self.signo}")
        for name in ("handler", "flags", "restorer", "mask"):
            _check_u64(getattr(self, name), f"sigaction {self.signo} {name}")


@dataclass
class Creds:
    """Credentials from /proc/PID/status."""

    uid: list[int]  # real, effective, saved, fs
    gid: list[int]
    groups: list[int]
    cap_inh: int
    cap_prm: int
    cap_eff: int
    cap_bnd: int
    cap_amb: int
    no_new_privs: bool = False
    seccomp: int = 0

    def validate(self) -> None:
        """Four ids each, ids u32 (not -1), capability sets u64."""
        _check(len(self.uid) == 4 and len(self.gid) == 4, "uid/gid need 4 values each")
        for what, ids in (("uid", self.uid), ("gid", self.gid), ("groups", self.groups)):
            _check(all(0 <= i < 0xFFFFFFFF for i in ids), f"creds {what}: id out of range")
        for name in ("cap_inh", "cap_prm", "cap_eff", "cap_bnd", "cap_amb"):
            _check_u64(getattr(self, name), f"creds {name}")


@dataclass
class RlimitRecord:
    """One resource limit from /proc/PID/limits; U64_MAX means unlimited."""

    resource: int  # RLIMIT_* number
    name: str
    soft: int
    hard: int

    def validate(self) -> None:
        """Resource number and values in range."""
        _check(0 <= self.resource < 16, f"bad rlimit resource {self.resource}")
        if not _all_u64((self.soft, self.hard)):
            _check_u64(self.soft, f"rlimit {self.name} soft")
            _check_u64(self.hard, f"rlimit {self.name} hard")


@dataclass
class FdEntry:
    """One descriptor of a task's fd table: number -> open file description id."""

    fd: int
    file_id: int
    cloexec: bool = False

    def validate(self) -> None:
        """Non-negative numbers."""
        _check(self.fd >= 0 and self.file_id >= 0, f"bad fd entry {self.fd}")


@dataclass
class ItimerRecord:
    """One interval timer (getitimer): `which` is ITIMER_REAL 0, VIRTUAL 1 or PROF 2;
    `value_us` is the time left until it fires next, `interval_us` its period."""

    which: int
    interval_us: int
    value_us: int

    def validate(self) -> None:
        """Known timer, non-negative times."""
        _check(self.which in (0, 1, 2), f"bad itimer {self.which}")
        _check(self.interval_us >= 0 and self.value_us >= 0, "negative itimer time")


@dataclass
class PosixTimerRecord:
    """One POSIX timer (timer_create), from /proc/PID/timers plus injected timer_gettime
    and timer_getoverrun. `notify` is the sigev_notify value: SIGEV_SIGNAL 0, SIGEV_NONE
    1, SIGEV_THREAD 2, SIGEV_SIGNAL|SIGEV_THREAD_ID 4 (then `notify_tid` is the thread)."""

    id: int
    clock_id: int
    signo: int
    sigev_value: int
    notify: int
    notify_tid: int
    value_ns: int  # time left until it fires next; 0: disarmed (or expired, see IMAGES.md)
    interval_ns: int
    overrun: int = 0

    def validate(self) -> None:
        """Ids and times non-negative, signal in range, notify known."""
        _check(self.id >= 0 and self.value_ns >= 0 and self.interval_ns >= 0,
               f"posix timer {self.id}: negative field")
        _check(0 <= self.signo <= 64, f"posix timer {self.id}: bad signal {self.signo}")
        _check(self.notify in (0, 1, 2, 4), f"posix timer {self.id}: bad notify {self.notify}")
        _check_u64(self.sigev_value, f"posix timer {self.id} sigev_value")


@dataclass
class TaskCore:
    """core-PID.json: everything about one process except its memory and files."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    comm: str
    threads: list[ThreadCore]
    sigactions: list[SigactionRecord]
    creds: Creds
    limits: list[RlimitRecord]
    cwd: str
    root: str
    umask: int
    personality: int
    fds: list[FdEntry]
    shared_pending: list[SigInfoRecord] = field(default_factory=list)
    exit_code: int | None = None
    exe: str | None = None
    namespaces: dict[str, int] = field(default_factory=dict)  # type -> inode
    child_subreaper: bool = False  # PR_GET_CHILD_SUBREAPER
    itimers: list[ItimerRecord] = field(default_factory=list)  # only armed ones
    posix_timers: list[PosixTimerRecord] = field(default_factory=list)
    thp_disable: int = 0  # PR_GET_THP_DISABLE: bit 0 disabled, bit 1 except where advised
    oom_score_adj: int = 0
    dumpable: int = 1  # PR_GET_DUMPABLE (0 or 1; the kernel clears it when ids change)
    membarrier: int = 0  # membarrier REGISTER_* command bits of the mm
    ctty: str | None = None  # path of the controlling terminal, if any
    ctty_pgrp: int = 0  # its foreground process group (0: none, or led from outside)
    # a removed working directory ("<path> (deleted)" in `cwd`): the files.json record
    # (a removed directory) the task goes back into
    cwd_file: int | None = None

    def validate(self) -> None:
        """Check ids, state, the umask and that fd numbers are unique."""
        _check(_is_pid(self.pid), "pid out of range")
        _check(self.cwd_file is None or self.cwd_file >= 0, f"bad cwd_file {self.cwd_file}")
        _check(_is_pid(self.ctty_pgrp, zero_ok=True), f"bad ctty_pgrp {self.ctty_pgrp}")
        _check(0 <= self.thp_disable <= 3, f"bad thp_disable {self.thp_disable}")
        _check(-1000 <= self.oom_score_adj <= 1000, f"bad oom_score_adj {self.oom_score_adj}")
        _check(self.dumpable in (0, 1), f"bad dumpable {self.dumpable}")
        _check(self.membarrier & ~MEMBARRIER_REGISTRATIONS == 0,
               f"bad membarrier registrations {self.membarrier:#x}")
        _check(self.state in TASK_STATES, f"unknown state {self.state!r}")
        _check(0 <= self.umask <= 0o777, f"bad umask {self.umask:o}")
        fds = [f.fd for f in self.fds]
        _check(len(fds) == len(set(fds)), "duplicate fd number")
        if self.state != "zombie":
            _check(any(t.tid == self.pid for t in self.threads), "main thread missing")
        tids = {t.tid for t in self.threads}
        for pt in self.posix_timers:
            _check(not pt.notify & 4 or pt.notify_tid in tids,  # SIGEV_THREAD_ID
                   f"posix timer {pt.id}: target thread {pt.notify_tid} is not in the task")
        timer_ids = [pt.id for pt in self.posix_timers]
        _check(len(timer_ids) == len(set(timer_ids)), "duplicate posix timer id")


# ---------------------------------------------------------------------------------------
# mm-PID.img


@dataclass
class Vma:
    """One memory mapping.

    `flags` are the MAP_* flags needed to recreate it (MAP_PRIVATE/MAP_SHARED,
    MAP_ANONYMOUS, MAP_GROWSDOWN); `prot` is PROT_*; `pgoff` is the file/shmem offset in
    bytes. `vmflags` are the two-letter smaps VmFlags for the checks and for madvise state.
    Stored in the binary table after the mm record's JSON (engine/images/vmatable.py).
    """

    start: int
    end: int
    prot: int
    flags: int
    pgoff: int
    kind: str
    path: str | None = None  # file mappings: the path as /proc/PID/maps shows it
    dev: str | None = None  # "MAJ:MIN" of the file
    inode: int = 0
    deleted: bool = False
    shmem_id: str | None = None  # kind shmem: the ShmemEntry id
    vmflags: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Address range, page alignment, kind and the references a kind needs."""
        # One cheap combined test first: this runs for each of tens of thousands of VMAs.
        start, end, kind = self.start, self.end, self.kind
        if (start | end | self.pgoff) & (PAGE_SIZE - 1) or not 0 <= start < end or \
                self.pgoff < 0 or kind not in VMA_KINDS or not 0 <= self.prot <= 7:
            _check_addr_range(start, end, f"vma {start:#x}")
            _check(kind in VMA_KINDS, f"vma {start:#x}: unknown kind {kind!r}")
            _check(0 <= self.prot <= 7, f"vma {start:#x}: bad prot {self.prot}")
            _check(False, f"vma {start:#x}: bad pgoff {self.pgoff:#x}")
        if end > USER_ADDR_LIMIT and start < VSYSCALL_START:
            _check(False, f"vma {start:#x} beyond user space")
        if kind == "file" and not self.path:
            _check(False, f"vma {start:#x}: file mapping without path")
        if kind == "shmem" and self.shmem_id is None:
            _check(False, f"vma {start:#x}: shmem without id")
        if kind == "sysv" and (self.flags & 3 != _MAP_SHARED or self.shmem_id is not None):
            _check(False, f"vma {start:#x}: a SysV attach is a shared mapping of no shmem")


@dataclass
class FileIdentity:
    """A file the image needs by path (the executable, a mapped file) as it was at the
    dump: restore refuses another file there (engine/images/fileid.py)."""

    path: str
    size: int
    mtime_ns: int
    build_id: str = ""  # ELF NT_GNU_BUILD_ID as hex, "" when the file has none

    def validate(self) -> None:
        """Absolute path, sizes non-negative, build-id hex."""
        _check(self.path.startswith("/") and "\0" not in self.path,
               f"file identity: bad path {self.path!r}")
        _check(self.size >= 0 and self.mtime_ns >= 0, f"file identity {self.path}: negative")
        _check(len(self.build_id) <= 128 and all(c in "0123456789abcdef"
                                                for c in self.build_id),
               f"file identity {self.path}: bad build_id")


@dataclass
class MmCore:
    """mm-PID.img: the mm_struct fields and auxv of one process (JSON, one line); its
    VMAs, `vmas`, follow the JSON in the same file as a binary table
    (engine/images/vmatable.py), not in the JSON (EXTERNAL)."""

    EXTERNAL: ClassVar[tuple[str, ...]] = ("vmas",)

    start_code: int
    end_code: int
    start_data: int
    end_data: int
    start_brk: int
    brk: int
    start_stack: int
    arg_start: int
    arg_end: int
    env_start: int
    env_end: int
    auxv: list[int]  # flat (type, value) pairs up to and including AT_NULL
    vmas: Sequence[Vma] = field(default_factory=list)  # sorted, disjoint (vmatable checks)
    exe: str | None = None
    pages: str = ""  # its pages file (its pagemap is in the mm file, after the VMA table)
    #: the executable and every mapped file, as they were (one entry per path)
    files: list[FileIdentity] = field(default_factory=list)
    #: [address, pages] runs of private pages that were, at the dump, the very pages the
    #: parent process maps at the same address (shared copy-on-write since a fork)
    cow: list[list[int]] = field(default_factory=list)

    def validate(self) -> None:
        """Fields u64, auxv even length, safe file names, cow runs in order."""
        for name in ("start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
                     "start_stack", "arg_start", "arg_end", "env_start", "env_end"):
            _check_u64(getattr(self, name), name)
        _check(len(self.auxv) % 2 == 0, "auxv must hold (type, value) pairs")
        if not _all_u64(self.auxv):
            for v in self.auxv:
                _check_u64(v, "auxv value")
        _check(_safe_name(self.pages), "bad pages file name")
        prev_end = 0
        for run in self.cow:
            _check(len(run) == 2, "cow runs must be [address, pages] pairs")
            addr, n = run
            _check(addr >= prev_end and not addr & (PAGE_SIZE - 1) and n > 0,
                   f"cow run {addr:#x}: unaligned, empty, overlapping or out of order")
            _check_addr_range(addr, addr + n * PAGE_SIZE, f"cow run {addr:#x}")
            prev_end = addr + n * PAGE_SIZE


# ---------------------------------------------------------------------------------------
# files.json


@dataclass
class FileRecord:
    """One open file description, shared by every fd (in every task) that refers to it.

    Type-specific fields: reg/dir/chr/blk/fifo have `path`; reg has `pos`; an unlinked
    regular file has `deleted` and its content in `content` (a file name in the image
    dir); pipes and fifos have `pipe_ino` and, for the unread data of the pipe (stored once
    per pipe, not per end), `content`; chr/blk have `rdev`. A removed directory, symlink
    or FIFO has `deleted` too (restore makes it again and removes it), a removed symlink
    its `target`.
    """

    id: int
    type: str
    flags: int  # open flags (O_*) from fdinfo
    path: str | None = None
    pos: int = 0
    mode: int = 0  # st_mode
    dev: int = 0
    inode: int = 0
    rdev: int = 0
    size: int = 0
    deleted: bool = False
    content: str | None = None
    pipe_ino: int | None = None
    pipe_size: int | None = None  # F_GETPIPE_SZ
    shmem_id: str | None = None  # memfd: the shmem object holding its content
    link: str = ""  # readlink of /proc/PID/fd/N, informational for other types
    owner_type: int = 0  # F_GETOWN_EX: F_OWNER_TID 0, F_OWNER_PID 1, F_OWNER_PGRP 2
    owner_pid: int = 0  # 0: no owner; in the pid namespace of the dumped holder
    signum: int = 0  # F_GETSIG
    # unlinked regular files: owner (as the dumper saw it), times, and the data extents
    # [start, end) whose bytes `content` holds back to back (None: content is the file)
    uid: int = 0
    gid: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    extents: list[list[int]] | None = None
    target: str | None = None  # a removed symlink: what it points to
    # /dev/tty (chr 5:0): the session leader (image pid) whose controlling terminal this
    # description reaches; restore opens it in that task once it has the terminal
    ctty_of: int = 0
    # anon_inode kinds: exactly one of these (engine.images.fdkinds)
    eventfd: EventfdState | None = None
    signalfd: SignalfdState | None = None
    timerfd: TimerfdState | None = None
    epoll: list[EpollWatch] | None = None
    inotify: list[InotifyWatch] | None = None
    fanotify: FanotifyState | None = None
    pidfd: PidfdState | None = None
    unix: UnixSocketState | None = None  # type socket: a connected unix socket
    inet: InetSocketState | None = None  # type socket: TCP or UDP
    netlink: NetlinkSocketState | None = None  # type socket: netlink
    packet: PacketSocketState | None = None  # type socket: AF_PACKET
    pty: PtyState | None = None  # type chr: a pty master (/dev/ptmx)
    mqueue: MqueueState | None = None  # type mqueue: a POSIX message queue
    locks: list[LockRecord] = field(default_factory=list)  # held through this open file

    def validate(self) -> None:
        """Type known, the type's required fields present."""
        _check(self.type in FILE_TYPES, f"file {self.id}: unknown type {self.type!r}")
        _check(0 <= self.flags and not self.flags & ~OPEN_FLAGS_KNOWN
               and self.flags & 3 != 3, f"file {self.id}: bad flags {self.flags:#o}")
        _check(self.owner_type in (0, 1, 2) and _is_pid(self.owner_pid, zero_ok=True),
               f"file {self.id}: bad owner {self.owner_type}/{self.owner_pid}")
        _check(0 <= self.signum <= 64, f"file {self.id}: bad signal {self.signum}")
        _check(self.uid >= 0 and self.gid >= 0, f"file {self.id}: negative owner")
        end = 0
        for ext in self.extents or []:
            _check(len(ext) == 2 and end <= ext[0] < ext[1] <= self.size,
                   f"file {self.id}: bad extent {ext}")
            end = ext[1]
        _check(self.pos >= 0 and self.size >= 0, f"file {self.id}: negative pos/size")
        if self.type in ("reg", "dir", "chr", "blk", "symlink") and not self.deleted:
            _check(bool(self.path), f"file {self.id}: {self.type} without path")
        if self.type == "pipe":
            _check(self.pipe_ino is not None, f"file {self.id}: pipe without inode")
        if self.deleted and self.type in ("dir", "symlink", "fifo"):
            _check(bool(self.path) and (self.type != "symlink" or bool(self.target)),
                   f"file {self.id}: removed {self.type} without path or target")
        _check(self.target is None or self.type == "symlink" and "\0" not in self.target,
               f"file {self.id}: bad target")
        _check(self.ctty_of == 0 or self.type == "chr" and _is_pid(self.ctty_of),
               f"file {self.id}: bad ctty_of {self.ctty_of}")
        if self.content is not None:
            _check(_safe_name(self.content), f"file {self.id}: bad content file name")
        kinds = [k for k in (self.eventfd, self.signalfd, self.timerfd, self.epoll,
                             self.inotify, self.fanotify, self.pidfd) if k is not None]
        _check(len(kinds) == (self.type == "anon_inode"),
               f"file {self.id}: {self.type} with {len(kinds)} anon-inode states")
        _check((self.mqueue is not None) == (self.type == "mqueue"),
               f"file {self.id}: {self.type} and mqueue state do not go together")
        socks = (self.unix, self.inet, self.netlink, self.packet)
        _check(sum(k is not None for k in socks) == (self.type == "socket"),
               f"file {self.id}: {self.type} and socket states do not go together")


@dataclass
class MappedFile:
    """An unlinked file some task maps: the `dev` ("MAJ:MIN", hex, as /proc/PID/maps
    shows it) and `inode` of its VMAs, and the files.json record (an unlinked regular
    file with its saved content) restore makes it again from."""

    dev: str
    inode: int
    file_id: int

    def validate(self) -> None:
        """A maps-style device, a positive inode, a file id."""
        _check(_MAPS_DEV.fullmatch(self.dev) is not None, f"mapped file: bad dev {self.dev!r}")
        _check(self.inode > 0 and self.file_id >= 0,
               f"mapped file {self.dev} {self.inode}: bad inode or file id")


def deleted_key(dev: str | None, inode: int) -> str:
    """The name under which restore holds the file an unlinked-file VMA maps."""
    return f"deleted-{dev}-{inode}"


@dataclass
class FilesImage:
    """files.json: every open file description of the dumped tree, and the unlinked
    files that are mapped (`mapped`: their records are among `files`)."""

    files: list[FileRecord]
    mapped: list[MappedFile] = field(default_factory=list)

    def validate(self) -> None:
        """Ids unique; each mapped file once, an unlinked regular file with content."""
        ids = [f.id for f in self.files]
        _check(len(ids) == len(set(ids)), "duplicate file id")
        keys = [(m.dev, m.inode) for m in self.mapped]
        _check(len(keys) == len(set(keys)), "a mapped file listed twice")
        by_id = self.by_id()
        for m in self.mapped:
            f = by_id.get(m.file_id)
            _check(f is not None and f.type == "reg" and f.deleted and f.content is not None,
                   f"mapped file {m.dev} {m.inode}: file {m.file_id} is not an unlinked "
                   "file with saved content")

    def by_id(self) -> dict[int, FileRecord]:
        """Map id -> record."""
        return {f.id: f for f in self.files}
