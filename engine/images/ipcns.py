"""ipc.json: the SysV objects and sysctls of the tree's own ipc namespace.

Ids (uid, gid, cuid, cgid) are as the dumper sees them, like every id of the image.
A segment's content is a pagemap and pages file of its own (offsets into the segment),
a queue's messages are one content file (the texts back to back, in queue order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from engine.images.records import PAGE_SIZE, RecordError, Vma, _safe_name
from engine.kernel.ipc import SYSCTLS
from engine.kernel.uapi import SEMVMX, SHM_DEST, SHM_LOCKED

#: the largest id the kernel hands out (ipcmni_extend: 24 bits of index, then 7 of seq)
ID_MAX = (1 << 31) - 1
#: bounds the restore keeps to (far above the kernel's defaults; a hostile image cannot
#: make it allocate more)
SHM_SIZE_MAX = 1 << 46
NSEMS_MAX = 1 << 16
MSG_SIZE_MAX = 1 << 24
SEM_LAST = ("none", "task", "gone", "outside")


def mapped_size(size: int) -> int:
    """What an attach of a segment of `size` bytes maps: whole pages."""
    return (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise RecordError(message)


@dataclass
class IpcObject:
    """What every SysV object has: id, key (0: IPC_PRIVATE, or a segment marked for
    removal), mode (permissions; a segment's also SHM_DEST and SHM_LOCKED), owner and
    creator."""

    id: int
    key: int
    mode: int
    uid: int
    gid: int
    cuid: int
    cgid: int

    def _validate(self, what: str, modes: int) -> None:
        _check(0 <= self.id <= ID_MAX, f"{what} id {self.id} out of range")
        _check(-(1 << 31) <= self.key < (1 << 31), f"{what} {self.id}: key out of range")
        _check(0 <= self.mode and not self.mode & ~modes,
               f"{what} {self.id}: mode {self.mode:#o} unknown")
        for name in ("uid", "gid", "cuid", "cgid"):
            _check(0 <= getattr(self, name) < 0xFFFFFFFF, f"{what} {self.id}: bad {name}")


@dataclass
class ShmSegment(IpcObject):
    """A shared memory segment: its size in bytes and where its content is."""

    size: int = 0
    pagemap: str = ""
    pages: str = ""

    def validate(self) -> None:
        """Ranges, and a removal mark only on a private key."""
        self._validate("shm segment", 0o777 | SHM_DEST | SHM_LOCKED)
        _check(0 < self.size <= SHM_SIZE_MAX, f"shm segment {self.id}: bad size {self.size}")
        _check(not self.mode & SHM_DEST or self.key == 0,
               f"shm segment {self.id}: marked for removal with a key")
        _check(_safe_name(self.pagemap) and _safe_name(self.pages),
               f"shm segment {self.id}: bad file name")

    @property
    def mapped_size(self) -> int:
        """What an attach maps: the size rounded up to pages."""
        return mapped_size(self.size)


@dataclass
class Semaphore:
    """One semaphore: its value and the last process that changed it (GETPID): none
    (never changed), a task of the image (`pid` its pid there), a process gone since
    that the tree's pid namespace knew as `pid`, or one it does not see (outside)."""

    ROW: ClassVar[bool] = True

    value: int
    last: str = "none"
    pid: int = 0

    def validate(self) -> None:
        """Value a semaphore holds, a known kind of last process."""
        _check(0 <= self.value <= SEMVMX, f"semaphore value {self.value} out of range")
        _check(self.last in SEM_LAST, f"semaphore last process {self.last!r} unknown")
        _check((self.pid > 0) == (self.last in ("task", "gone")) and self.pid < (1 << 22),
               f"semaphore last pid {self.pid} does not go with {self.last!r}")
        _check(self.last != "none" or self.value == 0,
               f"semaphore of value {self.value} that nothing changed")


@dataclass
class SemSet(IpcObject):
    """A semaphore set: its semaphores, and whether a semop() ever changed it (otime set;
    the time itself is the restore's)."""

    sems: list[Semaphore] = field(default_factory=list)
    operated: bool = False

    def validate(self) -> None:
        """Ranges."""
        self._validate("semaphore set", 0o777)
        _check(0 < len(self.sems) <= NSEMS_MAX, f"semaphore set {self.id}: "
                                                 f"{len(self.sems)} semaphores")


@dataclass
class MsgQueue(IpcObject):
    """A message queue: its byte limit (msg_qbytes), the type and size of each message in
    queue order, and the content file holding their texts back to back."""

    qbytes: int = 0
    types: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    content: str = ""

    def validate(self) -> None:
        """Ranges; one type per size; the messages fit the queue."""
        self._validate("message queue", 0o777)
        _check(0 <= self.qbytes < (1 << 31), f"message queue {self.id}: bad msg_qbytes")
        _check(len(self.types) == len(self.sizes), f"message queue {self.id}: one type "
                                                   "per message")
        _check(all(0 < t < (1 << 63) for t in self.types),
               f"message queue {self.id}: a message type out of range")
        _check(all(0 <= s <= MSG_SIZE_MAX for s in self.sizes),
               f"message queue {self.id}: a message size out of range")
        _check(sum(self.sizes) <= self.qbytes and len(self.sizes) <= self.qbytes
               or not self.sizes, f"message queue {self.id}: more than msg_qbytes queued")
        _check(_safe_name(self.content), f"message queue {self.id}: bad content file name")


@dataclass
class IpcImage:
    """ipc.json: the namespace's sysctls (name under /proc/sys -> text) and objects."""

    sysctls: dict[str, str]
    shm: list[ShmSegment] = field(default_factory=list)
    sem: list[SemSet] = field(default_factory=list)
    msg: list[MsgQueue] = field(default_factory=list)

    def validate(self) -> None:
        """Known sysctls with numeric values; ids unique per kind."""
        for name, value in self.sysctls.items():
            _check(name in SYSCTLS, f"ipc sysctl {name!r} unknown")
            words = value.split()
            _check(0 < len(words) <= 4 and all(w.isdigit() and len(w) <= 20 for w in words),
                   f"ipc sysctl {name}: bad value {value!r}")
        for what, objs in (("shm", self.shm), ("sem", self.sem), ("msg", self.msg)):
            ids = [o.id for o in objs]
            _check(len(ids) == len(set(ids)), f"duplicate {what} id")
            keys = [o.key for o in objs if o.key]
            _check(len(keys) == len(set(keys)), f"duplicate {what} key")


@dataclass(frozen=True)
class Attach:
    """One shmat() of a segment in a task: where, and its VMAs (mprotect may have split
    it), which together map the whole segment from its start."""

    shmid: int
    start: int
    vmas: tuple[Vma, ...]


def attaches(vmas: list[Vma], sizes: dict[int, int]) -> list[Attach]:
    """Group a task's SysV VMAs (kind "sysv", in address order, `inode` the segment id)
    into whole attaches; sizes: segment id -> its mapped size. ValueError names a VMA that
    is no part of a whole attach (shmat maps a segment whole: a part of one unmapped, or
    a mapping made otherwise, could not be given back)."""
    out: list[Attach] = []
    group: list[Vma] = []
    for v in vmas:
        if v.inode not in sizes:
            raise ValueError(f"vma {v.start:#x}: SysV segment {v.inode} is not in the tree's "
                             "ipc namespace")
        if group:
            last = group[-1]
            if last.end != v.start or last.inode != v.inode \
                    or v.pgoff != last.pgoff + last.end - last.start:
                raise ValueError(f"vma {group[0].start:#x}: maps only part of SysV segment "
                                 f"{group[0].inode}")
        elif v.pgoff != 0:
            raise ValueError(f"vma {v.start:#x}: maps SysV segment {v.inode} from offset "
                             f"{v.pgoff:#x}, not from its start")
        group.append(v)
        length = v.end - group[0].start
        if length > sizes[v.inode]:
            raise ValueError(f"vma {group[0].start:#x}: maps more than SysV segment {v.inode}")
        if length == sizes[v.inode]:
            out.append(Attach(v.inode, group[0].start, tuple(group)))
            group = []
    if group:
        raise ValueError(f"vma {group[0].start:#x}: maps only part of SysV segment "
                         f"{group[0].inode}")
    return out
