"""/proc/PID/stat (tree identity, state, and the mm fields PR_SET_MM_MAP needs)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stat:
    """Selected fields of /proc/PID/stat (proc(5) numbering in comments)."""

    pid: int  # 1
    comm: str  # 2
    state: str  # 3
    ppid: int  # 4
    pgid: int  # 5
    sid: int  # 6
    tty_nr: int  # 7
    tpgid: int  # 8: foreground process group of the controlling terminal (-1: none)
    flags: int  # 9
    nice: int  # 19
    num_threads: int  # 20
    starttime: int  # 22
    vsize: int  # 23
    rss: int  # 24
    start_code: int  # 26
    end_code: int  # 27
    start_stack: int  # 28
    exit_signal: int  # 38
    processor: int  # 39
    rt_priority: int  # 40
    policy: int  # 41
    start_data: int  # 45
    end_data: int  # 46
    start_brk: int  # 47
    arg_start: int  # 48
    arg_end: int  # 49
    env_start: int  # 50
    env_end: int  # 51
    exit_code: int  # 52


def parse_stat(text: str) -> Stat:
    """Parse stat content; comm may contain spaces and parentheses."""
    lpar = text.index("(")
    rpar = text.rindex(")")
    pid = int(text[:lpar])
    comm = text[lpar + 1:rpar]
    rest = text[rpar + 2:].split()
    # rest[0] is field 3 (state); field n is rest[n - 3]

    def f(n: int) -> int:
        return int(rest[n - 3])

    return Stat(
        pid=pid, comm=comm, state=rest[0], ppid=f(4), pgid=f(5), sid=f(6), tty_nr=f(7),
        tpgid=f(8), flags=f(9), nice=f(19), num_threads=f(20), starttime=f(22), vsize=f(23),
        rss=f(24),
        start_code=f(26), end_code=f(27), start_stack=f(28), exit_signal=f(38),
        processor=f(39), rt_priority=f(40), policy=f(41), start_data=f(45), end_data=f(46), start_brk=f(47), arg_start=f(48),
        arg_end=f(49), env_start=f(50), env_end=f(51), exit_code=f(52),
    )


def read_stat(pid: int, tid: int | None = None) -> Stat:
    """/proc/PID/stat, or /proc/PID/task/TID/stat for one thread."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse_stat(f.read())
