"""Restore: build a task from an image with its original pid, fds, memory and state.

Entry points: `engine.restore.cli` (the `restore` command) and
`engine.restore.restorer.restore(RestoreOptions)`. See restorer.py for the sequence.
"""

from engine.lazy import USERNS_REASON


def features() -> dict[str, tuple[bool, str]]:
    """What the restorer implements (for `python -m engine check`): name -> (available,
    reason when not)."""
    return {
        "restore": (True, ""),
        "restore_shmem": (True, ""),
        "restore_tree": (True, ""),
        "restore_threads": (True, ""),
        "lazy_pages": (True, ""),
        # The harness's flavours: a tree in new pid, mount, net, uts, ipc and time
        # namespaces under its own init and root (ns), and one whose namespaces a user
        # namespace of its own owns (uns; off where the kernel has no user namespaces).
        "flavor_ns": (True, ""),
        "flavor_uns": (True, ""),
        "lazy_pages_ns": (True, ""),
        # restore --lazy-pages refuses a tree in its own user namespace
        "lazy_pages_uns": (False, USERNS_REASON),
        **{name: (True, "") for name in FIDELITY},
    }


#: State beyond the basics that restore gives back (tests declare them as `feature:`):
#: VMA hints (madvise/mlock VmFlags), PR_SET_THP_DISABLE, sched policy/priority/nice,
#: oom_score_adj, fsuid/fsgid, a SIGTRAP handler, the dumpable flag, tasks stopped by a
#: signal, memfds mapped at an offset/privately/of unaligned size, status flags per open
#: file description, F_SETOWN/F_SETSIG, O_PATH fds (symlinks too), FIFOs, character
#: devices, unlinked files with their name, owner, mode, times and holes, a vdso
#: moved or unmapped, sessions and groups not their parent's (zombies included), membarrier
#: registrations (a global one only where the kernel shows it: GET_REGISTRATIONS, 6.6+).
FIDELITY = ("restore_vma_hints", "restore_thp_disable", "restore_sched_policy",
            "restore_oom_score_adj", "restore_fs_ids", "restore_sigtrap_handler",
            "restore_dumpable", "restore_stopped_tasks", "restore_memfd_mapped",
            "restore_fd_status_flags", "restore_fd_owner", "restore_o_path", "restore_fifo",
            "restore_chr_devices", "restore_unlinked_attrs", "restore_vdso_moved",
            "restore_session_orphans", "restore_membarrier")
