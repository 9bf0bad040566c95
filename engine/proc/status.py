"""/proc/PID/status: ids in every pid namespace, signal masks, credentials, umask."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Status:
    """Parsed /proc/PID/status. Signal masks are ints (bit n-1 = signal n)."""

    name: str
    state: str
    umask: int | None  # None on kernels/threads that do not show it
    tgid: int
    pid: int
    ppid: int
    tracer_pid: int
    uid: tuple[int, int, int, int]  # real, effective, saved, fs
    gid: tuple[int, int, int, int]
    groups: tuple[int, ...]
    ns_tgid: tuple[int, ...]  # outermost first
    ns_pid: tuple[int, ...]
    ns_pgid: tuple[int, ...]
    ns_sid: tuple[int, ...]
    threads: int
    sig_pnd: int  # thread-private pending
    shd_pnd: int  # process-wide pending
    sig_blk: int
    sig_ign: int
    sig_cgt: int
    cap_inh: int
    cap_prm: int
    cap_eff: int
    cap_bnd: int
    cap_amb: int
    no_new_privs: int
    seccomp: int
    raw: dict[str, str] = field(default_factory=dict)

    @property
    def rss_anon(self) -> int:
        """Resident anonymous bytes, private ones and copies-on-write (RssAnon; 0 where
        not shown)."""
        return int(self.raw.get("RssAnon", "0").split()[0]) << 10

    @property
    def rss_shmem(self) -> int:
        """Resident bytes of shared memory objects mapped (RssShmem; 0 where not shown)."""
        return int(self.raw.get("RssShmem", "0").split()[0]) << 10


def _ints(value: str) -> tuple[int, ...]:
    return tuple(int(x) for x in value.split())


def parse_status(text: str) -> Status:
    """Parse status content."""
    raw: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            raw[key] = value.strip()

    def hexv(key: str) -> int:
        return int(raw.get(key, "0"), 16)

    def intv(key: str) -> int:
        return int(raw.get(key, "0"))

    uid = _ints(raw["Uid"])
    gid = _ints(raw["Gid"])
    return Status(
        name=raw.get("Name", ""),
        state=raw.get("State", "?").split()[0],
        umask=int(raw["Umask"], 8) if "Umask" in raw else None,
        tgid=intv("Tgid"), pid=intv("Pid"), ppid=intv("PPid"), tracer_pid=intv("TracerPid"),
        uid=(uid[0], uid[1], uid[2], uid[3]), gid=(gid[0], gid[1], gid[2], gid[3]),
        groups=_ints(raw.get("Groups", "")),
        ns_tgid=_ints(raw.get("NStgid", raw.get("Tgid", ""))),
        ns_pid=_ints(raw.get("NSpid", raw.get("Pid", ""))),
        ns_pgid=_ints(raw.get("NSpgid", "")),
        ns_sid=_ints(raw.get("NSsid", "")),
        threads=intv("Threads"),
        sig_pnd=hexv("SigPnd"), shd_pnd=hexv("ShdPnd"), sig_blk=hexv("SigBlk"),
        sig_ign=hexv("SigIgn"), sig_cgt=hexv("SigCgt"),
        cap_inh=hexv("CapInh"), cap_prm=hexv("CapPrm"), cap_eff=hexv("CapEff"),
        cap_bnd=hexv("CapBnd"), cap_amb=hexv("CapAmb"),
        no_new_privs=intv("NoNewPrivs"), seccomp=intv("Seccomp"),
        raw=raw,
    )


def read_status(pid: int, tid: int | None = None) -> Status:
    """/proc/PID/status, or /proc/PID/task/TID/status for one thread."""
    path = f"/proc/{pid}/status" if tid is None else f"/proc/{pid}/task/{tid}/status"
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse_status(f.read())

