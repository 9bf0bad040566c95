"""Harness-side /proc parsers.

Pure text parsers (``parse_*``) are separate from the readers (``read_*``) so the parsers can be
unit-tested with canned samples. The harness never imports the engine's own parsers: the checks
must stay independent of the code they judge.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# /proc/PID/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
PM_PRESENT = 1 << 63
PM_SWAP = 1 << 62

# Pseudo paths the kernel prints for special VMAs.
VSYSCALL = "[vsyscall]"
VVAR_PREFIX = "[vvar"  # [vvar] and, since 6.13, [vvar_vclock]

DELETED = " (deleted)"  # how /proc ends the path of an unlinked file


@dataclass(frozen=True)
class MapsEntry:
    """One line of /proc/PID/maps (plus the VmFlags of its smaps block, when read from smaps)."""

    start: int
    end: int
    perms: str  # e.g. "rw-p"
    offset: int
    dev: str  # "major:minor" in hex, as printed
    inode: int
    path: str  # "" for anonymous memory; pseudo names such as "[heap]" kept as printed
    deleted: bool = False  # the path ended with " (deleted)" (kept in ``path`` too)
    vmflags: frozenset[str] = field(default_factory=frozenset)

    @property
    def shared(self) -> bool:
        """MAP_SHARED mapping."""
        return self.perms[3] == "s"

    @property
    def anonymous(self) -> bool:
        """Anonymous memory, whose never-touched pages read as zero: unnamed, [heap],
        [stack] and [anon:NAME] areas (not [vdso] and other special mappings)."""
        return self.inode == 0 and (
            self.path in ("", "[heap]", "[stack]") or self.path.startswith("[anon:")
        )

    @property
    def pages(self) -> int:
        """Length in pages."""
        return (self.end - self.start) // PAGE_SIZE


def parse_maps_line(line: str) -> MapsEntry:
    """Parse one /proc/PID/maps line; paths may contain spaces and end with " (deleted)".

    Split on whitespace (faster than a regex for the ~30,000 lines of a maps06 process); the
    padding before the path is dropped with it, so a path that itself starts with a space
    would lose that space.
    """
    fields = line.rstrip("\n").split(None, 5)
    try:
        addr, perms, offset, dev, inode = fields[:5]
        start, _, end = addr.partition("-")
        if len(perms) != 4 or ":" not in dev:
            raise ValueError(line)
        path = fields[5] if len(fields) > 5 else ""
        return MapsEntry(
            start=int(start, 16),
            end=int(end, 16),
            perms=perms,
            offset=int(offset, 16),
            dev=dev,
            inode=int(inode),
            path=path,
            deleted=path.endswith(DELETED),
        )
    except ValueError:
        raise ValueError(f"not a maps line: {line!r}") from None


def parse_maps(text: str) -> list[MapsEntry]:
    """Parse a whole /proc/PID/maps text."""
    return [parse_maps_line(line) for line in text.splitlines() if line]


def parse_smaps(text: str) -> list[MapsEntry]:
    """Parse /proc/PID/smaps: every VMA header line with the VmFlags of its block.

    Only the header and ``VmFlags:`` lines are looked at; the counters in between change with
    every access and are no part of the checked state. Each block ends with its VmFlags line
    and the next block starts right after it, so splitting at "VmFlags:" yields every pair
    with a few C-level string operations (a maps06-sized smaps is ~30 MB).
    """
    if not text:
        return []
    pieces = text.split("\nVmFlags:")
    headers = [pieces[0].split("\n", 1)[0]]
    flags = []
    for piece in pieces[1:]:
        line, _, rest = piece.partition("\n")
        flags.append(line)
        if rest:
            headers.append(rest.split("\n", 1)[0])
    if len(flags) != len(headers):
        raise ValueError(f"smaps: {len(headers)} VMA headers but {len(flags)} VmFlags lines")
    return [
        _with_flags(parse_maps_line(h), frozenset(f.split())) for h, f in zip(headers, flags)
    ]


def _with_flags(entry: MapsEntry, flags: frozenset[str]) -> MapsEntry:
    return MapsEntry(
        entry.start, entry.end, entry.perms, entry.offset, entry.dev, entry.inode,
        entry.path, entry.deleted, flags,
    )


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/PID/stat the checks use (pids as seen from the reader's pid ns)."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    tty_nr: int
    tpgid: int
    num_threads: int
    nice: int
    exit_signal: int
    rt_priority: int
    policy: int


def parse_stat(text: str) -> Stat:
    """Parse /proc/PID/stat; comm may contain spaces and parentheses, so split at the last ')'."""
    lpar = text.index("(")
    rpar = text.rindex(")")
    rest = text[rpar + 2:].split()
    # rest[0] is field 3 (state); field N is rest[N - 3].
    return Stat(
        pid=int(text[:lpar]),
        comm=text[lpar + 1:rpar],
        state=rest[0],
        ppid=int(rest[1]),
        pgrp=int(rest[2]),
        session=int(rest[3]),
        tty_nr=int(rest[4]),
        tpgid=int(rest[5]),
        num_threads=int(rest[17]),
        nice=int(rest[16]),
        exit_signal=int(rest[35]),
        rt_priority=int(rest[37]),
        policy=int(rest[38]),
    )


def parse_limits(text: str) -> dict[str, str]:
    """Parse /proc/PID/limits into {"Max open files": "1024 4096 files"} (soft, hard, unit)."""
    out = {}
    for line in text.splitlines()[1:]:  # the first line is the column header
        name, values = line[:26].strip(), " ".join(line[26:].split())
        if name:
            out[name] = values
    return out


def parse_status(text: str) -> dict[str, str]:
    """Parse /proc/PID/status into {key: raw value} (values stripped of surrounding space)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out


def status_ids(status: dict[str, str], key: str) -> list[int]:
    """An id list of /proc/PID/status such as NSpid: outermost first, the task's own ns last."""
    return [int(v) for v in status.get(key, "").split()]


@dataclass(frozen=True)
class FdInfo:
    """/proc/PID/fdinfo/FD: the common fields plus every other line as (key, value)."""

    pos: int
    flags: int
    mnt_id: int
    ino: int | None
    extra: tuple[tuple[str, str], ...] = ()

    def get(self, key: str) -> str | None:
        """The first value of an extra key (e.g. "eventfd-count"), or None."""
        for k, v in self.extra:
            if k == key:
                return v
        return None


def parse_fdinfo(text: str) -> FdInfo:
    """Parse /proc/PID/fdinfo/FD text (flags are octal, the rest decimal)."""
    pos = flags = mnt_id = 0
    ino: int | None = None
    extra: list[tuple[str, str]] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        value = value.strip()
        if key == "pos":
            pos = int(value)
        elif key == "flags":
            flags = int(value, 8)
        elif key == "mnt_id":
            mnt_id = int(value)
        elif key == "ino":
            ino = int(value)
        else:
            extra.append((key, value))
    return FdInfo(pos=pos, flags=flags, mnt_id=mnt_id, ino=ino, extra=tuple(extra))


_ACCMODE = {0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR", 3: "O_ACCMODE"}
_OPEN_FLAGS = (
    (0o100, "O_CREAT"),
    (0o200, "O_EXCL"),
    (0o400, "O_NOCTTY"),
    (0o1000, "O_TRUNC"),
    (0o2000, "O_APPEND"),
    (0o4000, "O_NONBLOCK"),
    (0o10000, "O_DSYNC"),
    (0o20000, "O_ASYNC"),
    (0o40000, "O_DIRECT"),
    (0o100000, "O_LARGEFILE"),
    (0o200000, "O_DIRECTORY"),
    (0o400000, "O_NOFOLLOW"),
    (0o1000000, "O_NOATIME"),
    (0o2000000, "O_CLOEXEC"),
    (0o4000000, "__O_SYNC"),
    (0o10000000, "O_PATH"),
    (0o20000000, "__O_TMPFILE"),
)


def format_open_flags(flags: int) -> str:
    """Render fdinfo flags symbolically, e.g. "O_RDWR|O_APPEND|O_CLOEXEC" (x86_64 values)."""
    names = [_ACCMODE[flags & 3]]
    rest = flags & ~3
    for bit, name in _OPEN_FLAGS:
        if rest & bit:
            names.append(name)
            rest &= ~bit
    if rest:
        names.append(f"0o{rest:o}")
    return "|".join(names)


def parse_ns_link(link: str) -> tuple[str, int]:
    """Parse a /proc/PID/ns/* link such as "uts:[4026531838]" into ("uts", 4026531838)."""
    kind, _, rest = link.partition(":[")
    if not rest.endswith("]"):
        raise ValueError(f"not a namespace link: {link!r}")
    return kind, int(rest[:-1])


def parse_mountinfo(text: str) -> list[tuple[str, str, str]]:
    """Parse /proc/PID/mountinfo into (mount point, fs type, source) triples."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        rfields = right.split()
        out.append((fields[4], rfields[0], rfields[1] if len(rfields) > 1 else ""))
    return out


_CGROUP_MOUNT_OPTS = frozenset({"rw", "ro", "xattr", "noprefix", "clone_children",
                                "cpuset_v2_mode", "nsdelegate", "favordynmods"})


def cgroup_mounts(text: str) -> dict[str, str]:
    """Cgroup hierarchies in mountinfo text: {key: mount point}, the key being what
    /proc/PID/cgroup names the hierarchy by: "" for cgroup2, else its controllers as listed
    in the super options ("cpu,cpuacct", "name=systemd"). First mount of each wins."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        rfields = right.split()
        if not sep or rfields[0] not in ("cgroup", "cgroup2"):
            continue
        key = ""
        if rfields[0] == "cgroup":
            opts = rfields[2].split(",") if len(rfields) > 2 else []
            key = ",".join(o for o in opts if o not in _CGROUP_MOUNT_OPTS and "=" not in o
                           or o.startswith("name="))
        out.setdefault(key, left.split()[4])
    return out


# ---- readers ---------------------------------------------------------------------------------


def parse_sysvipc(text: str) -> list[dict[str, int]]:
    """/proc/sysvipc/{shm,sem,msg}: a header naming the columns, one object per line;
    every column decimal but `perms` (octal)."""
    lines = text.splitlines()
    names = lines[0].split() if lines else []
    rows = []
    for line in lines[1:]:
        values = line.split()
        if len(values) != len(names):
            raise ValueError(f"sysvipc: {len(values)} columns under {len(names)}: {line!r}")
        rows.append({n: int(v, 8 if n == "perms" else 10) for n, v in zip(names, values)})
    return rows


def read_text(path: str) -> str:
    """Read a small /proc file as text (one read loop; /proc files are generated on read)."""
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "surrogateescape")


def read_tids(pid: int) -> list[int]:
    """Thread ids of PID as seen from the reader's pid namespace, sorted."""
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return []


def read_fds(pid: int) -> dict[int, tuple[str, FdInfo]]:
    """Every fd of PID: {fd: (link target, fdinfo)}. Fds closed while reading are skipped."""
    out: dict[int, tuple[str, FdInfo]] = {}
    base = f"/proc/{pid}"
    try:
        names = os.listdir(f"{base}/fd")
    except (FileNotFoundError, PermissionError):
        return out  # zombies and exited tasks have no fd table
    for name in names:
        fd = int(name)
        try:
            target = os.readlink(f"{base}/fd/{fd}")
            info = parse_fdinfo(read_text(f"{base}/fdinfo/{fd}"))
        except FileNotFoundError:
            continue
        out[fd] = (target, info)
    return out
