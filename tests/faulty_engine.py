"""A deliberately faulty C/R engine, to prove the harness's checks can fail.

Two halves:

- A command-line tool, ``python tests/faulty_engine.py FAULT ROOT_PID RECORD``, that damages
  the deepest stopped process under ROOT_PID (the test itself, also under the ns flavours'
  init) the way a broken engine would and writes what it did to RECORD (JSON):

  ``leak-fd``      inject openat() of the test's own binary via /proc/self/exe (the maps06
                   bug: an fd kept open per file mapping)
  ``move-offset``  lseek() the first regular-file fd by one byte, through pidfd_getfd (same
                   open file description)
  ``flip-byte``    invert one byte of a present page of a private writable anonymous VMA
                   through /proc/PID/mem
  ``drop-vma``     inject munmap() of one private anonymous VMA
  ``wrong-ppid``   kill the parent of the deepest task, so that the task is re-parented to
                   the pid namespace's init (ns flavours: the root of the tree); needs three
                   levels, e.g. init -> fork_child -> its child
  ``hang``         never return (the harness's deadline must kill it)
  ``flip-shared``  invert one byte of the largest writable shared mapping (anonymous shared
                   memory or a memfd) through /proc/PID/mem
  ``new-uts``      inject unshare(CLONE_NEWUTS): the task moves to a uts namespace of its own
  ``dir-nonblock`` set O_NONBLOCK on the first directory fd, through pidfd_getfd (same open
                   file description)

  The last three hit the objects an engine's allowed deviations concern (zdtm.allowances):
  the shared VMA CRIU restores as a memfd, the namespaces of a task CRIU puts into a new
  time namespace, the directory fd CRIU reopens without O_DIRECTORY.

  The process stays in group-stop throughout: the injector seizes it, runs one syscall at a
  ``syscall`` instruction found in its vdso, puts every register back, and detaches.

- ``FaultyEngine``, an engine driver (zdtm/engines/base.py) for the harness lifecycle. It has
  two modes. "fake": no checkpoint at all; ``dump`` is only valid with leave_running (the
  lifecycle's --norst mode) and applies the fault to the live, frozen tree, which the
  lifecycle then snapshots as S1. "wrap": a real engine (the bundled one) dumps and restores
  with --leave-stopped, then the fault is applied to the restored tree before S1.

A process cannot be re-parented at will, nor a pid re-created under another parent, so
"wrong-ppid" gets its wrong ppid the one way the kernel offers: the parent dies and the
orphan goes to the namespace's init (its old parent stays a zombie, as the stopped init does
not reap it). The ppid comparison itself is also unit-tested on TreeState data
(tests/test_checks.py).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from zdtm import ROOT_DIR
from zdtm.allowances import Allowance
from zdtm.engines.base import (
    Engine,
    EngineFailure,
    Features,
    StepResult,
    TreeInfo,
    run_logged,
)

FAULTS = ("leak-fd", "move-offset", "flip-byte", "drop-vma", "wrong-ppid", "hang",
          "flip-shared", "new-uts", "dir-nonblock")

_SYS_PTRACE = 101
_SYS_PIDFD_GETFD = 438
_SYS_OPENAT = 257
_SYS_MUNMAP = 11
_SYS_UNSHARE = 272
CLONE_NEWUTS = 0x04000000
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_SYSCALL = 24
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_O_TRACESYSGOOD = 1
_WALL = 0x40000000
AT_FDCWD = -100
PAGE = os.sysconf("SC_PAGE_SIZE")
WAIT_TIMEOUT = 10.0

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class UserRegs(ctypes.Structure):
    """struct user_regs_struct (x86_64)."""

    _fields_ = [(name, ctypes.c_ulonglong) for name in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
        "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
        "gs_base", "ds", "es", "fs", "gs")]


def _sys(nr: int, *args: int) -> int:
    res = _libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syscall {nr}: {os.strerror(err)}")
    return res


def _ptrace(req: int, pid: int, addr: int = 0, data: int = 0) -> int:
    return _sys(_SYS_PTRACE, req, pid, addr, data)


def _maps(pid: int) -> list[tuple[int, int, str, str]]:
    """(start, end, perms, path) of every VMA."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split(None, 5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            out.append((start, end, fields[1], fields[5].strip() if len(fields) > 5 else ""))
    return out


class Injector:
    """Runs syscalls inside a stopped task and leaves it stopped, registers intact."""

    def __init__(self, pid: int) -> None:
        """Seize and trap the task (it stays in group-stop for the rest of the world)."""
        self.pid = pid
        _ptrace(PTRACE_SEIZE, pid, 0, PTRACE_O_TRACESYSGOOD)
        try:
            _ptrace(PTRACE_INTERRUPT, pid)
            self._wait()
            self.saved = UserRegs()
            _ptrace(PTRACE_GETREGS, pid, 0, ctypes.addressof(self.saved))
            self.site = self._syscall_site()
        except BaseException:
            _ptrace(PTRACE_DETACH, pid)
            raise

    def _wait(self) -> int:
        deadline = time.monotonic() + WAIT_TIMEOUT
        while time.monotonic() < deadline:
            got, status = os.waitpid(self.pid, os.WNOHANG | _WALL)
            if got == self.pid:
                if not os.WIFSTOPPED(status):
                    raise ProcessLookupError(f"pid {self.pid} exited while traced")
                return status
            time.sleep(0.001)
        raise TimeoutError(f"pid {self.pid} did not stop within {WAIT_TIMEOUT}s")

    def _syscall_site(self) -> int:
        """Address of a ``syscall`` instruction (0f 05) in the task's vdso."""
        for start, end, _perms, path in _maps(self.pid):
            if path == "[vdso]":
                with open(f"/proc/{self.pid}/mem", "rb", buffering=0) as mem:
                    mem.seek(start)
                    code = mem.read(end - start)
                at = code.find(b"\x0f\x05")
                if at >= 0:
                    return start + at
        raise RuntimeError(f"pid {self.pid}: no syscall instruction found in the vdso")

    def syscall(self, nr: int, *args: int) -> int:
        """Run one syscall in the task; returns its raw result (negative errno on failure)."""
        regs = UserRegs.from_buffer_copy(self.saved)
        regs.rax = nr
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(regs, name, value & (2**64 - 1))
        regs.orig_rax = 2**64 - 1  # no syscall restart on the way out of the stop
        regs.rip = self.site
        _ptrace(PTRACE_SETREGS, self.pid, 0, ctypes.addressof(regs))
        for _ in ("entry", "exit"):
            self._to_syscall_stop()
        _ptrace(PTRACE_GETREGS, self.pid, 0, ctypes.addressof(regs))
        return ctypes.c_longlong(regs.rax).value

    def _to_syscall_stop(self) -> None:
        """Resume to the next syscall-entry or -exit stop.

        A tracee seized in group-stop first reports PTRACE_EVENT_STOP again when resumed
        (the group is still stopped); resuming it once more runs it to the syscall.
        """
        for _ in range(10):
            _ptrace(PTRACE_SYSCALL, self.pid)
            if os.WSTOPSIG(self._wait()) == signal.SIGTRAP | 0x80:
                return
        raise RuntimeError(f"pid {self.pid}: no syscall stop after 10 resumes")

    def close(self) -> None:
        """Put the registers back and detach: the task returns into group-stop."""
        _ptrace(PTRACE_SETREGS, self.pid, 0, ctypes.addressof(self.saved))
        _ptrace(PTRACE_DETACH, self.pid)


def _mem_write(pid: int, addr: int, data: bytes) -> bytes:
    """Write data at addr of pid; returns what was there before."""
    fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    try:
        old = os.pread(fd, len(data), addr)
        os.pwrite(fd, data, addr)
        return old
    finally:
        os.close(fd)


def leak_fd(pid: int) -> dict:
    """Inject openat("/proc/self/exe"), the test's binary: an fd it never had.

    The magic link, not the binary's path: the syscall runs with the task's credentials,
    and in the uns flavour the task may not search the directories on that path.
    """
    path = os.readlink(f"/proc/{pid}/exe")
    inj = Injector(pid)
    try:
        # the path goes below the red zone of the stack, and the old bytes come back after
        addr = (inj.saved.rsp - 1024) & ~15
        old = _mem_write(pid, addr, b"/proc/self/exe\0")
        try:
            fd = inj.syscall(_SYS_OPENAT, AT_FDCWD, addr, os.O_RDONLY, 0)
        finally:
            _mem_write(pid, addr, old)
    finally:
        inj.close()
    if fd < 0:
        raise OSError(-fd, f"injected openat({path}) failed: {os.strerror(-fd)}")
    return {"fd": fd, "path": path}


def move_offset(pid: int) -> dict:
    """Move the offset of the first regular-file fd by one byte (shared description)."""
    for name in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        link = f"/proc/{pid}/fd/{name}"
        if stat.S_ISREG(os.stat(link).st_mode):
            break
    else:
        raise RuntimeError(f"pid {pid} has no regular-file fd to move")
    fd = int(name)
    pidfd = os.pidfd_open(pid)
    try:
        copy = _sys(_SYS_PIDFD_GETFD, pidfd, fd, 0)
    finally:
        os.close(pidfd)
    try:
        before = os.lseek(copy, 0, os.SEEK_CUR)
        after = os.lseek(copy, before + 1, os.SEEK_SET)
    finally:
        os.close(copy)
    return {"fd": fd, "path": os.readlink(link), "pos_before": before, "pos_after": after}


def _pick_anon_vma(pid: int) -> tuple[int, int, int]:
    """(start, end, first present page) of a private writable anonymous VMA with data,
    preferring large VMAs with no neighbour the harness could merge them with."""
    vmas = _maps(pid)
    cands = []
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pm:
        for i, (start, end, perms, path) in enumerate(vmas):
            if perms != "rw-p" or path:
                continue
            pm.seek(start // PAGE * 8)
            entries = pm.read((end - start) // PAGE * 8)
            present = [k for k in range(0, len(entries), 8) if entries[k + 7] & 0x80]
            if not present:
                continue
            isolated = (i == 0 or vmas[i - 1][1] != start) and (
                i + 1 == len(vmas) or vmas[i + 1][0] != end)
            first = start + present[0] // 8 * PAGE
            cands.append((isolated, end - start, start, end, first))
    if not cands:
        raise RuntimeError(f"pid {pid}: no private anonymous VMA with data")
    best = max(cands)
    return best[2], best[3], best[4]


def flip_byte(pid: int) -> dict:
    """Invert one byte in a present page of private anonymous memory."""
    start, end, page = _pick_anon_vma(pid)
    addr = page + 0x123  # not in the first 32 bytes, where an rseq area could be
    fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    try:
        old = os.pread(fd, 1, addr)
        os.pwrite(fd, bytes([old[0] ^ 0xFF]), addr)
    finally:
        os.close(fd)
    return {"vma": [start, end], "addr": addr}


def drop_vma(pid: int) -> dict:
    """Inject munmap() of a whole private anonymous VMA."""
    start, end, _page = _pick_anon_vma(pid)
    inj = Injector(pid)
    try:
        res = inj.syscall(_SYS_MUNMAP, start, end - start)
    finally:
        inj.close()
    if res < 0:
        raise OSError(-res, f"injected munmap failed: {os.strerror(-res)}")
    return {"vma": [start, end]}


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def wrong_ppid(pid: int) -> dict:
    """SIGKILL the parent of pid and wait until pid has been re-parented."""
    parent = _ppid(pid)
    before = _inner_pid(parent)
    os.kill(parent, signal.SIGKILL)
    deadline = time.monotonic() + WAIT_TIMEOUT
    while _ppid(pid) == parent:
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {pid} not re-parented after its parent {parent} died")
        time.sleep(0.005)
    return {"killed": parent, "ppid_before": before, "ppid_after": _inner_pid(_ppid(pid))}


def flip_shared(pid: int) -> dict:
    """Invert one byte in the first page of the largest writable shared mapping (written
    through /proc/PID/mem, so into the shared object even where no page is mapped yet)."""
    shared = [(end - start, start, end, path) for start, end, perms, path in _maps(pid)
              if perms[3] == "s" and "w" in perms]
    if not shared:
        raise RuntimeError(f"pid {pid}: no writable shared mapping")
    _, start, end, path = max(shared)
    addr = start + 0x123
    fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    try:
        old = os.pread(fd, 1, addr)
        os.pwrite(fd, bytes([old[0] ^ 0xFF]), addr)
    finally:
        os.close(fd)
    return {"vma": [start, end], "addr": addr, "path": path}


def new_uts(pid: int) -> dict:
    """Inject unshare(CLONE_NEWUTS)."""
    inj = Injector(pid)
    try:
        res = inj.syscall(_SYS_UNSHARE, CLONE_NEWUTS)
    finally:
        inj.close()
    if res < 0:
        raise OSError(-res, f"injected unshare failed: {os.strerror(-res)}")
    return {"uts": os.readlink(f"/proc/{pid}/ns/uts")}


def dir_nonblock(pid: int) -> dict:
    """Set O_NONBLOCK on the first directory fd (its open file description)."""
    for name in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        if stat.S_ISDIR(os.stat(f"/proc/{pid}/fd/{name}").st_mode):
            break
    else:
        raise RuntimeError(f"pid {pid} has no directory fd")
    pidfd = os.pidfd_open(pid)
    try:
        copy = _sys(_SYS_PIDFD_GETFD, pidfd, int(name), 0)
    finally:
        os.close(pidfd)
    try:
        os.set_blocking(copy, False)
    finally:
        os.close(copy)
    return {"fd": int(name), "path": os.readlink(f"/proc/{pid}/fd/{name}")}


def hang(pid: int) -> dict:
    """An engine that never answers."""
    del pid
    while True:
        time.sleep(3600)


ACTIONS = {"leak-fd": leak_fd, "move-offset": move_offset, "flip-byte": flip_byte,
           "drop-vma": drop_vma, "wrong-ppid": wrong_ppid, "hang": hang,
           "flip-shared": flip_shared, "new-uts": new_uts, "dir-nonblock": dir_nonblock}


def _children(pid: int) -> list[int]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out.extend(int(c) for c in f.read().split())
    return sorted(out)


def victim(root: int) -> int:
    """The deepest task of the tree (first in pid order): the test process itself, also in
    the ns flavours where the root is the namespace's init."""
    level = [root]
    while True:
        below = [c for p in level for c in _children(p)]
        if not below:
            return level[0]
        level = below


def _inner_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    return pid


def main(argv: list[str]) -> int:
    """CLI: FAULT ROOT_PID RECORD (the fault hits the deepest task under ROOT_PID)."""
    if len(argv) != 3 or argv[0] not in ACTIONS:
        print(f"usage: faulty_engine.py {{{','.join(FAULTS)}}} ROOT_PID RECORD",
              file=sys.stderr)
        return 2
    fault, root, record = argv[0], int(argv[1]), Path(argv[2])
    pid = victim(root)
    try:
        done = ACTIONS[fault](pid)
    except OSError as e:
        print(f"faulty-engine: error: {fault}: {e}", file=sys.stderr)
        return 1 if e.errno != errno.ESRCH else 3
    done.update(fault=fault, pid=pid, inner_pid=_inner_pid(pid))
    record.write_text(json.dumps(done))
    print(f"faulty-engine: {fault} done on pid {pid}: {done}")
    return 0


class FaultyEngine(Engine):
    """Engine driver that applies one FAULT where a restore would have left the tree.

    ``inner`` None: fake mode (no C/R; dump with leave_running applies the fault). Otherwise
    the inner engine dumps and restores for real and the fault hits the restored tree.
    ``record`` is filled with what the fault did (fd, path, VMA, address) for assertions.
    """

    name = "faulty"
    can_leave_stopped = True

    def __init__(self, fault: str, workdir: Path, inner: Engine | None = None) -> None:
        """``workdir`` receives the fault tool's log and record."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        self.fault = fault
        self.inner = inner
        self.workdir = workdir
        self.record: dict = {}

    def available(self) -> str | None:
        return self.inner.available() if self.inner else None

    def check(self) -> Features:
        return self.inner.check() if self.inner else Features()

    def attach(self, tree: TreeInfo) -> None:
        if self.inner is not None:
            self.inner.attach(tree)

    def allowances(self) -> tuple[Allowance, ...]:
        """The wrapped engine's: its deliberate differences stay allowed, faults do not."""
        return self.inner.allowances() if self.inner else ()

    def _apply(self, pid: int, step: str, timeout: float) -> StepResult:
        rec = self.workdir / f"fault-{self.fault}.json"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT_DIR), env.get("PYTHONPATH")]))
        res = run_logged([sys.executable, str(Path(__file__).resolve()), self.fault, str(pid),
                          str(rec)], step=step, log=self.workdir / f"fault-{self.fault}.log",
                         timeout=timeout, env=env, cwd=ROOT_DIR)
        self.record = json.loads(rec.read_text())
        return res

    def dump(self, root_pid: int, images_dir: Path, *, leave_running: bool,
             parent_images: Path | None, opts: Sequence[str], timeout: float) -> StepResult:
        if self.inner is not None:
            return self.inner.dump(root_pid, images_dir, leave_running=leave_running,
                                   parent_images=parent_images, opts=opts, timeout=timeout)
        if not leave_running:
            raise EngineFailure("error", "dump", "the fake faulty engine cannot kill and "
                                "re-create a tree; run it with leave_running (--norst)")
        return self._apply(root_pid, "dump", timeout)

    def pre_dump(self, root_pid: int, images_dir: Path, *, parent_images: Path | None,
                 opts: Sequence[str], timeout: float) -> StepResult:
        if self.inner is None:
            raise EngineFailure("error", "pre-dump", "the fake faulty engine has no pre-dump")
        return self.inner.pre_dump(root_pid, images_dir, parent_images=parent_images,
                                   opts=opts, timeout=timeout)

    def restore(self, images_dir: Path, *, leave_stopped: bool, opts: Sequence[str],
                timeout: float, lazy: bool) -> int:
        if self.inner is None:
            raise EngineFailure("error", "restore", "the fake faulty engine cannot restore")
        root = self.inner.restore(images_dir, leave_stopped=True, opts=opts,
                                  timeout=timeout, lazy=lazy)
        self._apply(root, "restore", timeout)
        return root

    def finish(self, timeout: float) -> None:
        if self.inner is not None:
            self.inner.finish(timeout)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
