"""Files created in a user namespace with a given owner.

In a user namespace the restored root task's own ids are unmapped, so it can neither
create a file there nor chown one it made. A thread whose fsuid/fsgid are the owner's
creates it instead (fs ids are per thread)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from engine.kernel import uapi
from engine.kernel.sys import syscall

T = TypeVar("T")


def as_fs_owner(owner: tuple[int, int], create: Callable[[], T]) -> T:
    """Run `create` in a thread whose fsuid/fsgid are owner (uid, gid, as seen inside
    the task's user namespace) and return its result (or raise its exception)."""
    out: list[T | BaseException] = []

    def body() -> None:
        try:
            syscall(uapi.SYS_setfsgid, owner[1])
            syscall(uapi.SYS_setfsuid, owner[0])
            out.append(create())
        except BaseException as e:  # noqa: BLE001 (handed to the caller)
            out.append(e)

    th = threading.Thread(target=body)
    th.start()
    th.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]
