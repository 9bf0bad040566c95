"""Dump: freeze a process tree with ptrace and write its images (see dumper.py)."""

from __future__ import annotations

from engine.kernel.sys import timer_restore_ids

_LEADERLESS_PGID = ("a process group with no leader in the tree that is not the parent's is "
                    "refused: restore could not make it again")


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
        "inotify": (True, ""),
        "fanotify": (True, ""),
        "pidfd": (True, ""),
        "unix_socketpair": (True, ""),
        # bound (path, relative path, abstract) sockets, one-way datagram connections
        "unix_named": (True, ""),
        # listeners, with connections accepted and still waiting in their queue
        "unix_listen": (True, ""),
        # fds in flight (SCM_RIGHTS) in a queue: pipes, sockets, anon-inode files
        "unix_scm_rights": (True, ""),
        "tcp": (True, ""),
        # connections waiting in a listener's accept queue (from clients in the tree)
        "tcp_listen_pending": (True, ""),
        # FIN_WAIT2 / CLOSE_WAIT pairs in the tree, via repair mode and a FIN sent again
        "tcp_half_closed": (True, ""),
        "udp": (True, ""),
        "file_locks": (True, ""),
        # mappings of unlinked files: the file's content saved, made again at restore
        "dump_deleted_file_mapping": (True, ""),
        # refused at dump (tests that expect the refusal name these: crfail_unless)
        "dump_leaderless_pgid": (False, _LEADERLESS_PGID),
        "netlink": (True, ""),
        "raw_socket": (True, ""),
        "packet_socket": (True, ""),
        "udp_options": (True, ""),
        # dumped only where the restore can give each timer its id back
        "posix_timers": timer_restore_ids(),
        # a pty master in the tree: same pair number, termios, window size, both queues
        "pty_master": (True, ""),
        # the SysV segments (content, attaches), semaphore sets (values, last pids) and
        # message queues of a tree's own ipc namespace, and its sysctls
        "ipc_sysv": (True, ""),
        # POSIX message queues (linked or not): limits, messages, owner, mode, times
        "ipc_mqueue": (True, ""),
    }
