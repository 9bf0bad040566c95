"""Restore: build a task from an image with its original pid, fds, memory and state.

Entry points: `engine.restore.cli` (the `restore` command) and
`engine.restore.restorer.restore(RestoreOptions)`. See restorer.py for the sequence.
"""


def features() -> dict[str, tuple[bool, str]]:
    """What the restorer implements (for `python -m engine check`): name -> (available,
    reason when not)."""
    return {
        "restore": (True, ""),
        "restore_shmem": (True, ""),
        "restore_tree": (True, ""),
        "restore_threads": (True, ""),
        "lazy_pages": (False, "lazy restore (userfaultfd page server) is not implemented yet"),
    }
