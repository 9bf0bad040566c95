"""/proc/PID/timers: the POSIX timers of a process (ids, clocks, how each notifies)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.kernel import uapi

_NOTIFY = {"signal": uapi.SIGEV_SIGNAL, "none": uapi.SIGEV_NONE, "thread": uapi.SIGEV_THREAD}


@dataclass(frozen=True)
class Timer:
    """One timer: id, clock id, signal and sigev value, sigev_notify (SIGEV_THREAD_ID
    added when it names a thread) and the pid or tid it notifies."""

    id: int
    clock_id: int
    signo: int
    sigev_value: int
    notify: int
    notify_tid: int


def parse_timers(text: str) -> list[Timer]:
    """Parse timers content: blocks of "ID: N", "signal: SIGNO/VALUE",
    "notify: KIND/pid.N" (or "KIND/tid.N"), "ClockID: N"."""
    blocks: list[dict[str, str]] = []
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if not sep:
            continue
        if key == "ID":
            blocks.append({})
        if blocks:
            blocks[-1][key] = value
    out: list[Timer] = []
    for fields in blocks:
        signo, value = fields["signal"].split("/")
        kind, who = fields["notify"].split("/")
        scope, num = who.split(".")
        notify = _NOTIFY[kind] | (uapi.SIGEV_THREAD_ID if scope == "tid" else 0)
        out.append(Timer(int(fields["ID"]), int(fields["ClockID"]), int(signo),
                         int(value, 16), notify, int(num)))
    return out


def read_timers(pid: int) -> list[Timer]:
    """POSIX timers of ``pid``."""
    with open(f"/proc/{pid}/timers", encoding="ascii") as f:
        return parse_timers(f.read())
