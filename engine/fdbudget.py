"""How many fds a restore holds at once, and room for them under RLIMIT_NOFILE.

The restore's root opens every file description above the highest fd number of any task
(so placing the tasks' fds never collides with them), beside the engine's own fds: one
home for that count, used by the dump (which refuses a tree the restore could not hold,
before anything is killed) and by the restore (which raises its limit before forking).
"""

from __future__ import annotations

import resource

#: the engine's own fds, the spawn pipes and slack, beside the tree's objects
ENGINE_FDS = 64


def needed(max_fd: int, descriptions: int) -> int:
    """Fds open at once while restoring tasks whose highest fd is `max_fd`, holding
    `descriptions` open file descriptions (memfds included)."""
    return max(max_fd, 2) + 1 + ENGINE_FDS + descriptions


def make_room(need: int) -> str:
    """Raise this process's RLIMIT_NOFILE to `need` (children inherit it); "" when done,
    else why not (the hard limit goes up only with CAP_SYS_RESOURCE, to fs.nr_open)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return ""
    new_hard = hard if hard == resource.RLIM_INFINITY else max(hard, need)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, new_hard))
    except (OSError, ValueError) as e:
        return f"RLIMIT_NOFILE ({soft}, {hard}) cannot be raised to {need}: {e}"
    return ""
