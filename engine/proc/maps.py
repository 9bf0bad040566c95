"""/proc/PID/maps and /proc/PID/smaps (VmFlags and sizes)."""

from __future__ import annotations

from dataclasses import dataclass, field

_DELETED = " (deleted)"


@dataclass(frozen=True)
class Vma:
    """One line of /proc/PID/maps (plus smaps extras when read with read_smaps)."""

    start: int
    end: int
    perms: str  # e.g. "rw-p"
    offset: int
    dev: tuple[int, int]  # (major, minor)
    inode: int
    path: str  # "" for anonymous; "[heap]", "[stack]", "[vdso]", ... ; without " (deleted)"
    deleted: bool = False
    vmflags: frozenset[str] = field(default_factory=frozenset)  # smaps "VmFlags" mnemonics
    rss_kb: int = 0
    anonymous_kb: int = 0
    swap_kb: int = 0

    @property
    def size(self) -> int:
        """Length in bytes."""
        return self.end - self.start

    @property
    def readable(self) -> bool:
        """PROT_READ."""
        return self.perms[0] == "r"

    @property
    def writable(self) -> bool:
        """PROT_WRITE."""
        return self.perms[1] == "w"

    @property
    def executable(self) -> bool:
        """PROT_EXEC."""
        return self.perms[2] == "x"

    @property
    def shared(self) -> bool:
        """MAP_SHARED (the "s" in perms)."""
        return self.perms[3] == "s"

    @property
    def is_file(self) -> bool:
        """Backed by a file (including shmem files such as "/dev/zero (deleted)", memfds)."""
        return self.inode != 0

    @property
    def is_special(self) -> bool:
        """[vdso], [vvar], [vsyscall], [stack], [heap], ... (bracketed names, no inode)."""
        return self.inode == 0 and self.path.startswith("[")

    @property
    def growsdown(self) -> bool:
        """VM_GROWSDOWN ("gd" in VmFlags; only known when read with read_smaps)."""
        return "gd" in self.vmflags

    @property
    def map_files_name(self) -> str:
        """The entry name under /proc/PID/map_files/ for this VMA."""
        return f"{self.start:x}-{self.end:x}"


def parse_maps_line(line: str) -> Vma:
    """Parse one maps line; raises ValueError on malformed input."""
    parts = line.split(None, 5)
    if len(parts) < 5:
        raise ValueError(f"malformed maps line: {line!r}")
    rng, perms, offset, dev, inode = parts[:5]
    path = parts[5].rstrip("\n") if len(parts) == 6 else ""
    start_s, end_s = rng.split("-")
    major, minor = dev.split(":")
    deleted = path.endswith(_DELETED)
    if deleted:
        path = path[: -len(_DELETED)]
    return Vma(
        start=int(start_s, 16), end=int(end_s, 16), perms=perms, offset=int(offset, 16),
        dev=(int(major, 16), int(minor, 16)), inode=int(inode), path=path, deleted=deleted,
    )


def parse_maps(text: str) -> list[Vma]:
    """Parse the whole content of a maps file."""
    return [parse_maps_line(line) for line in text.splitlines() if line]


def read_maps(pid: int) -> list[Vma]:
    """VMAs of ``pid`` from /proc/PID/maps, in address order."""
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as f:
        return parse_maps(f.read())


def parse_smaps(text: str) -> list[Vma]:
    """Parse smaps content: maps lines followed by "Key: value" lines per VMA."""
    vmas: list[Vma] = []
    cur: Vma | None = None
    extra: dict[str, object] = {}

    def flush() -> None:
        if cur is not None:
            vmas.append(Vma(**{**cur.__dict__, **extra}))

    for line in text.splitlines():
        if not line:
            continue
        head = line.split(None, 1)[0]
        if head.endswith(":"):
            key = head[:-1]
            if key == "VmFlags":
                extra["vmflags"] = frozenset(line.split()[1:])
            elif key == "Rss":
                extra["rss_kb"] = int(line.split()[1])
            elif key == "Anonymous":
                extra["anonymous_kb"] = int(line.split()[1])
            elif key == "Swap":
                extra["swap_kb"] = int(line.split()[1])
            continue
        flush()
        cur = parse_maps_line(line)
        extra = {}
    flush()
    return vmas


def read_smaps(pid: int) -> list[Vma]:
    """VMAs of ``pid`` with VmFlags, Rss, Anonymous and Swap from /proc/PID/smaps."""
    with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="surrogateescape") as f:
        return parse_smaps(f.read())
