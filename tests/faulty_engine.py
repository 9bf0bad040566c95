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
  Faults for the checks of sharing, per-task state, open files and ttys, each changing
  exactly one property of the deepest task (or of its first fitting fd):
  ``unshare-files``/``unshare-fs``  inject unshare(CLONE_FILES / CLONE_FS): same fds and cwd,
                   but no longer the table shared with the parent
  ``break-cow``    write back one byte of a page the task shares copy-on-write with its
                   parent (through /proc/PID/mem: the kernel copies the page, same bytes)
  ``set-dumpable``, ``set-subreaper``, ``set-pdeathsig``, ``thp-disable``, ``set-nnp``
                   inject prctl
  ``timer-slack``, ``oom-score``, ``ioprio``, ``renice``, ``sched-batch``  change the knob
                   from outside
  ``chmod-file``, ``chown-file``, ``touch-file``, ``grow-file``, ``punch-hole``,
  ``set-owner``, ``set-sig``, ``write-file`` (one byte inverted, mtime put back)  on the
                   first unlinked regular-file fd, through a pidfd_getfd copy of it
  ``set-async``    O_ASYNC on the first pipe
  ``grow-pipe``    double the capacity of the first pipe (F_SETPIPE_SZ on a copy)
  ``take-pipe-byte``, ``take-socket-byte``  read one byte out of the first pipe or unix
                   stream socket that has bytes queued, through a pidfd_getfd copy (the
                   same pipe or socket), as a restore that ran a read of the task would
  ``rename-unlinked``  the first unlinked regular-file fd replaced (injected openat + dup3)
                   by an equal file (content, holes, owner, mode, mtime, flags, offset)
                   that was unlinked under another name, as a restore that recreates it
                   under a name of its own
  ``set-winsize``, ``set-termios``  on the first terminal fd
  ``drop-ctty``    inject ioctl(TIOCNOTTY) on the task's controlling tty (a task that does
                   not lead its session just loses it: no signal is sent)
  ``set-fgpgrp``   inject ioctl(TIOCSPGRP) into the task's session leader: the task's group
                   becomes the foreground one
  ``membarrier-register``  inject membarrier(REGISTER_PRIVATE_EXPEDITED)
  ``membarrier-global``  inject membarrier(REGISTER_GLOBAL_EXPEDITED)
  ``set-lsm-label``  load an AppArmor profile of the run's own (``zdtm-fault-PID-HEX``, in
                   complain mode and allowing every class: it blocks and logs nothing) with
                   ``apparmor_parser --replace --skip-cache``, then inject open + write of
                   "changeprofile NAME" into the task's /proc/thread-self/attr/apparmor/current
                   (a task may change only its own label); the driver removes the profile
                   (securityfs ``.remove``) when the run ends, in close(). Needs AppArmor,
                   apparmor_parser and securityfs, see lsm_unavailable(); where securityfs is
                   not mounted, the tool mounts it in a mount namespace of its own and
                   unmounts it (the run's namespace never sees it). Verbs for the driver and
                   the tests: ``remove-lsm-profile NAME...``, ``lsm-profiles``
  ``resume-stopped``  SIGCONT the task, which the restore left in group-stop (a task the test
                   had stopped runs on, as after a restore that lost the stop); wrap mode
  ``mount-left``   mount a tmpfs in the task's mount namespace (in h: the run's own) on
                   a fresh dir beside the record, as a test of the h flavour could
  ``cgroup-left``  create a cgroup (pids hierarchy) and move the task into it
  ``kmsg-warning`` write a "WARNING:" line into the kernel log (/dev/kmsg) carrying the
                   run's token (FAULT_TOKEN, the run's work dir): the kernel health watch
                   must fail the run with the kind ``kernel``
  ``flip-shared``  invert one byte of the largest writable shared mapping (anonymous shared
                   memory or a memfd) through /proc/PID/mem
  ``new-uts``      inject unshare(CLONE_NEWUTS): the task moves to a uts namespace of its own
  ``drop-watch``   remove the highest watch of the first inotify fd, through pidfd_getfd
                   (the same group)
  ``dir-nonblock`` set O_NONBLOCK on the first directory fd, through pidfd_getfd (same open
                   file description)
  ``drop-timer``   inject timer_delete() of the task's POSIX timer with the highest id: no
                   harness check sees timers, the test's own verdict must fail
  ``ipc-semval``   add one to semaphore #0 of the first SysV semaphore set of the task's
                   ipc namespace (SETVAL from this tool, which joins the namespace: the
                   semaphore's last pid becomes one outside the tree too)
  ``mq-take-message``  take the first message of the task's first POSIX message queue
                   (mq_receive through a description of the tool's own)
  ``set-rcvbuf``   set SO_RCVBUF of the task's first socket to 4096 bytes (pidfd_getfd: the
                   same socket), which only the tests of socket options check

  No fault of this tool un-shares the signal handlers (CLONE_SIGHAND) of a live task:
  unshare() refuses it while they are shared (kernel/fork.c check_unshare_flags: -EINVAL
  when sighand->count > 1), clone() gives them only together with CLONE_VM, and execve
  (de_thread -> unshare_sighand), the one way out, replaces the address space too. The
  bundled engine makes that fault itself: it creates a task that shares its parent's
  address space by a clone injected into the parent (engine/restore/vmchild.py), and
  ``ENGINE_FAULT=unshare-sighand`` (engine/faults.py) makes it leave out CLONE_SIGHAND
  (legal for clone). ``EngineFault`` below is that engine as a driver;
  tests/test_faulty_engine.py proves with it that exactly the signal handlers row of the
  ``sharing`` check fails.

  The last three hit the objects an engine's allowed deviations concern (zdtm.allowances):
  the shared VMA CRIU restores as a memfd, the namespaces of a task CRIU puts into a new
  time namespace, the directory fd CRIU reopens without O_DIRECTORY.

  The process stays in group-stop throughout: the harness's own injector (zdtm/ptrace_visit.py)
  seizes it, runs one syscall at a ``syscall`` instruction found in its vdso, puts every
  register, the signal mask and its scratch bytes back, and detaches.

- ``FaultyEngine``, an engine driver (zdtm/drivers/base.py) for the harness lifecycle. It has
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

import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from zdtm import ROOT_DIR, proc, ptrace_visit, snapshot
from zdtm.allowances import Allowance
from zdtm.drivers.base import (
    Engine,
    EngineFailure,
    Features,
    StepResult,
    TreeInfo,
    run_logged,
)
from zdtm.drivers.bundled import BundledEngine

_SYS_PRCTL = 157
_SYS_TIMER_DELETE = 226
_SYS_UNSHARE = 272
_SYS_IOPRIO_SET = 251
CLONE_FILES = 0x400
CLONE_FS = 0x200
CLONE_NEWUTS = 0x04000000
PRCTL = {"set-dumpable": (4, 0), "set-subreaper": (36, 1), "set-pdeathsig": (1, 12),
         "thp-disable": (41, 1), "set-nnp": (38, 1)}  # fault -> (PR_SET_*, value)
UNSHARE = {"unshare-files": CLONE_FILES, "unshare-fs": CLONE_FS}
KNOBS = ("timer-slack", "oom-score", "ioprio", "renice", "sched-batch")
FILE_FAULTS = ("chmod-file", "chown-file", "touch-file", "grow-file", "punch-hole",
               "set-owner", "set-sig", "write-file")
TTY_FAULTS = ("set-winsize", "set-termios")
CTTY_FAULTS = ("drop-ctty", "set-fgpgrp")
FAULTS = ("leak-fd", "move-offset", "flip-byte", "drop-vma", "wrong-ppid", "hang",
          "kmsg-warning", *UNSHARE, "break-cow", *PRCTL,
          *KNOBS, *FILE_FAULTS, "set-async", "grow-pipe", "take-pipe-byte",
          "take-socket-byte", "rename-unlinked", *TTY_FAULTS,
          "mount-left", "cgroup-left",
          "flip-shared", "new-uts", "dir-nonblock", *CTTY_FAULTS, "membarrier-register",
          "membarrier-global",
          "resume-stopped", "drop-watch",
          "drop-timer", "set-rcvbuf", "set-lsm-label", "ipc-semval", "mq-take-message")

_SYS_PIDFD_GETFD = 438
_SYS_SEMCTL, _GETVAL, _SETVAL = 66, 12, 16
_SYS_STATFS = 137
_CLONE_NEWIPC = 0x08000000
_MQUEUE_MAGIC = 0x19800202
_SYS_OPENAT = 257
_SYS_MUNMAP = 11
_SYS_CLOSE = 3
_SYS_DUP3 = 292
O_CLOEXEC = 0o2000000
_SYS_IOCTL = 16
_SYS_MEMBARRIER = 324
_SYS_WRITE = 1
MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED = 1 << 4
MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED = 1 << 2
TIOCNOTTY = 0x5422
F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
TIOCSPGRP = 0x5410
AT_FDCWD = -100
PAGE = os.sysconf("SC_PAGE_SIZE")
WAIT_TIMEOUT = 10.0

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _sys(nr: int, *args: int) -> int:
    res = _libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syscall {nr}: {os.strerror(err)}")
    return res


def _maps(pid: int) -> list[tuple[int, int, str, str]]:
    """(start, end, perms, path) of every VMA."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split(None, 5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            out.append((start, end, fields[1], fields[5].strip() if len(fields) > 5 else ""))
    return out


class _WideInjector(ptrace_visit.Injector):
    """An injector with room for a path and a line of text (the harness's own reads need
    16 bytes; the area is still far below the thread's red zone)."""

    SCRATCH = 128


@contextlib.contextmanager
def _injector(pid: int, kind: type[ptrace_visit.Injector] = ptrace_visit.Injector
              ) -> Iterator[ptrace_visit.Injector]:
    """The stopped task seized, an injector on it; afterwards its registers, signal mask and
    scratch bytes are put back and it is detached (back into group-stop)."""
    with ptrace_visit.seized(pid, WAIT_TIMEOUT), kind(pid, WAIT_TIMEOUT) as inj:
        yield inj


def leak_fd(pid: int) -> dict:
    """Inject openat("/proc/self/exe"), the test's binary: an fd it never had.

    The magic link, not the binary's path: the syscall runs with the task's credentials,
    and in the uns flavour the task may not search the directories on that path.
    """
    path = os.readlink(f"/proc/{pid}/exe")
    with _injector(pid) as inj:
        inj.write_scratch(b"/proc/self/exe\0")
        fd = inj.syscall(_SYS_OPENAT, AT_FDCWD, inj.scratch, os.O_RDONLY, 0)
    if fd < 0:
        raise OSError(-fd, f"injected openat({path}) failed: {os.strerror(-fd)}")
    return {"fd": fd, "path": path}


def _first_fd(pid: int, fits: Callable[[os.stat_result, str], bool]) -> tuple[int, str]:
    """(fd, link) of the task's first fd whose stat result and link target ``fit``."""
    for name in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        link = f"/proc/{pid}/fd/{name}"
        target = os.readlink(link)
        if fits(os.stat(link), target):
            return int(name), target
    raise RuntimeError(f"pid {pid} has no fitting fd")


def _copy_fd(pid: int, fd: int) -> int:
    """A copy of the task's fd: the same open file description."""
    pidfd = os.pidfd_open(pid)
    try:
        return _sys(_SYS_PIDFD_GETFD, pidfd, fd, 0)
    finally:
        os.close(pidfd)


def _is_reg(st: os.stat_result, target: str) -> bool:
    return stat.S_ISREG(st.st_mode)


def _is_unlinked(st: os.stat_result, target: str) -> bool:
    return stat.S_ISREG(st.st_mode) and target.endswith(" (deleted)")


def move_offset(pid: int) -> dict:
    """Move the offset of the first regular-file fd by one byte (shared description)."""
    fd, path = _first_fd(pid, _is_reg)
    copy = _copy_fd(pid, fd)
    try:
        before = os.lseek(copy, 0, os.SEEK_CUR)
        after = os.lseek(copy, before + 1, os.SEEK_SET)
    finally:
        os.close(copy)
    return {"fd": fd, "path": path, "pos_before": before, "pos_after": after}


def _inject(pid: int, nr: int, *args: int) -> int:
    with _injector(pid) as inj:
        res = inj.syscall(nr, *args)
    if res < 0:
        raise OSError(-res, f"injected syscall {nr}{args}: {os.strerror(-res)}")
    return res


def unshare_table(fault: str, pid: int) -> dict:
    """The task gets its own copy of a table it shared (same content, no longer shared)."""
    _inject(pid, _SYS_UNSHARE, UNSHARE[fault])
    return {}


def set_prctl(fault: str, pid: int) -> dict:
    option, value = PRCTL[fault]
    _inject(pid, _SYS_PRCTL, option, value, 0, 0, 0)
    return {"value": value}


def set_knob(fault: str, pid: int) -> dict:
    """Change a per-task knob from outside: timer slack, oom_score_adj, io priority, nice,
    scheduling policy."""
    if fault == "timer-slack":
        Path(f"/proc/{pid}/timerslack_ns").write_text("123457")
        return {"value": 123457}
    if fault == "oom-score":
        Path(f"/proc/{pid}/oom_score_adj").write_text("345")
        return {"value": 345}
    if fault == "renice":
        now = os.getpriority(os.PRIO_PROCESS, pid)
        os.setpriority(os.PRIO_PROCESS, pid, now + 7 if now <= 12 else now - 7)
        return {"value": os.getpriority(os.PRIO_PROCESS, pid)}
    if fault == "sched-batch":
        os.sched_setscheduler(pid, os.SCHED_BATCH, os.sched_param(0))
        return {"value": os.SCHED_BATCH}
    _sys(_SYS_IOPRIO_SET, 1, pid, 3 << 13)  # IOPRIO_WHO_PROCESS, class idle
    return {"value": "class 3 level 0"}


def _pfns(pid: int) -> dict[int, int]:
    """{frame: address} of present anonymous pages of private writable mappings."""
    out = {}
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pm:
        for start, end, perms, path in _maps(pid):
            if not perms.startswith("rw") or perms[3] != "p" or path.startswith("[v"):
                continue
            pm.seek(start // PAGE * 8)
            raw = pm.read((end - start) // PAGE * 8)
            for i in range(0, len(raw), 8):
                v = int.from_bytes(raw[i:i + 8], "little")
                if v >> 63 and not v >> 61 & 1 and v & ((1 << 55) - 1):
                    out[v & ((1 << 55) - 1)] = start + i // 8 * PAGE
    return out


def break_cow(pid: int) -> dict:
    """Copy one page the task shares copy-on-write with its parent (same bytes)."""
    mine, theirs = _pfns(pid), _pfns(_ppid(pid))
    common = sorted(mine[f] for f in mine.keys() & theirs.keys())
    if not common:
        raise RuntimeError(f"pid {pid} shares no private page with its parent")
    addr = common[0]
    fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    try:
        os.pwrite(fd, os.pread(fd, 1, addr), addr)
    finally:
        os.close(fd)
    return {"addr": addr}


def file_fault(fault: str, pid: int) -> dict:
    """Change one attribute of the first unlinked regular file the task has open."""
    fd, path = _first_fd(pid, _is_unlinked)
    copy = _copy_fd(pid, fd)
    try:
        _change_file(fault, copy, pid)
    finally:
        os.close(copy)
    return {"fd": fd, "path": path}


def _change_file(fault: str, copy: int, pid: int) -> None:
    st = os.fstat(copy)
    if fault == "chmod-file":
        os.fchmod(copy, stat.S_IMODE(st.st_mode) ^ 0o044)
    elif fault == "chown-file":
        os.fchown(copy, st.st_uid + 1, st.st_gid)
    elif fault == "touch-file":
        os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    elif fault == "grow-file":
        os.truncate(copy, st.st_size + 1)
    elif fault == "punch-hole":
        _libc.fallocate(copy, 3, ctypes.c_long(0), ctypes.c_long(PAGE))  # PUNCH_HOLE|KEEP
    elif fault == "set-owner":
        fcntl.fcntl(copy, fcntl.F_SETOWN, pid)
    elif fault == "set-sig":
        fcntl.fcntl(copy, 10, signal.SIGUSR1)  # F_SETSIG
    elif fault == "write-file":
        old = os.pread(copy, 1, 0)
        os.pwrite(copy, bytes([old[0] ^ 0xFF]), 0)
        os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))  # only the content differs


def rename_unlinked(pid: int) -> dict:
    """Replace the first unlinked file the task has open by a copy unlinked under another
    name: only the name /proc shows differs."""
    fd, path = _first_fd(pid, _is_unlinked)
    name = "fault-renamed"  # relative to the task's cwd: fits the injector's scratch
    other = Path(f"/proc/{pid}/cwd") / name
    flags = _fd_flags(pid, fd)
    copy = _copy_fd(pid, fd)
    try:
        st = os.fstat(copy)
        pos = os.lseek(copy, 0, os.SEEK_CUR)
        new = os.open(other, os.O_RDWR | os.O_CREAT | os.O_EXCL, stat.S_IMODE(st.st_mode))
        try:
            _copy_extents(copy, new, st.st_size)
            os.fchown(new, st.st_uid, st.st_gid)
            os.fchmod(new, stat.S_IMODE(st.st_mode))
            os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(new)
    finally:
        os.close(copy)
    try:
        with _injector(pid) as inj:
            inj.write_scratch(name.encode() + b"\0")
            opened = inj.syscall(_SYS_OPENAT, AT_FDCWD, inj.scratch, flags & ~O_CLOEXEC, 0)
            if opened < 0:
                raise OSError(-opened, f"injected openat({name}): {os.strerror(-opened)}")
            res = inj.syscall(_SYS_DUP3, opened, fd, flags & O_CLOEXEC)
            inj.syscall(_SYS_CLOSE, opened)
            if res < 0:
                raise OSError(-res, f"injected dup3: {os.strerror(-res)}")
    finally:
        os.unlink(other)
    copy = _copy_fd(pid, fd)
    try:
        os.lseek(copy, pos, os.SEEK_SET)
    finally:
        os.close(copy)
    return {"fd": fd, "path": path, "new_path": os.readlink(f"/proc/{pid}/fd/{fd}")}


def _fd_flags(pid: int, fd: int) -> int:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    raise RuntimeError(f"pid {pid} fd {fd}: no flags in its fdinfo")


def _copy_extents(src: int, dst: int, size: int) -> None:
    """Copy the data extents of src into dst at the same offsets: holes stay holes."""
    at = 0
    while at < size:
        try:
            start = os.lseek(src, at, os.SEEK_DATA)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            break  # only a hole is left
        end = os.lseek(src, start, os.SEEK_HOLE)
        os.pwrite(dst, os.pread(src, end - start, start), start)
        at = end
    os.ftruncate(dst, size)


def set_async(pid: int) -> dict:
    """Set O_ASYNC on the task's first pipe (regular files have no fasync: no O_ASYNC)."""
    fd, path = _first_fd(pid, lambda st, _target: stat.S_ISFIFO(st.st_mode))
    copy = _copy_fd(pid, fd)
    try:
        fcntl.fcntl(copy, fcntl.F_SETFL, fcntl.fcntl(copy, fcntl.F_GETFL) | os.O_ASYNC)
    finally:
        os.close(copy)
    return {"fd": fd, "path": path}


def grow_pipe(pid: int) -> dict:
    """Double the capacity of the task's first pipe (it belongs to the pipe: a copy of
    the fd reaches it)."""
    fd, path = _first_fd(pid, lambda st, _target: stat.S_ISFIFO(st.st_mode))
    copy = _copy_fd(pid, fd)
    try:
        fcntl.fcntl(copy, F_SETPIPE_SZ, 2 * fcntl.fcntl(copy, F_GETPIPE_SZ))
    finally:
        os.close(copy)
    return {"fd": fd, "path": path}


def take_byte(fault: str, pid: int) -> dict:
    """Read one byte out of the task's first pipe (take-pipe-byte) or unix stream socket
    (take-socket-byte) that has bytes queued."""
    want = stat.S_ISFIFO if fault == "take-pipe-byte" else stat.S_ISSOCK
    for name in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        link = f"/proc/{pid}/fd/{name}"
        if not want(os.stat(link).st_mode):
            continue
        copy = _copy_fd(pid, int(name))
        try:
            if want is stat.S_ISSOCK:
                with socket.socket(fileno=os.dup(copy)) as sk:
                    if sk.family != socket.AF_UNIX or sk.type != socket.SOCK_STREAM or \
                            sk.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                        continue
            queued = struct.unpack("i", fcntl.ioctl(copy, termios.FIONREAD, b"\0" * 4))[0]
            if queued > 0:  # (so a read returns at once, whatever the task's flags)
                got = os.read(copy, 1)
                return {"fd": int(name), "path": os.readlink(link), "queued": queued,
                        "taken": len(got)}
        finally:
            os.close(copy)
    raise RuntimeError(f"pid {pid} has no fitting fd with bytes queued")


def tty_fault(fault: str, pid: int) -> dict:
    """Change the window size or the termios of the task's first terminal."""
    fd, path = _first_fd(pid, lambda st, _target: stat.S_ISCHR(st.st_mode)
                         and os.major(st.st_rdev) in (4, 5, *range(136, 144)))
    copy = _copy_fd(pid, fd)
    try:
        if fault == "set-winsize":
            fcntl.ioctl(copy, termios.TIOCSWINSZ, struct.pack("4H", 12, 34, 0, 0))
        else:
            attrs = termios.tcgetattr(copy)
            attrs[3] ^= termios.ECHO
            termios.tcsetattr(copy, termios.TCSANOW, attrs)
    finally:
        os.close(copy)
    return {"fd": fd, "path": path}


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the comm: state, ppid, pgrp, session, tty_nr, ..."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _ctty_fd(pid: int) -> int:
    """An fd of the task open on its controlling tty."""
    tty = int(_stat(pid)[4])
    if not tty:
        raise RuntimeError(f"pid {pid} has no controlling tty")
    return _first_fd(pid, lambda st, _target: stat.S_ISCHR(st.st_mode)
                     and st.st_rdev == tty)[0]


def drop_ctty(pid: int) -> dict:
    """The task gives up its controlling tty (TIOCNOTTY; not its session's leader)."""
    fd = _ctty_fd(pid)
    _inject(pid, _SYS_IOCTL, fd, TIOCNOTTY, 0)
    return {"fd": fd}


def set_fgpgrp(pid: int) -> dict:
    """The session leader (in the foreground) makes the task's group the foreground one."""
    leader = int(_stat(pid)[3])
    group = _inner_id(pid, "NSpgid")
    fd = _ctty_fd(leader)
    with _injector(leader) as inj:
        inj.write_scratch(struct.pack("i", group))
        res = inj.syscall(_SYS_IOCTL, fd, TIOCSPGRP, inj.scratch)
    if res < 0:
        raise OSError(-res, f"injected TIOCSPGRP {group}: {os.strerror(-res)}")
    return {"leader": leader, "pgrp": group}


def membarrier_register(pid: int) -> dict:
    """The task's mm registers for private expedited membarriers."""
    _inject(pid, _SYS_MEMBARRIER, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0)
    return {}


def membarrier_global(pid: int) -> dict:
    """The task's mm registers for global expedited membarriers."""
    _inject(pid, _SYS_MEMBARRIER, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0)
    return {}


# ---- set-lsm-label: an AppArmor profile of the run's own ---------------------------------

SECURITYFS = Path("/sys/kernel/security")
APPARMOR_ENABLED = "sys/module/apparmor/parameters/enabled"
LSM_PREFIX = "zdtm-fault-"
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
# Complain mode blocks nothing; the bare rules allow every class apparmor_parser 3.0 knows,
# so the confined test does not fill the kernel log with an ALLOWED line per access.
LSM_PROFILE = """profile {name} flags=(complain) {{
  file,
  capability,
  network,
  signal,
  ptrace,
  unix,
  mount,
  umount,
  pivot_root,
  change_profile,
  dbus,
}}
"""


def new_lsm_profile_name() -> str:
    """A profile name no other run (nor an earlier one of this process) uses."""
    return f"{LSM_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"


def apparmor_parser(search_path: str | None = None) -> str | None:
    """The apparmor_parser binary (also in the sbin dirs a non-login PATH may lack)."""
    if search_path is None:
        search_path = os.pathsep.join(filter(None, [os.environ.get("PATH"), "/usr/sbin",
                                                    "/sbin"]))
    return shutil.which("apparmor_parser", path=search_path)


def lsm_unavailable(root: Path = Path("/"), search_path: str | None = None) -> str | None:
    """Why ``set-lsm-label`` cannot run here, probed (None: it can). ``root`` and
    ``search_path`` let a test put the probed files elsewhere."""
    try:
        label = (root / "proc/self/attr/current").read_bytes().decode().strip("\0\n ")
    except OSError as e:
        return f"no LSM: /proc/self/attr/current: {e.strerror}"
    try:
        enabled = (root / APPARMOR_ENABLED).read_text().strip()
    except OSError as e:
        return f"the LSM (label {label!r}) is not AppArmor: /{APPARMOR_ENABLED}: {e.strerror}"
    if enabled != "Y":
        return f"the LSM (label {label!r}) is not AppArmor: /{APPARMOR_ENABLED} is {enabled}"
    own = root / "proc/self/attr/apparmor/current"
    if own.exists() and own.read_bytes().decode().strip("\0\n ") != label:
        return (f"AppArmor is enabled but /proc/self/attr/current is another LSM's "
                f"(label {label!r})")
    if apparmor_parser(search_path) is None:
        return ("AppArmor is enabled but apparmor_parser is not installed "
                "(apt-get install apparmor)")
    if (root / SECURITYFS.relative_to("/") / "apparmor").is_dir():
        return None  # securityfs is mounted
    try:
        kinds = (root / "proc/filesystems").read_text().split()
    except OSError as e:
        return f"AppArmor is enabled but securityfs is not mounted: /proc/filesystems: {e}"
    if "securityfs" not in kinds or not (root / SECURITYFS.relative_to("/")).is_dir():
        return (f"AppArmor is enabled but securityfs is not available (not mounted on "
                f"{SECURITYFS}, and the kernel cannot mount it there)")
    return None


@contextlib.contextmanager
def _apparmorfs() -> Iterator[Path]:
    """AppArmor's directory in securityfs. When securityfs is not mounted, it is mounted
    for the block in a mount namespace of this process's own (the run's namespace never sees
    it) and unmounted after; only for a process of its own (the fault tool's)."""
    here = SECURITYFS / "apparmor"
    if here.is_dir():
        yield here
        return
    if _libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    # private first: a mount on a shared / would propagate back to the run's namespace
    if _libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    if _libc.mount(b"securityfs", bytes(SECURITYFS), b"securityfs", 0, None) != 0:
        raise OSError(ctypes.get_errno(), f"mount securityfs on {SECURITYFS}")
    try:
        yield here
    finally:
        if _libc.umount2(bytes(SECURITYFS), 0) != 0:
            raise OSError(ctypes.get_errno(), f"umount {SECURITYFS}")


def _lsm_label(pid: int) -> str:
    with open(f"/proc/{pid}/attr/current", "rb") as f:
        return f.read().decode().strip("\0\n ")


def _remove_profile(fs: Path, name: str) -> bool:
    """Remove the profile NAME from the kernel (False: it was not loaded)."""
    fd = os.open(fs / ".remove", os.O_WRONLY)
    try:
        os.write(fd, name.encode())  # one write: one command
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    finally:
        os.close(fd)
    return True


def _change_profile(pid: int, name: str) -> None:
    """Inject open + write of "changeprofile NAME" into the task's own attr file: the kernel
    lets a task change only its own label (proc_pid_attr_write: current == task)."""
    own = os.path.exists(f"/proc/{pid}/attr/apparmor/current")  # stacking-safe, 5.1+
    path = "/proc/thread-self/attr/" + ("apparmor/current" if own else "current")
    command = f"changeprofile {name}".encode()
    half = _WideInjector.SCRATCH // 2
    if len(path) >= half or len(command) > half:
        raise ValueError(f"profile name {name!r} too long for the injector's scratch")
    with _injector(pid, _WideInjector) as inj:
        inj.write_scratch(path.encode().ljust(half, b"\0") + command)
        fd = inj.syscall(_SYS_OPENAT, AT_FDCWD, inj.scratch, os.O_WRONLY | O_CLOEXEC, 0)
        if fd < 0:
            raise OSError(-fd, f"injected openat({path}): {os.strerror(-fd)}")
        done = inj.syscall(_SYS_WRITE, fd, inj.scratch + half, len(command))
        inj.syscall(_SYS_CLOSE, fd)
    if done < 0:
        raise OSError(-done, f"injected write({path}, {command.decode()!r}): "
                             f"{os.strerror(-done)}")


def set_lsm_label(pid: int) -> dict:
    """Load a complain-mode AppArmor profile (FAULT_LSM_PROFILE, the driver removes it at
    the end of the run) and make the task change to it from inside."""
    why = lsm_unavailable()
    if why:
        raise OSError(errno.EOPNOTSUPP, why)
    name = os.environ.get("FAULT_LSM_PROFILE") or new_lsm_profile_name()
    parser = apparmor_parser()
    assert parser is not None  # lsm_unavailable() found it
    before = _lsm_label(pid)
    with _apparmorfs() as fs:
        # --skip-cache: no cache file written anywhere
        load = subprocess.run([parser, "--replace", "--skip-cache"],
                              input=LSM_PROFILE.format(name=name), text=True,
                              capture_output=True, timeout=60, check=False)
        if load.returncode != 0:
            raise OSError(errno.EINVAL, f"apparmor_parser --replace {name}: exit "
                          f"{load.returncode}: {load.stderr.strip()}")
        try:
            _change_profile(pid, name)
        except BaseException:
            _remove_profile(fs, name)  # the driver would too; not left a moment longer
            raise
    return {"profile": name, "label_before": before, "label_after": _lsm_label(pid)}


def remove_lsm_profiles(names: Sequence[str]) -> list[str]:
    """Remove these profiles; the ones that were loaded (for the tool's verbs)."""
    with _apparmorfs() as fs:
        return [n for n in names if _remove_profile(fs, n)]


def loaded_lsm_profiles() -> list[str]:
    """The names of the profiles loaded in the kernel now."""
    with _apparmorfs() as fs:
        text = (fs / "profiles").read_text()
    return [line.rsplit(" (", 1)[0] for line in text.splitlines() if line]


def resume_stopped(pid: int) -> dict:
    """SIGCONT the (group-stopped) task and wait until it runs."""
    os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + WAIT_TIMEOUT
    while _stat(pid)[0] == "T":
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {pid} still stopped after SIGCONT")
        time.sleep(0.005)
    return {}


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
    """Invert one byte in a present page of private anonymous memory; the record names
    the VMA as the harness sees it (_as_merged)."""
    start, end, page = _as_merged(pid, _pick_anon_vma(pid))
    addr = page + 0x123  # not in the first 32 bytes, where an rseq area could be
    fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    try:
        old = os.pread(fd, 1, addr)
        os.pwrite(fd, bytes([old[0] ^ 0xFF]), addr)
    finally:
        os.close(fd)
    return {"vma": [start, end], "addr": addr}


def drop_vma(pid: int) -> dict:
    """Inject munmap() of a whole private anonymous VMA as the harness sees it
    (_as_merged)."""
    start, end, _page = _as_merged(pid, _pick_anon_vma(pid))
    _inject(pid, _SYS_MUNMAP, start, end - start)
    return {"vma": [start, end]}


def _as_merged(pid: int, vma: tuple[int, int, int]) -> tuple[int, int, int]:
    """A VMA (start, end, page) as the harness sees it: merged with its neighbours by the
    checks' own rule (zdtm.snapshot._merge; a restore may leave the kernel's VMA cut in
    two where the dumped process had one, after another mapping history, and the picked
    VMA may have such a neighbour by chance of placement)."""
    start, _end, page = vma
    with open(f"/proc/{pid}/smaps") as f:
        entries = proc.parse_smaps(f.read())
    merged = snapshot._merge([
        snapshot.VmaState(e.start, e.end, e.perms, e.path,
                          e.offset if e.path.startswith("/") else None, None,
                          e.vmflags - snapshot.IGNORED_VMFLAGS) for e in entries])
    whole = next(v for v in merged if v.start <= start < v.end)
    return whole.start, whole.end, page


def _ppid(pid: int) -> int:
    return int(_stat(pid)[1])


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
    _inject(pid, _SYS_UNSHARE, CLONE_NEWUTS)
    return {"uts": os.readlink(f"/proc/{pid}/ns/uts")}


def drop_timer(pid: int) -> dict:
    """Inject timer_delete() of the POSIX timer with the highest id."""
    text = Path(f"/proc/{pid}/timers").read_text()
    ids = [int(line.split()[1]) for line in text.splitlines() if line.startswith("ID:")]
    if not ids:
        raise RuntimeError(f"task {pid} has no POSIX timer")
    _inject(pid, _SYS_TIMER_DELETE, max(ids))
    return {"timer": max(ids)}


def set_rcvbuf(pid: int) -> dict:
    """SO_RCVBUF of the first socket set to 4096 (the kernel shows 8192)."""
    fd, path = _first_fd(pid, lambda st, _target: stat.S_ISSOCK(st.st_mode))
    copy = socket.socket(fileno=_copy_fd(pid, fd))
    try:
        copy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    finally:
        copy.close()
    return {"fd": fd, "path": path}


def dir_nonblock(pid: int) -> dict:
    """Set O_NONBLOCK on the first directory fd (its open file description)."""
    fd, path = _first_fd(pid, lambda st, target: stat.S_ISDIR(st.st_mode))
    copy = _copy_fd(pid, fd)
    try:
        os.set_blocking(copy, False)
    finally:
        os.close(copy)
    return {"fd": fd, "path": path}


def drop_watch(pid: int) -> dict:
    """Remove the highest watch of the first inotify fd (its group)."""
    fd, _ = _first_fd(pid, lambda st, target: target.startswith("anon_inode:") and "inotify" in target)
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        wds = [int(line.split()[1].split(":")[1], 16) for line in f
               if line.startswith("inotify wd:")]
    copy = _copy_fd(pid, fd)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.inotify_rm_watch(copy, max(wds)):
            raise OSError(ctypes.get_errno(), "inotify_rm_watch")
    finally:
        os.close(copy)
    return {"fd": fd, "wd": max(wds)}


def ipc_semval(pid: int) -> dict:
    """Semaphore #0 of the first set of the task's ipc namespace, one higher."""
    fd = os.open(f"/proc/{pid}/ns/ipc", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWIPC) != 0:  # (this tool is one thread)
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)
    with open("/proc/sysvipc/sem") as f:
        rows = f.read().splitlines()[1:]
    if not rows:
        raise RuntimeError(f"pid {pid}'s ipc namespace has no semaphore set")
    semid = int(rows[0].split()[1])
    before = _sys(_SYS_SEMCTL, semid, 0, _GETVAL, 0)
    _sys(_SYS_SEMCTL, semid, 0, _SETVAL, before + 1)
    return {"semid": semid, "before": before, "after": before + 1}


def mq_take_message(pid: int) -> dict:
    """Take the first message of the task's first message queue."""
    for name in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        path = f"/proc/{pid}/fd/{name}"
        buf = ctypes.create_string_buffer(120)  # struct statfs: f_type first
        if _libc.syscall(_SYS_STATFS, path.encode(), buf) == 0 and \
                int.from_bytes(buf.raw[:8], "little") == _MQUEUE_MAGIC:
            break
    else:
        raise RuntimeError(f"pid {pid} holds no message queue")
    own = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        data = ctypes.create_string_buffer(1 << 16)
        prio = ctypes.c_uint()
        n = _libc.mq_receive(own, data, len(data), ctypes.byref(prio))
        if n < 0:
            raise OSError(ctypes.get_errno(), "mq_receive")
    finally:
        os.close(own)
    return {"fd": int(name), "queue": os.readlink(path), "size": n, "prio": prio.value}


def hang(pid: int) -> dict:
    """An engine that never answers."""
    del pid
    while True:
        time.sleep(3600)


def kmsg_warning(pid: int) -> dict:
    """Write a warning line for this run into the kernel log (user-space facility)."""
    token = os.environ.get("FAULT_TOKEN", "")
    line = f"zdtm-faulty-engine[{token}]: WARNING: injected for pid {pid}"
    with open("/dev/kmsg", "w") as f:
        f.write(f"<4>{line}\n")
    return {"line": line}


def mount_left(pid: int) -> dict:
    """A tmpfs mounted in the task's mount namespace and never unmounted."""
    where = Path(os.environ["FAULT_DIR"]) / f"mnt-{pid}"
    where.mkdir()
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    try:
        if _libc.setns(fd, 0x00020000) != 0:  # CLONE_NEWNS
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)
    if _libc.mount(b"zdtm-fault", bytes(where), b"tmpfs", 0, None) != 0:
        raise OSError(ctypes.get_errno(), f"mount {where}")
    return {"mount": str(where)}


def cgroup_left(pid: int) -> dict:
    """A new cgroup of the pids hierarchy with the task in it, never removed."""
    with open("/proc/self/mountinfo") as f:
        points = [ln.split()[4] for ln in f if " - cgroup " in ln and ",pids" in ln]
    if not points:
        raise RuntimeError("no pids cgroup hierarchy mounted")
    group = Path(points[0]) / f"zdtm-fault-{pid}"
    group.mkdir()
    (group / "cgroup.procs").write_text(str(pid))
    return {"cgroup": str(group)}


def _each(faults: Iterable[str], action: Callable[[str, int], dict]
          ) -> dict[str, Callable[[int], dict]]:
    return {f: functools.partial(action, f) for f in faults}


ACTIONS = {"leak-fd": leak_fd, "move-offset": move_offset, "flip-byte": flip_byte,
           "drop-vma": drop_vma, "wrong-ppid": wrong_ppid, "hang": hang,
           "kmsg-warning": kmsg_warning, "break-cow": break_cow, "set-async": set_async,
           "rename-unlinked": rename_unlinked, "grow-pipe": grow_pipe,
           **_each(("take-pipe-byte", "take-socket-byte"), take_byte),
           **_each(UNSHARE, unshare_table), **_each(PRCTL, set_prctl),
           **_each(KNOBS, set_knob),
           **_each(FILE_FAULTS, file_fault), **_each(TTY_FAULTS, tty_fault),
           "mount-left": mount_left, "cgroup-left": cgroup_left,
           "flip-shared": flip_shared, "new-uts": new_uts, "dir-nonblock": dir_nonblock,
           "drop-ctty": drop_ctty, "set-fgpgrp": set_fgpgrp,
           "membarrier-register": membarrier_register, "resume-stopped": resume_stopped,
           "membarrier-global": membarrier_global,
           "drop-watch": drop_watch,
           "drop-timer": drop_timer, "set-rcvbuf": set_rcvbuf, "set-lsm-label": set_lsm_label,
           "ipc-semval": ipc_semval, "mq-take-message": mq_take_message}


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


def _inner_id(pid: int, field: str) -> int:
    """A pid-like id of the task (NSpid, NSpgid, NSsid) in its own pid namespace."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[-1])
    raise RuntimeError(f"pid {pid}: no {field} in its status")


def _inner_pid(pid: int) -> int:
    return _inner_id(pid, "NSpid")


def main(argv: list[str]) -> int:
    """CLI: FAULT ROOT_PID RECORD (the fault hits the deepest task under ROOT_PID);
    ``remove-lsm-profile NAME...`` and ``lsm-profiles`` (names loaded now), which mount
    securityfs for themselves when it is not mounted."""
    if argv[:1] == ["remove-lsm-profile"] and len(argv) > 1:
        for name in remove_lsm_profiles(argv[1:]):
            print(f"faulty-engine: removed AppArmor profile {name}")
        return 0
    if argv == ["lsm-profiles"]:
        print("\n".join(loaded_lsm_profiles()))
        return 0
    if len(argv) != 3 or argv[0] not in ACTIONS:
        print(f"usage: faulty_engine.py {{{','.join(FAULTS)}}} ROOT_PID RECORD\n"
              "       faulty_engine.py remove-lsm-profile NAME...\n"
              "       faulty_engine.py lsm-profiles", file=sys.stderr)
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
        self.lsm_profiles: list[str] = []  # set-lsm-label: the profiles to remove at close
        self.cleanup_error: str | None = None  # what close() could not undo

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

    def _apply(self, pid: int, step: str, timeout: float, images_dir: Path) -> StepResult:
        rec = self.workdir / f"fault-{self.fault}.json"
        env = dict(os.environ)
        env["FAULT_TOKEN"] = str(images_dir.parent.parent)  # the run's work dir
        env["FAULT_DIR"] = str(self.workdir)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT_DIR), env.get("PYTHONPATH")]))
        if self.fault == "set-lsm-label":
            # named here, before the tool runs: close() removes it even if the tool dies
            self.lsm_profiles.append(new_lsm_profile_name())
            env["FAULT_LSM_PROFILE"] = self.lsm_profiles[-1]
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
        return self._apply(root_pid, "dump", timeout, images_dir)

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
        self._apply(root, "restore", timeout, images_dir)
        return root

    def finish(self, timeout: float) -> None:
        if self.inner is not None:
            self.inner.finish(timeout)

    def close(self) -> None:
        """The inner engine's close, and the fault's own kernel objects removed. Never
        raises (the lifecycle's cleanup goes on): a failure is kept in cleanup_error."""
        try:
            if self.inner is not None:
                self.inner.close()
        finally:
            self._remove_lsm_profiles()

    def take_notes(self) -> list[str]:
        return self.inner.take_notes() if self.inner is not None else []

    def _remove_lsm_profiles(self) -> None:
        if not self.lsm_profiles:
            return
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT_DIR), env.get("PYTHONPATH")]))
        try:
            # a process of its own: it may have to mount securityfs in a namespace of its own
            run_logged([sys.executable, str(Path(__file__).resolve()), "remove-lsm-profile",
                        *self.lsm_profiles], step="stop",
                       log=self.workdir / "fault-remove-lsm-profile.log", timeout=60.0,
                       env=env, cwd=ROOT_DIR)
            self.lsm_profiles = []
        except EngineFailure as e:
            self.cleanup_error = f"AppArmor profiles {self.lsm_profiles} not removed: {e}"
            print(f"faulty-engine: {self.cleanup_error}", file=sys.stderr)


#: faults the bundled engine makes itself while restoring (engine/faults.py CONDITIONS)
ENGINE_FAULTS = ("unshare-sighand",)


class EngineFault(BundledEngine):
    """The bundled engine run with ENGINE_FAULT=FAULT: a fault only the engine can make,
    where it creates the restored tasks (see ENGINE_FAULTS)."""

    def __init__(self, fault: str) -> None:
        if fault not in ENGINE_FAULTS:
            raise ValueError(f"unknown engine fault {fault!r}")
        super().__init__()
        self.fault = fault

    def env(self) -> dict[str, str]:
        env = super().env()
        env["ENGINE_FAULT"] = self.fault
        return env


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
