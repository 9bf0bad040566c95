"""Connected unix socket pairs rebuilt from their two dumped ends (in the restored root,
before it forks, like every other file): one socketpair per pair, each end's queue filled
by writes from its peer, message by message, then the shutdown state of both ends."""

from __future__ import annotations

import fcntl
import os
import socket

from engine.errors import EngineError
from engine.images.records import FileRecord
from engine.kernel import uapi
from engine.kernel.sys import syscall

_SHUT = ((2, socket.SHUT_WR), (1, socket.SHUT_RD))  # (sk_shutdown bit, how)


class Pairs:
    """Socket pairs made so far: inode of an end -> the fd made for it."""

    def __init__(self, contents: dict[int, bytes], floor: int) -> None:
        self.contents = contents  # file id -> saved queue
        self.floor = floor  # the pair's own fds go above every fd number of the tree
        self._fd: dict[int, int] = {}
        self._rec: dict[int, FileRecord] = {}

    def end(self, rec: FileRecord) -> int:
        """The fd for this end (the pair is made, and filled, when either end is asked
        for first); the caller dups it to its place and sets its status flags."""
        assert rec.unix is not None
        if rec.inode not in self._fd:
            a, b = socket.socketpair(socket.AF_UNIX, rec.unix.type)
            self._fd[rec.inode] = fcntl.fcntl(a.fileno(), fcntl.F_DUPFD_CLOEXEC, self.floor)
            self._fd[rec.unix.peer] = fcntl.fcntl(b.fileno(), fcntl.F_DUPFD_CLOEXEC,
                                                  self.floor)
            a.close()
            b.close()
        self._rec[rec.inode] = rec
        peer = self._rec.get(rec.unix.peer)
        if peer is not None:  # both ends known now: fill both queues, then shut down
            self._fill(rec, self._fd[peer.inode])
            self._fill(peer, self._fd[rec.inode])
            for r in (rec, peer):
                self._shutdown(r)
        return self._fd[rec.inode]

    def _fill(self, rec: FileRecord, sender: int) -> None:
        assert rec.unix is not None
        data = memoryview(self.contents.get(rec.id, b""))
        flags = fcntl.fcntl(sender, fcntl.F_GETFL)
        fcntl.fcntl(sender, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        try:
            for n in rec.unix.queued:
                if os.write(sender, data[:n]) != n:
                    raise EngineError("files", f"unix socket {rec.link}: short write")
                data = data[n:]
        except BlockingIOError:
            raise EngineError("files", f"unix socket {rec.link}: the queued data does "
                                       "not fit the new socket") from None
        finally:
            fcntl.fcntl(sender, fcntl.F_SETFL, flags)

    def _shutdown(self, rec: FileRecord) -> None:
        assert rec.unix is not None
        for bit, how in _SHUT:
            if rec.unix.shutdown & bit:
                syscall(uapi.SYS_shutdown, self._fd[rec.inode], how)



def check(files: dict[int, FileRecord], contents: dict[int, bytes]) -> None:
    """Both ends of every pair are in the plan, of one type, and each saved queue holds
    exactly its messages."""
    by_ino = {r.inode: r for r in files.values() if r.unix is not None}
    for r in by_ino.values():
        assert r.unix is not None
        peer = by_ino.get(r.unix.peer)
        if peer is None or peer.unix is None or peer.unix.peer != r.inode \
                or peer.unix.type != r.unix.type:
            raise EngineError("read", f"file {r.id}: unix socket {r.inode}: its peer "
                                      f"{r.unix.peer} is not its other end in the image")
        size = len(contents.get(r.id, b""))
        if sum(r.unix.queued) != size:
            raise EngineError("read", f"file {r.id}: unix socket queue {r.content} holds "
                                      f"{size} bytes, its messages {sum(r.unix.queued)}")
