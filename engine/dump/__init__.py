"""Dump: freeze a process tree with ptrace and write its images (see dumper.py)."""

from __future__ import annotations

from engine.kernel.sys import timer_restore_ids


def features() -> dict[str, tuple[bool, str]]:
    """What the dumper implements (for `python -m engine check`): name -> (available,
    reason when not)."""
    return {
        "dump": (True, ""),
        "dump_threads": (True, ""),
        "dump_tree": (True, ""),
        "dump_shmem": (True, ""),
        "pre_dump": (True, ""),
        "dump_incremental": (True, ""),
        "eventfd": (True, ""),
        "signalfd": (True, ""),
        "timerfd": (True, ""),
        "epoll": (True, ""),
        "unix_socketpair": (True, ""),
        "tcp": (True, ""),
        "udp": (True, ""),
        "file_locks": (True, ""),
        "netlink": (True, ""),
        "raw_socket": (True, ""),
        "packet_socket": (True, ""),
        "udp_options": (True, ""),
        # dumped only where the restore can give each timer its id back
        "posix_timers": timer_restore_ids(),
    }
