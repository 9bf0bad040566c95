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
        # restore --lazy-pages refuses a tree in its own user namespace
        "lazy_pages_uns": (False, USERNS_REASON),
    }
