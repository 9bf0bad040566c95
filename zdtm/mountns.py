"""Each test run in a mount namespace of its own, and the mounts a run leaves removed.

The leak check compares the harness's mount table before and after a run. Read from the
host's table it would see every mount any other job on the machine makes meanwhile (a
neighbour's tmpfs would fail an unrelated test as "mount left behind"). So every run first
moves the harness process (its main thread, from which the test, the engine and every helper
are forked) into a fresh mount namespace, a copy of the current one with every mount made
private: nothing mounted or unmounted elsewhere propagates in, and nothing the run (or a
test of the h flavour, which lives in the harness's namespaces) mounts propagates out. The
next run starts from a fresh copy again.

Unsharing needs CAP_SYS_ADMIN; without it the run goes on in the shared table and the result
says so (then a neighbour's mounts can show as leaks).
"""

from __future__ import annotations

import os
import re

from zdtm.plumbing import check_libc, libc

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2


def enter_private() -> str | None:
    """Move the calling thread (the harness's main thread) into a new private mount
    namespace; None on success, else why the run shares the machine's mount table."""
    try:
        check_libc(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        check_libc(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None),
               "mount --make-rprivate /")
    except OSError as exc:
        return f"no mount namespace of its own ({exc}): mounts of other jobs may show as leaks"
    return None


def remove(mounts: set[tuple[str, str, str]]) -> list[str]:
    """Detach the given mounts, deepest first; returns a line per mount that stays."""
    failed = []
    for point, fstype, _source in sorted(mounts, key=lambda m: -m[0].count("/")):
        # mountinfo escapes space, tab, newline and backslash as \ooo
        path = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)
        try:
            check_libc(libc.umount2(os.fsencode(path), MNT_DETACH), f"umount {point}")
        except OSError as exc:
            failed.append(f"mount {point} ({fstype}) could not be removed: {exc}")
    return failed
