"""Run syscalls inside a seized, stopped task, then put it back exactly as it was.

How an injected syscall runs: the task's registers are set to (rip = a ``syscall``
instruction, rax = nr, args), the task is resumed and stops again right after the
instruction; its rax is the result. Nothing is written into the target's code:

- by default we look for the bytes ``0f 05`` in an executable mapping (the vdso first)
  and single-step over them (PTRACE_SINGLESTEP stops right after the syscall);
- a caller that owns a code page in the target (restore) passes ``syscall_addr`` of the
  bytes ``0f 05 cc``: the task is continued and stops at the int3.

Each injected syscall is SETREGS + resume + waitpid + GETREGS (about 30 us from Python).

Surviving the engine (sigframe.py): where the task's code holds a `mov $15, %rax; syscall`
(libc's __restore_rt) and its stack has room for a signal frame, the injector writes a
frame with the task's own state below its stack pointer and runs every syscall from that
restorer instead: each syscall is caught at its entry stop (as rt_sigreturn) and turned
into the one wanted, and returns into the restorer. A task whose engine dies (SIGKILL) at
any moment thus restores itself with rt_sigreturn; no single-step trap is ever pending, and
scratch buffers live on the stack below the frame, so no mapping is left behind. The
registers are finally put back from an interrupt stop inside the kernel's signal path.

While injecting, every signal is blocked (PTRACE_SETSIGMASK) so no handler can run on our
frame; SIGSTOP, which cannot be blocked, is swallowed and sent again on restore().

A task stopped inside an interrupted syscall (orig_rax >= 0, rax = -ERESTART*) needs no
special care: the injected frames use orig_rax = -1 so the kernel does not restart them,
and restore() puts back the exact registers. The task is then resumed from a stop inside
the kernel's signal path, which performs the restart itself exactly as it would have
without us (rip -= 2, rax = orig_rax, or restart_syscall for -ERESTART_RESTARTBLOCK with
the task's restart block intact, and -EINTR if a signal handler runs first). Rewinding
here instead would lose that: a relative nanosleep would start over, and pause() would not
return after a handler. For images, which a new task resumes without the kernel's restart
state, use restart_regs().
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from engine.errors import termination_held
from engine.kernel import ptrace, sigframe, uapi
from engine.kernel.structs import UserRegs
from engine.kernel.sys import process_vm_writev, syscall
from engine.proc.auxv import read_auxv
from engine.proc.maps import MapsLine, exec_file_maps, read_maps
from engine.proc.stat import Stat, read_stat
from engine.proc.status import Status, read_status

if TYPE_CHECKING:
    from typing import Self

_MASK64 = (1 << 64) - 1
_ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
_SIGTRAP_BIT = 1 << (uapi.SIGTRAP - 1)
_SYSCALL_INSN = b"\x0f\x05"
_SCAN_CHUNK = 65536
_VDSO_SCAN = 2 * uapi.PAGE_SIZE  # the x86_64 vdso image is 2 pages
_RSEQ_CS_OFFSET = 8  # struct rseq: u32 cpu_id_start, u32 cpu_id, u64 rseq_cs, ...
_RSEQ_CS = struct.Struct("<IIQQQ")  # struct rseq_cs: version, flags, start_ip,
#                                     post_commit_offset, abort_ip

#: syscall instruction found per process (proc_key); also re-checked before use.
_insn_cache: dict[tuple[int, int], int] = {}
#: the same for code sequences (find_code), per process and sequences (0: none found)
_code_cache: dict[tuple[int, int, tuple[bytes, ...]], int] = {}
#: where in a mapping of a file (dev, inode, offset, size) a sequence was found
_file_code: dict[tuple[object, ...], int] = {}
#: What a tracer that injects seizes tasks with: a syscall stop that its dying tracer
#: never waited for then sends the task the stop's code, SIGTRAP | 0x80 with this
#: option, which is no signal (without it, a SIGTRAP that kills the task once its
#: frame unblocks signals again).
SEIZE_OPTIONS = uapi.PTRACE_O_TRACESYSGOOD
#: `syscall; ret`: how a task whose tracer died leaves code it unmaps (blob.S crc_return)
SYSCALL_RET = b"\x0f\x05\xc3"
_RESTORER_SCAN_MAX = 64 << 20  # bytes of code searched at most per process
#: Stack below the frame kept for scratch buffers by default (larger ones are mapped).
STACK_SCRATCH = 64 << 10


class InjectError(RuntimeError):
    """The target did not behave as an injected syscall should (unexpected stop)."""


class _StaleInsn(Exception):
    """The cached syscall instruction is no longer executable (the address space changed)."""


def _writable(tid: int, addr: int, data: bytes) -> bool:
    """Whether the task itself may write the bytes at addr, which hold `data` now: they are
    written back as they are, without the FOLL_FORCE of /proc/PID/mem."""
    buf = ctypes.create_string_buffer(data, len(data))
    try:
        n = process_vm_writev(tid, [(ctypes.addressof(buf), len(data))], [(addr, len(data))])
    except OSError:
        return False
    return n == len(data)


def _page_up(n: int) -> int:
    return (n + uapi.PAGE_SIZE - 1) & ~(uapi.PAGE_SIZE - 1)


#: a process as caches know it: (tgid, start time), so that a reused pid or a restored
#: task never inherits an old answer
ProcKey = tuple[int, int]


def proc_key(tid: int) -> ProcKey:
    """The process of thread ``tid`` (its thread group leader's pid and start time)."""
    return _proc_of(read_status(tid, tid))


def _proc_of(status: Status) -> ProcKey:
    return status.tgid, read_stat(status.tgid).starttime


def find_syscall_insn(tid: int, mem_fd: int, refresh: bool = False,
                      proc: ProcKey | None = None) -> int:
    """Address of a ``0f 05`` byte pair in an executable mapping of ``tid`` (vdso first).

    Any such pair executes as ``syscall`` when rip points at it, wherever it sits in the
    instruction stream, and single-stepping stops right after it. ``refresh`` ignores
    the cache. ``proc``: proc_key(tid) when the caller has it.
    """
    key = proc or proc_key(tid)
    cached = None if refresh else _insn_cache.get(key)
    if cached is not None and _pread(mem_fd, 2, cached) == _SYSCALL_INSN:
        return cached
    if not refresh:
        # Fast path, without parsing maps (tens of thousands of lines for some tasks):
        # the vdso named by AT_SYSINFO_EHDR. A wrong guess faults harmlessly and is
        # retried with refresh=True (see Injector.syscall).
        found = _insn_in_vdso(tid, mem_fd)
        if found is not None:
            _insn_cache[key] = found
            return found
    vmas = [v for v in read_maps(tid) if v.executable and v.path != "[vsyscall]"]
    vmas.sort(key=lambda v: v.path != "[vdso]")
    for vma in vmas:
        pos = vma.start
        while pos < vma.end:
            n = min(_SCAN_CHUNK, vma.end - pos)
            data = _pread(mem_fd, n, pos)
            idx = data.find(_SYSCALL_INSN)
            if idx >= 0:
                _insn_cache[key] = pos + idx
                return pos + idx
            if len(data) < n or pos + n >= vma.end:
                break  # unreadable rest of this VMA, or its end reached
            pos += n - 1  # overlap one byte so a pair across chunks is found
    raise InjectError(f"task {tid}: no syscall instruction in any executable mapping")


def find_restorer(tid: int, mem_fd: int, proc: ProcKey | None = None,
                  maps: Callable[[], list[MapsLine]] | None = None) -> int:
    """Start of a sigframe.RESTORERS sequence in the task's code, or 0."""
    return find_code(tid, mem_fd, sigframe.RESTORERS, proc, maps)


def find_code(tid: int, mem_fd: int, seqs: tuple[bytes, ...],
              proc: ProcKey | None = None,
              maps: Callable[[], list[MapsLine]] | None = None) -> int:
    """Start of one of the byte sequences `seqs` in an executable file mapping of tid
    (libc's first), or 0. Cached per process, and per mapped file: another process
    mapping the same part of the same file (the tasks of a tree, their libc) finds it at
    the same place without a scan. ``proc``: proc_key(tid) when the caller has it;
    ``maps``: gives exec_file_maps(tid) when the caller keeps it (Injector.exec_maps)."""
    key = (*(proc or proc_key(tid)), seqs)
    cached = _code_cache.get(key)
    if cached is not None and (cached == 0 or _holds(mem_fd, cached, seqs)):
        return cached
    mapped = maps() if maps is not None else exec_file_maps(tid)
    vmas = sorted(mapped, key=lambda v: "libc" not in v.path)
    found = _known_in_file(mem_fd, vmas, seqs) or _scan_code(mem_fd, vmas, seqs)
    _code_cache[key] = found
    return found


def learn_own_code() -> None:
    """Find the sequences injections look for (SYSCALL_RET, sigframe.RESTORERS) in this
    process's own code: the engine's libc is the file the tasks map too, so a step forked
    from here (engine.serve) knows where they sit in it without scanning a task's libc
    (~0.7 ms, 768 KiB read, in the first injection of every dump)."""
    fd = os.open("/proc/self/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        vmas = sorted(exec_file_maps(os.getpid()), key=lambda v: "libc" not in v.path)
        for seqs in ((SYSCALL_RET,), sigframe.RESTORERS):
            _scan_code(fd, vmas, seqs)
    finally:
        os.close(fd)


def _holds(mem_fd: int, addr: int, seqs: tuple[bytes, ...]) -> bool:
    return any(_pread(mem_fd, len(r), addr) == r for r in seqs)


def _file_key(vma: MapsLine, seqs: tuple[bytes, ...]) -> tuple[object, ...]:
    return (vma.dev, vma.inode, vma.offset, vma.size, seqs)


def _known_in_file(mem_fd: int, vmas: list[MapsLine], seqs: tuple[bytes, ...]) -> int:
    """Where a sequence found before in the same part of a mapped file is, or 0."""
    for vma in vmas:
        at = _file_code.get(_file_key(vma, seqs))
        if at is not None and _holds(mem_fd, vma.start + at, seqs):
            return vma.start + at
    return 0


def _scan_code(mem_fd: int, vmas: list[MapsLine], seqs: tuple[bytes, ...]) -> int:
    """The first sequence found reading the mappings' code (at most _RESTORER_SCAN_MAX
    bytes in all), or 0."""
    budget = _RESTORER_SCAN_MAX
    for vma in vmas:
        pos = vma.start
        while pos < vma.end and budget > 0:
            n = min(_SCAN_CHUNK, vma.end - pos)
            data = _pread(mem_fd, n, pos)
            budget -= n
            hits = [i for i in (data.find(r) for r in seqs) if i >= 0]
            if hits:
                _file_code[_file_key(vma, seqs)] = pos + min(hits) - vma.start
                return pos + min(hits)
            if len(data) < n or pos + n >= vma.end:
                break
            pos += n - 16  # overlap: a sequence across chunks is found
        if budget <= 0:
            break
    return 0


def _insn_in_vdso(tid: int, mem_fd: int) -> int | None:
    try:
        vdso = dict(read_auxv(tid)).get(uapi.AT_SYSINFO_EHDR, 0)
    except (OSError, ValueError):
        return None
    if not vdso:
        return None
    image = _pread(mem_fd, _VDSO_SCAN, vdso)
    if not image.startswith(b"\x7fELF"):
        return None
    idx = image.find(_SYSCALL_INSN)
    return vdso + idx if idx >= 0 else None


def _pread(fd: int, n: int, addr: int) -> bytes:
    try:
        return os.pread(fd, n, addr)
    except OSError:
        return b""


def restart_regs(regs: UserRegs) -> UserRegs:
    """Registers as a NEW task must resume them when ``regs`` were taken inside an
    interrupted syscall: -ERESTARTSYS/NOINTR/NOHAND rewind to re-execute the syscall;
    -ERESTART_RESTARTBLOCK (nanosleep and friends, whose restart state lives in the old
    task) returns -EINTR, as the kernel does for a task without a restart block.
    Other registers are returned unchanged (a copy)."""
    out = regs.copy()
    if out.signed("orig_rax") < 0:
        return out
    err = -out.signed("rax")
    if err in (uapi.ERESTARTSYS, uapi.ERESTARTNOINTR, uapi.ERESTARTNOHAND):
        out.rax = out.orig_rax
        out.rip -= 2
    elif err == uapi.ERESTART_RESTARTBLOCK:
        out.rax = (-errno.EINTR) & _MASK64
    return out


def rseq_abort_ip(tid: int, regs: UserRegs, mem_fd: int) -> int | None:
    """Where the kernel sends the thread when it resumes, if it was stopped inside an
    rseq critical section (a stop is a preemption: the section must abort); else None.

    Reads the thread's registered struct rseq (PTRACE_GET_RSEQ_CONFIGURATION), its
    rseq_cs pointer and descriptor, and checks the signature before the abort address
    as the kernel does. Regs saved for an image or put back after injection must use
    this rip: the injected frames run outside the section, which makes the kernel clear
    rseq_cs, so it would not abort any more.
    """
    conf = ptrace.get_rseq_config(tid)
    if not conf.rseq_abi_pointer:
        return None
    raw = _pread(mem_fd, 8, conf.rseq_abi_pointer + _RSEQ_CS_OFFSET)
    cs_ptr = int.from_bytes(raw, "little") if len(raw) == 8 else 0
    if not cs_ptr:
        return None
    desc = _pread(mem_fd, _RSEQ_CS.size, cs_ptr)
    if len(desc) != _RSEQ_CS.size:
        return None
    _version, _flags, start, post_commit, abort = _RSEQ_CS.unpack(desc)
    if not 0 <= regs.rip - start < post_commit:
        return None
    sig = _pread(mem_fd, 4, abort - 4)
    if len(sig) != 4 or int.from_bytes(sig, "little") != conf.signature:
        return None  # the kernel would kill the task; leave that to it
    return int(abort)


def in_interrupted_syscall(regs: UserRegs) -> bool:
    """True when ``regs`` were taken while a syscall waits to be restarted."""
    return regs.signed("orig_rax") >= 0 and -regs.signed("rax") in uapi.RESTART_ERRNOS


class Injector:
    """Syscall injection into one seized thread that is in a ptrace-stop.

    Use as a context manager, or call restore() when done. After restore() the thread is
    in a ptrace-stop with exactly its original registers, xstate and signal mask (rip
    moved to the rseq abort handler if it was stopped inside an rseq critical section,
    which is what the kernel does on resume anyway); the caller detaches (or keeps it
    stopped) as it likes.
    """

    def __init__(self, tid: int, timeout: float = 10.0, syscall_addr: int | None = None,
                 held: tuple[Status, Stat] | None = None,
                 stack_scratch: int = STACK_SCRATCH) -> None:
        """held: the thread's /proc status and its process's stat, when the caller read
        them while the task is held (neither read again). stack_scratch: the bytes below
        the frame to keep for scratch buffers, when the stack has them (they are saved
        and put back: a caller that needs few keeps few)."""
        self.tid = tid
        self.timeout = timeout
        self._mem = os.open(f"/proc/{tid}/mem", os.O_RDWR | os.O_CLOEXEC)
        try:
            self.saved_regs = ptrace.get_regs(tid)
            abort = rseq_abort_ip(tid, self.saved_regs, self._mem)
            if abort is not None:
                self.saved_regs.rip = abort  # what the kernel would do on resume
            #: rseq abort address applied to saved_regs (None: not in a critical section)
            self.rseq_abort = abort
            self.saved_xstate = ptrace.get_xstate(tid)
            self._mask = ptrace.get_sigmask(tid)
            #: the self-restoring frame (None: injected the old way, see the module doc)
            self.frame: sigframe.Frame | None = None
            self._under_frame = b""  # the stack bytes the frame and scratch replaced
            self._restorer = 0
            self._resumed = False  # the task ran since its original stop
            self._exec_maps: list[MapsLine] | None = None
            status = held[0] if held is not None else read_status(tid, tid)
            #: the thread's /proc status as the injector found it (signal dispositions
            #: and masks do not change while the task is held)
            self.status = status
            #: the process (proc_key) and whether a seccomp filter guards its syscalls
            #: (neither changes while the task is held)
            self.proc = (status.tgid, held[1].starttime) if held else _proc_of(status)
            self.seccomp = status.seccomp
            if syscall_addr is None:
                self._step = True
                self._insn = find_syscall_insn(tid, self._mem, proc=self.proc)
                self._done_rip = self._insn + 2
            else:
                if _pread(self._mem, 3, syscall_addr) != b"\x0f\x05\xcc":
                    raise InjectError(f"task {tid}: no 'syscall; int3' at {syscall_addr:#x}")
                self._insn = syscall_addr
                self._step = False
                self._done_rip = self._insn + 3  # int3 reports rip after itself
            if syscall_addr is None:
                with termination_held():  # written and recorded, or neither
                    self._arm_frame(stack_scratch)
        except BaseException:
            if getattr(self, "frame", None) is not None:
                self.write(self._stack_low(), self._under_frame)
            os.close(self._mem)
            raise
        self._work = self.saved_regs.copy()
        self._work.orig_rax = uapi.ORIG_RAX_NONE  # the kernel must not "restart" our frame
        self._work.eflags &= ~(uapi.X86_EFLAGS_TF | uapi.X86_EFLAGS_DF)
        self._work.rip = self._insn
        if self.frame is not None:
            self._work.rsp = self.frame.sp
            self.go_home(self._restorer, uapi.SYS_rt_sigreturn, self._restorer_end)
        self._scratch: tuple[int, int] | None = None
        self._active = True
        #: signals that arrived while injecting and are sent again by restore()
        self.deferred_signals: list[int] = []
        #: number of syscalls injected so far
        self.count = 0

    def exec_maps(self) -> list[MapsLine]:
        """The task's executable file mappings, read once (they cannot change while the
        task is held: what the engine maps in it is anonymous)."""
        if self._exec_maps is None:
            self._exec_maps = exec_file_maps(self.tid)
        return self._exec_maps

    def _arm_frame(self, scratch: int) -> None:
        """Write the self-restoring frame below the stack pointer when the task has a
        restorer and the stack the room (else injection goes the old way), with `scratch`
        bytes below it if the stack has them."""
        restorer = find_restorer(self.tid, self._mem, self.proc, self.exec_maps)
        if not restorer:
            return
        try:
            frame = sigframe.Frame(self.saved_regs, self.saved_xstate, self._mask, restorer)
        except ValueError:
            return
        low = frame.address - scratch
        end = self.saved_regs.rsp - sigframe.RED_ZONE
        old = _pread(self._mem, end - low, low)
        # (a small stack, e.g. of a task made by clone() with a stack of its own, may lie
        # just above memory the task cannot write: syscalls would fail there with EFAULT)
        if len(old) != end - low or not _writable(self.tid, low, old):
            # no room for scratch buffers (they are mapped): only the slot below the
            # frame (a return address, pagecrc.in_task)
            low = frame.address - 64
            old = _pread(self._mem, end - low, low)
            if len(old) != end - low or not _writable(self.tid, low, old):
                return
        try:
            self.write(frame.address, frame.data)
        except OSError:
            return
        self.frame, self._under_frame = frame, old
        self._restorer = restorer
        self._restorer_end = restorer + next(
            len(r) for r in sigframe.RESTORERS if _pread(self._mem, len(r), restorer) == r)

    # -- context manager -------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.restore()

    # -- syscalls --------------------------------------------------------------------

    def syscall(self, nr: int, a1: int = 0, a2: int = 0, a3: int = 0, a4: int = 0,
                a5: int = 0, a6: int = 0) -> int:
        """Run syscall ``nr`` in the target; return the raw result (negative errno)."""
        if not self._active:
            raise InjectError(f"task {self.tid}: injector already restored")
        if self.count == 0:
            ptrace.set_sigmask(self.tid, self._injecting_mask())
        if self.frame is not None:
            return self._framed_syscall(nr, (a1, a2, a3, a4, a5, a6))
        w = self._work
        w.rax = nr
        w.rdi = a1 & _MASK64
        w.rsi = a2 & _MASK64
        w.rdx = a3 & _MASK64
        w.r10 = a4 & _MASK64
        w.r8 = a5 & _MASK64
        w.r9 = a6 & _MASK64
        # A termination signal to the engine waits until the task is stopped again: its
        # handler raising mid-round-trip would leave the task running in our frame (a
        # bare sigmask does not do: a signal another thread takes still runs the handler).
        with termination_held():
            ptrace.set_regs(self.tid, w)
            try:
                regs = self._run()
            except _StaleInsn:
                # The address space changed under the cached instruction: find another.
                self._use_insn(find_syscall_insn(self.tid, self._mem, refresh=True,
                                                 proc=self.proc))
                ptrace.set_regs(self.tid, w)
                regs = self._run()
        self.count += 1
        return regs.signed("rax")

    def go_home(self, rip: int, entry_nr: int, entry_rip: int, **regs: int) -> None:
        """Run injected syscalls from task code at `rip` (with a frame only): its first
        syscall, `entry_nr`, stops at `entry_rip` and is turned into the one injected,
        which returns to `rip` again; `regs` are set there too. That code is what a task
        whose tracer died runs (the restorer by default; blob.S crc_return to also close
        and unmap what selfwrite made)."""
        self._work.rip = rip
        for name, value in regs.items():
            setattr(self._work, name, value & _MASK64)
        self._home = (entry_nr, entry_rip)

    @property
    def home_regs(self) -> dict[str, int]:
        """The registers injected syscalls run with (see go_home), by name."""
        return self._work.to_dict()

    def _framed_syscall(self, nr: int, args: tuple[int, ...],
                        back: tuple[int, int] | None = None) -> int:
        """Run one syscall from home (the restorer): caught at its entry stop and changed
        into `nr`, which returns home again, or to `back` (rip, rsp)."""
        with termination_held():
            ptrace.set_regs(self.tid, self._work)
            regs = self._syscall_stop()
            if (regs.orig_rax, regs.rip) != self._home:
                raise InjectError(f"task {self.tid}: syscall stop of {regs.orig_rax} at "
                                  f"{regs.rip:#x}, not {self._home[0]} at {self._home[1]:#x}")
            regs.orig_rax = nr
            for name, value in zip(_ARG_REGS, args):
                setattr(regs, name, value & _MASK64)
            regs.rip, regs.rsp = back or (self._work.rip, self._work.rsp)
            ptrace.set_regs(self.tid, regs)
            regs = self._syscall_stop()
        self.count += 1
        return regs.signed("rax")

    def _syscall_stop(self) -> UserRegs:
        """PTRACE_SYSCALL until the next syscall stop; unblockable signals on the way
        (SIGSTOP) are kept for restore()."""
        self._resumed = True
        ptrace.ptrace(uapi.PTRACE_SYSCALL, self.tid, 0, 0)
        while True:
            status = self._wait()
            sig = ptrace.stop_signal(status) & 0x7F
            if ptrace.stop_event(status) == 0 and sig == uapi.SIGTRAP:
                return ptrace.get_regs(self.tid)
            if ptrace.stop_event(status) == 0:
                self.deferred_signals.append(sig)
            ptrace.ptrace(uapi.PTRACE_SYSCALL, self.tid, 0, 0)

    def _injecting_mask(self) -> int:
        """Every signal blocked, except SIGTRAP when none is pending: each single step
        raises a forced SIGTRAP, and a forced signal that is blocked resets its
        disposition to SIG_DFL (the task's SIGTRAP handler would be lost). A pending
        SIGTRAP must stay blocked, or it would be taken on the way and dropped."""
        if self.frame is not None:
            return uapi.ALL_SIGNALS
        st = read_status(self.tid, self.tid)
        if (st.sig_pnd | st.shd_pnd) & _SIGTRAP_BIT:
            return uapi.ALL_SIGNALS
        return uapi.ALL_SIGNALS & ~_SIGTRAP_BIT

    def _use_insn(self, addr: int) -> None:
        self._insn = addr
        self._done_rip = addr + 2
        self._work.rip = addr

    def check(self, nr: int, *args: int) -> int:
        """Like syscall() but raise OSError(errno) naming the syscall on failure."""
        ret = self.syscall(nr, *args)
        if -4095 <= ret < 0:
            name = next((k for k, v in uapi.NR.items() if v == nr), str(nr))
            raise OSError(-ret, f"{name} in task {self.tid}: {os.strerror(-ret)}")
        return ret

    def _resume(self) -> None:
        if self._step:
            ptrace.singlestep(self.tid, 0)
        else:
            ptrace.cont(self.tid, 0)

    def _wait(self) -> int:
        try:
            return ptrace.wait_stop(self.tid, self.timeout)
        except ptrace.TaskExited:
            raise
        except BaseException:
            # The injected syscall still runs (it blocks past the deadline, or the wait
            # itself failed): interrupt it so the task is in a ptrace-stop again and
            # restore() can put its own registers back. Leaving the syscall under
            # single-step queues a SIGTRAP, which restore() drains.
            ptrace.interrupt(self.tid)
            ptrace.wait_stop(self.tid, self.timeout)
            raise

    def _run(self) -> UserRegs:
        """Resume at the syscall instruction until it has run; return the regs after it."""
        self._resume()
        while True:
            status = self._wait()
            regs = ptrace.get_regs(self.tid)
            sig = ptrace.stop_signal(status)
            event = ptrace.stop_event(status)
            if regs.rip == self._done_rip and (event or sig == uapi.SIGTRAP or self._step):
                return regs
            if (self._step and event == 0 and regs.rip == self._insn
                    and sig in (uapi.SIGSEGV, uapi.SIGBUS)):
                raise _StaleInsn  # the fault is dropped: we never deliver it
            if event == 0 and sig != uapi.SIGTRAP:
                # Only unblockable signals get here (SIGSTOP): keep it for restore().
                self.deferred_signals.append(sig)
            if regs.rip != self._insn:
                raise InjectError(
                    f"task {self.tid}: unexpected stop (signal {sig}, event {event}) at "
                    f"rip {regs.rip:#x} while injecting at {self._insn:#x}")
            self._resume()

    def _drain_step_trap(self) -> None:
        """Take a queued single-step SIGTRAP off the thread (after an interrupted, timed
        out injection): let it reach its signal-delivery-stop and drop it there, with the
        original registers already in place so no injected code runs."""
        pending = ptrace.peek_siginfo(self.tid, shared=False)
        if not any(int.from_bytes(p[:4], "little") == uapi.SIGTRAP for p in pending):
            return
        # only SIGTRAP may be taken now: nothing else is dequeued on the way
        ptrace.set_sigmask(self.tid, uapi.ALL_SIGNALS & ~(1 << (uapi.SIGTRAP - 1)))
        ptrace.cont(self.tid, 0)
        status = ptrace.wait_stop(self.tid, self.timeout)
        if ptrace.stop_event(status) or ptrace.stop_signal(status) != uapi.SIGTRAP:
            raise InjectError(f"task {self.tid}: expected the queued SIGTRAP, got stop "
                              f"status {status:#x}")

    @property
    def sigmask(self) -> int:
        """The thread's blocked mask as it was when the injector was built.

        For a thread stopped inside sigsuspend()/ppoll()/pselect() this is the real mask
        (PTRACE_GETSIGMASK returns the saved one), which restore() puts back; the kernel
        then restarts the call, which installs its temporary mask again.
        """
        return self._mask

    # -- memory ----------------------------------------------------------------------

    def scratch(self, size: int) -> int:
        """Address of a private read-write buffer of at least ``size`` bytes in the target.

        The same buffer is returned each time (re-mapped larger when needed, which drops
        its content); restore() unmaps it.
        """
        on_stack = self.stack_scratch(size)
        if on_stack is not None:
            return on_stack
        size = max(uapi.PAGE_SIZE, (size + uapi.PAGE_SIZE - 1) & ~(uapi.PAGE_SIZE - 1))
        if self._scratch is not None:
            if self._scratch[1] >= size:
                return self._scratch[0]
            self.check(uapi.SYS_munmap, *self._scratch)
            self._scratch = None
        with termination_held():  # recorded before a signal can leave it behind
            addr = self.check(uapi.SYS_mmap, 0, size, uapi.PROT_READ | uapi.PROT_WRITE,
                              uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS, -1, 0)
            self._scratch = (addr, size)
        return addr

    def stack_scratch(self, size: int) -> int | None:
        """Address of `size` bytes of the stack below the frame that the target may write
        (put back by restore()), or None without a frame or the room."""
        if self.frame is None:
            return None
        base = (self._stack_low() + 63) & ~63
        return base if size <= self.frame.address - 8 - base else None  # (-8: pagecrc)

    @property
    def mapping(self) -> tuple[int, int] | None:
        """(address, length) of the scratch mapping, if one is mapped."""
        return self._scratch

    def _stack_low(self) -> int:
        """Lowest stack address we may use (the bytes saved in _under_frame)."""
        assert self.frame is not None
        return int(self.saved_regs.rsp) - sigframe.RED_ZONE - len(self._under_frame)

    def code_scratch(self, code: bytes, size: int) -> tuple[int, int]:
        """Like scratch(size), preceded by `code` on pages of its own that the target
        may execute but not write: returns (code address, buffer address). Replaces any
        scratch buffer; restore() unmaps both. (Mapped executable first and the rest made
        writable after, so W^X policies such as PR_SET_MDWE allow it.) Size 0: the code
        alone, one syscall."""
        if self._scratch is not None:
            self.check(uapi.SYS_munmap, *self._scratch)
            self._scratch = None
        code_size = _page_up(len(code))
        total = code_size + _page_up(size)
        with termination_held():  # recorded before a signal can leave it behind
            addr = self.check(uapi.SYS_mmap, 0, total, uapi.PROT_READ | uapi.PROT_EXEC,
                              uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS, -1, 0)
            self._scratch = (addr, total)
        if total > code_size:
            self.check(uapi.SYS_mprotect, addr + code_size, total - code_size,
                       uapi.PROT_READ | uapi.PROT_WRITE)
        self.write(addr, code)  # /proc/PID/mem writes read-only pages too
        return addr, addr + code_size

    def read(self, addr: int, n: int) -> bytes:
        """Read ``n`` bytes of target memory (/proc/PID/mem: works on read-only and
        PROT_NONE pages too). Raises OSError if the range is not fully readable."""
        data = os.pread(self._mem, n, addr)
        if len(data) != n:
            raise OSError(errno.EIO, f"task {self.tid}: short read at {addr:#x}")
        return data

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` into target memory through /proc/PID/mem (FOLL_FORCE)."""
        view = memoryview(data)
        while view:
            n = os.pwrite(self._mem, view, addr)
            if n <= 0:
                raise OSError(errno.EIO, f"task {self.tid}: short write at {addr:#x}")
            view = view[n:]
            addr += n

    @property
    def mem_fd(self) -> int:
        """The open /proc/TID/mem fd (valid until restore()), for bulk preadv/pwritev."""
        return self._mem

    # -- teardown --------------------------------------------------------------------

    def restore(self) -> None:
        """Unmap the scratch buffer and put back registers, xstate and signal mask.

        Safe to call twice. If the task died, only our own fd is closed.
        """
        if not self._active:
            return
        with termination_held():  # the task is put back whole, whatever arrives
            self._restore()

    def _restore(self) -> None:
        try:
            if self.frame is not None:
                self._unmap_framed()
            if self._scratch is not None:
                scratch, self._scratch = self._scratch, None
                self.check(uapi.SYS_munmap, *scratch)
        finally:
            self._active = False
            try:
                if self.frame is not None:
                    self._restore_framed()
                else:
                    ptrace.set_regs(self.tid, self.saved_regs)
                    ptrace.set_xstate(self.tid, self.saved_xstate)
                    self._drain_step_trap()
                    ptrace.set_sigmask(self.tid, self._mask)
                for sig in self.deferred_signals:
                    syscall(uapi.SYS_tkill, self.tid, sig)
            finally:
                os.close(self._mem)

    def _unmap_framed(self) -> None:
        """Unmap the scratch mapping from home (where a dead engine's task would unmap it
        too) returning straight to the restorer; the restorer is home from then on."""
        assert self.frame is not None
        try:
            if self._scratch is not None:
                scratch, self._scratch = self._scratch, None
                res = self._framed_syscall(uapi.SYS_munmap, scratch,
                                           back=(self._restorer, self.frame.sp))
                if res < 0:
                    raise OSError(-res, f"munmap in task {self.tid}: {os.strerror(-res)}")
        finally:
            self.go_home(self._restorer, uapi.SYS_rt_sigreturn, self._restorer_end)

    def _restore_framed(self) -> None:
        """Put the task back from an interrupt stop inside the kernel's signal path (where
        resuming performs a pending syscall restart, as the task's original stop did), in
        an order that keeps the frame usable until the registers are the task's own."""
        assert self.frame is not None
        if self._resumed:
            ptrace.set_regs(self.tid, self._work)  # a death from here on: rt_sigreturn
            ptrace.interrupt(self.tid)
            ptrace.cont(self.tid, 0)
            while True:
                status = ptrace.wait_stop(self.tid, self.timeout)
                event = ptrace.stop_event(status)
                if event == uapi.PTRACE_EVENT_STOP:
                    break
                if event == 0:
                    self.deferred_signals.append(ptrace.stop_signal(status))
                ptrace.cont(self.tid, 0)
        ptrace.set_sigmask(self.tid, self._mask)
        ptrace.set_xstate(self.tid, self.saved_xstate)
        ptrace.set_regs(self.tid, self.saved_regs)
        self.write(self._stack_low(), self._under_frame)

