"""Large page runs written by the frozen task itself, straight from its memory (the dump's
side of engine/restore/selfread.py).

The engine's own path reads the task's memory into staging buffers (process_vm_readv) and
writes them with O_DIRECT, 16 MiB at a time. For long runs the task instead opens the pages
file (with O_DIRECT where the engine's descriptor has it, see directio.py) and pwrites each run from its own memory (injected syscalls, one per run
of up to 1 GiB): the disk reads the task's pages directly, one big request keeps its queue
full, and the engine copies nothing (on the reference VM one 1 GiB write took 0.68-0.74 s,
16 MiB writes 0.77-0.97 s, before counting the engine's copy).

Only where it cannot change what the task sees: no seccomp filter (an injected open could
kill it), no file size limit (a write past RLIMIT_FSIZE queues SIGXFSZ), and the descriptor
the task got must be the engine's very file (checked by inode: a chroot or another mount
namespace could resolve the path elsewhere); it is closed before the task is released. What
the task does not write in full comes back to the engine, which writes it its own way.

Before writing a run the task also computes its page checksums (pagecrc.in_task: the
engine's page_crcs routine on a code page mapped in the task), so no byte is read twice
or copied for them; without SSE4.2 the engine writes (and sums) everything.

Should the engine die meanwhile, a task injected with a signal frame (inject.py) runs
blob.S crc_return from wherever it is: it closes the pages file, unmaps that code page
and puts itself back as it was.
"""

from __future__ import annotations

import os
from array import array

from engine.dump.pages import Run
from engine.images import PagesWriter
from engine.images.directio import task_flags
from engine.kernel import blob, intask, pagecrc, uapi
from engine.kernel.inject import SYSCALL_RET, InjectError, Injector, find_code
from engine.proc.fdinfo import is_same_file
from engine.proc.limits import read_limits
from engine.proc.status import read_status

#: Runs shorter than this stay with the engine (one injected syscall costs ~30-60 us).
MIN_RUN = 1 << 20
#: A process with fewer private bytes to write has the engine write them all: the
#: injection (a handful of round trips, each waiting for the task to be scheduled) costs
#: more than it saves.
MIN_TOTAL = 64 << 20
#: One pwrite at most this long (a write moves at most 2 GiB - 4 KiB).
MAX_WRITE = 1 << 30
#: The deadline of each injected write allows for a disk this slow.
MIN_BYTES_PER_S = 16 << 20
#: Pages summed per in-task call (their checksums fill a buffer of 4 bytes each).
SUM_PAGES = 1 << 16
_INJECT_TIMEOUT = 10.0
_OPEN_FLAGS = uapi.O_WRONLY | uapi.O_CLOEXEC  # | O_DIRECT where the engine's file has it


def wanted(runs: list[Run]) -> bool:
    """Whether a process with these runs to copy writes some itself: MIN_TOTAL in all, and
    a readable run of MIN_RUN or more (30,000 one-page runs have none: their copy need not
    wait for smaps, which must be read before anything is injected)."""
    return sum(r.length for r in runs) >= MIN_TOTAL and any(
        r.length >= MIN_RUN and not r.via_mem for r in runs)


class TaskWriter:
    """`write_pages`' task_writer for one frozen process (its main thread injects)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.bytes = 0  # written by the task, for the statistics

    def __call__(self, out: PagesWriter, placed: list[tuple[Run, int]]
                 ) -> list[tuple[Run, int]]:
        """Have the task write its long readable runs; returns the pairs left to do."""
        mine = [(r, off) for r, off in placed if not r.via_mem and r.length >= MIN_RUN]
        if not mine or not pagecrc.native() or not self._allowed():
            return placed
        done = self._write(out, mine)
        self.bytes += sum(r.length for r, _ in mine if r.addr in done)
        return [(r, off) for r, off in placed if r.addr not in done]

    def _allowed(self) -> bool:
        if read_status(self.pid).seccomp:
            return False
        fsize = next((lim for lim in read_limits(self.pid) if lim.name == "RLIMIT_FSIZE"),
                     None)
        return fsize is not None and fsize.soft == uapi.RLIM_INFINITY

    def _write(self, out: PagesWriter, mine: list[tuple[Run, int]]) -> set[int]:
        """Addresses of the runs the task wrote in full."""
        timeout = _INJECT_TIMEOUT + MAX_WRITE / MIN_BYTES_PER_S  # per injected syscall
        done: set[int] = set()
        try:
            inj = Injector(self.pid, timeout)
        except (OSError, InjectError):
            return done  # nothing to inject with here: the engine writes it all
        with inj:
            raw = os.fsencode(os.path.abspath(out.path)) + b"\0"
            sums_at = (len(raw) + 15) & ~15
            # looked up first: between the mapping and go_home a dead engine leaves it
            gadget = (find_code(self.pid, inj.mem_fd, (SYSCALL_RET,), inj.proc,
                                inj.exec_maps) if inj.frame else 0)
            try:
                code, buf = inj.code_scratch(blob.CODE,
                                             sums_at + pagecrc.task_scratch_bytes(SUM_PAGES))
            except OSError:
                return done  # no code page allowed here: the engine writes it all
            # the fd the open gets
            intask.go_home(inj, code, -1, gadget, blob.CRC_OPEN_RETURN_OFFSET)
            inj.write(buf, raw)
            flags = _OPEN_FLAGS | task_flags(out.direct)
            fd = inj.syscall(uapi.SYS_openat, uapi.AT_FDCWD, buf, flags)
            if fd < 0:
                return done
            try:
                intask.go_home(inj, code, fd, gadget)
                if not is_same_file(self.pid, fd, out.fd):
                    return done
                for r, off in mine:
                    sums = _sums(inj, code, buf + sums_at, r)
                    if self._pwrite_all(inj, fd, r, off):
                        out.claim(off, sums)
                        done.add(r.addr)
            finally:
                inj.syscall(uapi.SYS_close, fd)
                intask.go_home(inj, code, -1, gadget)
        return done

    @staticmethod
    def _pwrite_all(inj: Injector, fd: int, r: Run, off: int) -> bool:
        for k in range(0, r.length, MAX_WRITE):
            n = min(MAX_WRITE, r.length - k)
            if inj.syscall(uapi.SYS_pwrite64, fd, r.addr + k, n, off + k) != n:
                return False  # the engine writes the whole run again
        return True


def _sums(inj: Injector, code: int, out: int, r: Run) -> array[int]:
    """The page checksums of run r, computed by the task (SUM_PAGES at a time)."""
    sums = array("I")
    npages = r.length // uapi.PAGE_SIZE
    for first in range(0, npages, SUM_PAGES):
        n = min(SUM_PAGES, npages - first)
        timeout = _INJECT_TIMEOUT + n * uapi.PAGE_SIZE / MIN_BYTES_PER_S
        sums += pagecrc.in_task(inj.tid, inj.mem_fd, code, out,
                                r.addr + first * uapi.PAGE_SIZE, n, timeout,
                                inj.frame.address if inj.frame else 0,
                                inj.home_regs if inj.frame else None)
    return sums
