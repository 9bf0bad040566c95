"""The kernel's health around one test run: taint flags and kernel log lines.

A kernel-patch gate must notice a WARN_ON, an Oops or a lockup a test provoked even when
the test itself passed. ``KernelWatch`` takes /proc/sys/kernel/tainted and a position at the
end of the kernel log (/dev/kmsg, read non-blocking) when the run starts; ``poll()`` then
reports every new taint bit and every new kernel log line that looks like trouble.

The kernel log and the taint flags are machine-global: a warning the kernel logs while two
runs are going on shows in both, and nothing in the record says which process caused it. A
run therefore judges every line the kernel itself wrote (facility 0) during its window. Lines
written from user space (any other facility: systemd, or a self-test injecting a line
through /dev/kmsg) are judged only when they carry this run's token (its work dir path),
so a line one run injects fails that run and no neighbour.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field

TAINTED = "/proc/sys/kernel/tainted"
KMSG = "/dev/kmsg"
# the kernel's taint letters, bit 0 first (Documentation/admin-guide/tainted-kernels.rst)
TAINT_LETTERS = "PFSRMBUDAWCIOELKXTNJ"
BAD_LINE = re.compile(
    r"WARNING|\bBUG\b|Oops|general protection|KASAN|refcount|soft lockup"
    r"|blocked for more than"
)
MAX_LINES = 40  # a storm of warnings must not bury the result


def describe_taint(mask: int) -> str:
    """E.g. "0x200 (W)": the value and its letters."""
    letters = "".join(c for i, c in enumerate(TAINT_LETTERS) if mask >> i & 1)
    unknown = mask >> len(TAINT_LETTERS)
    if unknown:
        letters += f"+{unknown << len(TAINT_LETTERS):#x}"
    return f"{mask:#x} ({letters or '-'})"


def read_taint() -> int:
    """The kernel's taint mask now."""
    with open(TAINTED) as f:
        return int(f.read().strip())


@dataclass
class KmsgRecord:
    """One kernel log record: facility 0 is the kernel itself."""

    facility: int
    level: int
    seq: int
    text: str


def parse_record(raw: bytes) -> KmsgRecord | None:
    """Parse "pri,seq,usec,flags[,...];text\\n[ KEY=VALUE\\n...]" (None: not a record)."""
    head, sep, rest = raw.decode("utf-8", "replace").partition(";")
    fields = head.split(",")
    if not sep or len(fields) < 3:
        return None
    try:
        pri, seq = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    text = rest.split("\n", 1)[0]
    return KmsgRecord(facility=pri >> 3, level=pri & 7, seq=seq, text=text)


@dataclass
class KernelWatch:
    """Taint and kernel log lines since ``start()``; see the module docstring."""

    tolerate_taint: bool = False  # a taint present at start is no failure (new bits are)
    tokens: list[str] = field(default_factory=list)  # marks user-space lines of this run
    taint0: int = 0
    notes: list[str] = field(default_factory=list)  # what cannot be watched, and why
    _fd: int | None = None
    _reported_taint: int = 0  # taint bits already reported
    _said_start: bool = False

    def start(self) -> None:
        """Take the taint mask and the end of the kernel log as the starting point."""
        try:
            self.taint0 = read_taint()
        except OSError as exc:
            self.notes.append(f"kernel taint not watched: {exc}")
        try:
            self._fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError as exc:
            self.close()
            self.notes.append(f"kernel log not watched: {KMSG}: {exc}")

    def close(self) -> None:
        """Release the kernel log."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def poll(self) -> list[str]:
        """Problems found since the last poll: taint, then kernel log lines."""
        return self._taint_problems() + self._log_problems()

    def _taint_problems(self) -> list[str]:
        try:
            now = read_taint()
        except OSError:
            return []
        out = []
        if self.taint0 and not self.tolerate_taint and not self._said_start:
            out.append(f"kernel was already tainted at start: {describe_taint(self.taint0)} "
                       "(tolerate with --tolerate-taint)")
            self._said_start = True
        new = now & ~self.taint0 & ~self._reported_taint
        if new:
            out.append(f"kernel taint {describe_taint(self.taint0)} -> {describe_taint(now)}: "
                       f"new {describe_taint(new)}")
            self._reported_taint |= new
        return out

    def _log_problems(self) -> list[str]:
        out = []
        for rec in self._read_records():
            if not BAD_LINE.search(rec.text):
                continue
            if rec.facility != 0 and not any(t in rec.text for t in self.tokens):
                continue  # user space, and not written for this run
            source = "kernel" if rec.facility == 0 else "user space"
            out.append(f"kernel log ({source}, seq {rec.seq}): {rec.text}")
        if len(out) > MAX_LINES:
            out[MAX_LINES:] = [f"... {len(out) - MAX_LINES} more kernel log lines"]
        return out

    def _read_records(self) -> list[KmsgRecord]:
        records: list[KmsgRecord] = []
        while self._fd is not None:
            try:
                raw = os.read(self._fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten before we read it: go on
                    note = "some kernel log records were overwritten before they were read"
                    if note not in self.notes:
                        self.notes.append(note)
                    continue
                raise
            if not raw:
                break
            rec = parse_record(raw)
            if rec is not None:
                records.append(rec)
        return records
