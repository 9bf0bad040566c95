"""`restore --lazy-pages`: the restore's side of lazy restore (see engine.lazy).

`LazyPages.connect()` checks the image can be restored lazily and connects to the daemon
before any task exists. The restorer then writes only `eager_vmas()` (every VMA that is
not private anonymous, plus the pages holding the threads' rseq areas, which the engine
itself writes later through /proc/PID/mem, where a missing userfaultfd page gives EIO
instead of a fault). `hand_over()`, after the pages and before the tasks' state is
finished, creates a userfaultfd in each process, registers its lazy ranges for missing
faults, and passes the fds to the daemon, which serves from then on; `confirm()`, before
the tasks are let go, waits for the daemon's word that it took them.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import replace

from engine.errors import EngineError
from engine.images import DumpImage
from engine.images.records import PAGE_SIZE, MmCore, ThreadCore, Vma
from engine.kernel import uapi, uffd
from engine.kernel.blob import BlobRunner
from engine.lazy import FEATURES, SOCKET_NAME, USERNS_REASON, open_dir, protocol, socket_path

_CONNECT_WAIT = 10.0  # the daemon may have been started just before us


def is_lazy(v: Vma) -> bool:
    """Private anonymous VMAs are filled by the daemon; not locked ones (mlock would
    populate them) nor unreadable ones (PROT_NONE, execute-only): process_vm_readv, which
    waits for a missing page to be served, cannot read those, so a checker could not see
    their contents before the background copy reaches them."""
    return (v.kind in ("anon", "heap", "stack") and v.flags & uapi.MAP_PRIVATE != 0
            and v.flags & uapi.MAP_ANONYMOUS != 0 and v.prot & uapi.PROT_READ != 0
            and "lo" not in v.vmflags)


def refusal(image: DumpImage) -> str | None:
    """Why this image cannot be restored lazily, or None."""
    if any(n.type == "user" and not n.shared_with_engine for n in image.inventory.namespaces):
        return f"{image.path}: the tree is in its own user namespace: {USERNS_REASON}"
    return None


class LazyPages:
    """The connection to the lazy-pages daemon of one restore."""

    def __init__(self, image: DumpImage, sock: socket.socket, timeout: float) -> None:
        self.image = image
        self.sock = sock
        self.timeout = timeout

    @classmethod
    def connect(cls, image: DumpImage, timeout: float) -> LazyPages:
        """Refuse an image that cannot be lazy, else connect to the daemon in its dir."""
        why = refusal(image)
        if why:
            raise EngineError("restore", f"--lazy-pages refused: {why}")
        path = os.path.join(image.path, SOCKET_NAME)
        deadline = time.monotonic() + _CONNECT_WAIT
        dir_fd = open_dir(image.path, "restore")  # (any path length: socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            while True:
                try:
                    sock.connect(socket_path(dir_fd))
                    break
                except (FileNotFoundError, ConnectionRefusedError) as e:
                    if time.monotonic() > deadline:
                        sock.close()
                        raise EngineError("restore", f"no lazy-pages daemon at {path}: "
                                                     f"{e.strerror}") from None
                    time.sleep(0.01)
        finally:
            os.close(dir_fd)
        return cls(image, sock, timeout)

    def eager_vmas(self, mm: MmCore, threads: list[ThreadCore]) -> list[Vma]:
        """What the restore still writes itself, in address order: non-lazy VMAs whole,
        and in lazy ones the pages holding rseq areas."""
        out = [v for v in mm.vmas if not is_lazy(v)]
        pages: set[int] = set()
        for th in threads:
            if th.rseq is not None and th.rseq.ptr:
                first = th.rseq.ptr & ~(PAGE_SIZE - 1)
                pages.update(range(first, th.rseq.ptr + th.rseq.size, PAGE_SIZE))
        for v in mm.vmas:
            if is_lazy(v):
                out.extend(replace(v, start=p, end=p + PAGE_SIZE) for p in sorted(pages)
                           if v.start <= p < v.end)
        # in address order, as the page walk (pages.task_chunks) takes VMAs: one out of
        # order was never written, and the daemon served it on the restore's own fault
        out.sort(key=lambda v: v.start)
        return out

    def hand_over(self, tasks: list[tuple[int, MmCore, BlobRunner]]) -> None:
        """For each (image pid, mm, runner of the task stopped in its table runner):
        userfaultfd made in the task, lazy ranges registered, fd sent to the daemon;
        confirm() says whether it took them."""
        try:
            for pid, mm, runner in tasks:
                ranges = _ranges(mm)
                if not ranges:
                    continue
                fd = uffd.create_by_runner(runner, FEATURES)
                real = runner.pid
                try:
                    for start, end in ranges:
                        # On our copy: the context is the task's mm whoever holds the fd.
                        uffd.register(fd, start, end - start,
                                      uapi.UFFDIO_REGISTER_MODE_MISSING)
                    protocol.send_task(self.sock, protocol.Handover(pid, real, ranges, fd))
                finally:
                    os.close(fd)
            protocol.send_done(self.sock)
        except OSError as e:
            raise EngineError("mm", f"lazy-pages hand-over: {e}") from None

    def confirm(self) -> None:
        """Wait for the daemon's word that it took the tasks of hand_over() (asked only
        before they are let go: the daemon takes them while their state is restored)."""
        try:
            self.sock.settimeout(self.timeout)
            ack = self.sock.recv(len(protocol.ACK))
        except OSError as e:
            raise EngineError("mm", f"lazy-pages hand-over: {e}") from None
        if ack != protocol.ACK:
            raise EngineError("mm", "the lazy-pages daemon did not take the tasks "
                                    "(see its log)")

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()


def _ranges(mm: MmCore) -> list[tuple[int, int]]:
    """Lazy VMAs, adjacent ones merged (one UFFDIO_REGISTER covers several VMAs)."""
    out: list[tuple[int, int]] = []
    for v in mm.vmas:
        if not is_lazy(v):
            continue
        if out and out[-1][1] == v.start:
            out[-1] = (out[-1][0], v.end)
        else:
            out.append((v.start, v.end))
    return out
