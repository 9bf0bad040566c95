"""Lazy restore: private anonymous memory filled on demand through userfaultfd.

`restore --lazy-pages` (engine.restore.lazy) rebuilds the tree as usual but leaves the
pages of private anonymous VMAs unpopulated. Before the tasks' state is finished it
creates one userfaultfd per process (mm) inside the task, registers those VMAs for
missing-page faults, copies the fd out with pidfd_getfd (the task's own copy is closed)
and hands it to the `lazy-pages` daemon (engine.lazy.daemon) over the unix socket
SOCKET_NAME in the images directory. The daemon answers faults with UFFDIO_COPY from the
pages files (following parent images), copies every other page in the background, and
exits once all pages are in or every task is gone. When it closes the userfaultfds the
kernel unregisters the ranges, so pages never stored (zeros) fault normally afterwards.
"""

import os

from engine.errors import EngineError
from engine.kernel import uapi

#: unix socket the daemon listens on, in the images directory
SOCKET_NAME = "lazy-pages.sock"


def open_dir(images_dir: str, phase: str) -> int:
    """An O_PATH descriptor of the images directory, for socket_path(); EngineError
    (`phase`) naming the directory when it cannot be opened."""
    try:
        return os.open(images_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise EngineError(phase, f"{images_dir}: {e.strerror}") from None


def socket_path(dir_fd: int) -> str:
    """The daemon's socket in the images directory open at `dir_fd` (open_dir), by a path
    that fits a unix socket address (107 bytes) however long the directory's own is."""
    return f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}"

#: userfaultfd events the daemon handles: without FORK a child's copy of a lazy VMA would
#: lose its registration (untransferred pages would read as zeros), without REMAP an
#: mremap()ed one likewise; REMOVE and UNMAP tell it which pages must no longer be copied
#: (MADV_DONTNEED'ed or unmapped ranges).
FEATURES = (uapi.UFFD_FEATURE_EVENT_FORK | uapi.UFFD_FEATURE_EVENT_REMAP
            | uapi.UFFD_FEATURE_EVENT_REMOVE | uapi.UFFD_FEATURE_EVENT_UNMAP)

#: why a tree in its own user namespace is refused (DESIGN.md section 7)
USERNS_REASON = ("a task in a user namespace only gets a user-mode userfaultfd (kernel-side "
                 "faults would get SIGBUS), so its memory cannot be restored lazily")
