"""Raw syscalls through ctypes, plus typed wrappers for the ones the engine uses a lot.

Every wrapper raises OSError(errno) on failure, like the os module does. Pointer
arguments may be given as ints (addresses) or ctypes objects (passed by reference).
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import signal
from array import array
from collections.abc import Sequence

from engine.kernel import uapi
from engine.kernel.structs import CloneArgs, Iovec, PageRegion, PmScanArg

_libc = ctypes.CDLL(None, use_errno=True)
_MASK64 = (1 << 64) - 1

# libc's syscall() called through fixed prototypes: ctypes converts plain ints in C,
# which is several times faster than building c_ulong objects per argument (this is the
# hot path of syscall injection: a few ptrace calls per injected syscall).
_SYSCALL_ADDR = ctypes.cast(_libc.syscall, ctypes.c_void_p).value
if _SYSCALL_ADDR is None:
    raise ImportError("the C library has no syscall()")
_L, _U = ctypes.c_long, ctypes.c_ulong
_syscall6 = ctypes.CFUNCTYPE(_L, _L, _U, _U, _U, _U, _U, _U, use_errno=True)(_SYSCALL_ADDR)
_syscall4 = ctypes.CFUNCTYPE(_L, _L, _L, _L, _U, _U, use_errno=True)(_SYSCALL_ADDR)

#: A (remote or local) memory range: (address, length in bytes).
Range = tuple[int, int]


def _arg(value: object) -> int:
    """One syscall argument as a machine word (ints as is, ctypes objects by address)."""
    if type(value) is int:
        return value & _MASK64
    if value is None:
        return 0
    if isinstance(value, (ctypes.Structure, ctypes.Array, ctypes._SimpleCData)):
        return ctypes.addressof(value)
    if isinstance(value, int):  # bool, IntEnum
        return int(value) & _MASK64
    raise TypeError(f"unsupported syscall argument {value!r}")


def syscall(nr: int, *args: object) -> int:
    """Run syscall ``nr`` in this process; return its result or raise OSError(errno)."""
    words = [_arg(a) for a in args]
    words += [0] * (6 - len(words))
    ret: int = _syscall6(nr, *words)
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{_syscall_name(nr)}: {os.strerror(err)}")
    return ret


def syscall4(nr: int, a1: int, a2: int, a3: int, a4: int) -> int:
    """Fast path for hot 4-argument calls (ptrace): ints only, a1/a2 signed longs,
    a3/a4 unsigned words. Raises OSError(errno)."""
    ret: int = _syscall4(nr, a1, a2, a3, a4)
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{_syscall_name(nr)}: {os.strerror(err)}")
    return ret


def _syscall_name(nr: int) -> str:
    for name, num in uapi.NR.items():
        if num == nr:
            return name
    return f"syscall {nr}"


def pidfd_open(pid: int, flags: int = 0) -> int:
    """Open a pidfd for ``pid`` (PIDFD_THREAD in flags for a non-leader thread)."""
    return syscall(uapi.SYS_pidfd_open, pid, flags)


def pidfd_getfd(pidfd: int, targetfd: int, flags: int = 0) -> int:
    """Duplicate fd ``targetfd`` of the process behind ``pidfd`` into this process."""
    return syscall(uapi.SYS_pidfd_getfd, pidfd, targetfd, flags)


def _iovecs(ranges: Sequence[Range]) -> ctypes.Array[Iovec]:
    """An iovec array over a flat array('Q') of (base, len) pairs: built in C, not in a
    Python loop per element (dumps pass thousands of ranges). The ctypes array keeps the
    backing array alive."""
    flat = array("Q", itertools.chain.from_iterable(ranges))
    return (Iovec * len(ranges)).from_buffer(flat)


# The kernel caps one process_vm_* call at UIO_MAXIOV iovecs per side.
UIO_MAXIOV = 1024


def process_vm_readv(pid: int, local: Sequence[Range], remote: Sequence[Range]) -> int:
    """Copy remote ranges of ``pid`` into local ranges (addresses of our buffers/mmaps).

    Returns bytes copied (may be short: it stops at the first unreadable remote page).
    Splits into chunks of UIO_MAXIOV iovecs; stops early on a short chunk.
    """
    return _process_vm(uapi.SYS_process_vm_readv, pid, local, remote)


def process_vm_writev(pid: int, local: Sequence[Range], remote: Sequence[Range]) -> int:
    """Copy local ranges into remote ranges of ``pid``; returns bytes copied (may be short).

    Fails on read-only remote pages (no FOLL_FORCE): use /proc/PID/mem there.
    """
    return _process_vm(uapi.SYS_process_vm_writev, pid, local, remote)


def _process_vm_one_local(nr: int, pid: int, local: Range, remote: Sequence[Range]) -> int:
    """_process_vm with one local buffer (a staging slot) and many remote ranges: the
    remote side taken UIO_MAXIOV ranges at a time, each against its stretch of the
    buffer (no per-range bookkeeping in Python)."""
    total = 0
    addr = local[0]
    for first in range(0, len(remote), UIO_MAXIOV):
        chunk = remote[first:first + UIO_MAXIOV]
        want = sum(n for _, n in chunk)
        got = syscall(nr, pid, _iovecs([(addr, want)]), 1, _iovecs(chunk), len(chunk), 0)
        total += got
        if got != want:
            break
        addr += want
    return total


def _process_vm(nr: int, pid: int, local: Sequence[Range], remote: Sequence[Range]) -> int:
    if sum(n for _, n in local) != sum(n for _, n in remote):
        raise ValueError("local and remote ranges differ in total length")
    if len(local) <= UIO_MAXIOV and len(remote) <= UIO_MAXIOV:
        liov, riov = _iovecs(local), _iovecs(remote)
        return syscall(nr, pid, liov, len(local), riov, len(remote), 0)
    if len(local) == 1:
        return _process_vm_one_local(nr, pid, local[0], remote)
    # Large lists: walk both sides in lockstep, at most UIO_MAXIOV per side per call.
    total = 0
    li = ri = 0
    loff = roff = 0
    while li < len(local) and ri < len(remote):
        lchunk: list[Range] = []
        rchunk: list[Range] = []
        while li < len(local) and ri < len(remote) and len(lchunk) < UIO_MAXIOV \
                and len(rchunk) < UIO_MAXIOV:
            laddr, llen = local[li]
            raddr, rlen = remote[ri]
            n = min(llen - loff, rlen - roff)
            lchunk.append((laddr + loff, n))
            rchunk.append((raddr + roff, n))
            loff += n
            roff += n
            if loff == llen:
                li, loff = li + 1, 0
            if roff == rlen:
                ri, roff = ri + 1, 0
        want = sum(n for _, n in lchunk)
        got = syscall(nr, pid, _iovecs(lchunk), len(lchunk), _iovecs(rchunk), len(rchunk), 0)
        total += got
        if got != want:
            break
    return total


def ioctl(fd: int, request: int, arg: object = 0) -> int:
    """ioctl(2) with a ctypes object or int argument."""
    return syscall(uapi.SYS_ioctl, fd, request, arg)


def pagemap_scan(
    fd: int,
    start: int,
    end: int,
    flags: int = 0,
    category_mask: int = 0,
    category_inverted: int = 0,
    category_anyof_mask: int = 0,
    return_mask: int = 0,
    max_pages: int = 0,
    vec_len: int = 4096,
) -> list[tuple[int, int, int]]:
    """PAGEMAP_SCAN on an open /proc/PID/pagemap over [start, end).

    Returns merged runs (start, end, categories) with categories & return_mask. Loops
    while the kernel fills the output vector, never reporting a range twice. ``max_pages`` (0 = no
    limit) bounds the total pages reported, as in the kernel. With PM_SCAN_WP_MATCHING
    the matching pages are write-protected again as they are reported.
    """
    regions: list[tuple[int, int, int]] = []
    vec = (PageRegion * vec_len)()
    arg = PmScanArg()
    arg.size = ctypes.sizeof(PmScanArg)
    arg.flags = flags
    arg.vec = ctypes.addressof(vec)
    arg.vec_len = vec_len
    arg.category_inverted = category_inverted
    arg.category_mask = category_mask
    arg.category_anyof_mask = category_anyof_mask
    arg.return_mask = return_mask
    pos = start
    pages_left = max_pages
    while pos < end:
        arg.start = pos
        arg.end = end
        arg.walk_end = 0
        arg.max_pages = pages_left
        n = ioctl(fd, uapi.PAGEMAP_SCAN, arg)
        _merge_regions(regions, vec, n)
        if max_pages:
            pages_left = max_pages - sum((e - s) >> uapi.PAGE_SHIFT for s, e, _ in regions)
            if pages_left <= 0:
                break
        if arg.walk_end >= end:
            break
        # After an internal restart the kernel (6.18) may leave walk_end below regions it
        # already returned: go on from past them, so no range is reported twice.
        nxt = max(arg.walk_end, regions[-1][1] if regions else 0)
        if nxt <= pos:
            break
        pos = nxt
    return regions


def _merge_regions(regions: list[tuple[int, int, int]], vec: ctypes.Array[PageRegion],
                   n: int) -> None:
    """Append the first n page_regions of vec to regions, each one that continues the
    last with the same categories joined to it (read as one array of u64, not struct
    by struct: a maps06-sized task reports tens of thousands)."""
    flat = array("Q")
    flat.frombytes(memoryview(vec).cast("B")[:n * ctypes.sizeof(PageRegion)])
    for start, end, cats in zip(flat[0::3], flat[1::3], flat[2::3]):
        if regions:
            last = regions[-1]
            if last[1] == start and last[2] == cats:
                regions[-1] = (last[0], end, cats)
                continue
        regions.append((start, end, cats))


def clone3(args: CloneArgs) -> int:
    """Raw clone3(2). Returns the child's pid in the parent and 0 in the child.

    In the child (when it goes on running Python), call after_fork_child() first.
    Without CLONE_VM the child runs on a copy of our stack, so stack/stack_size may be 0.
    """
    return syscall(uapi.SYS_clone3, args, ctypes.sizeof(CloneArgs))


def after_fork_child() -> None:
    """Tell the interpreter it is now a forked child (PyOS_AfterFork_Child)."""
    ctypes.pythonapi.PyOS_AfterFork_Child()


def prctl(option: int, arg2: object = 0, arg3: object = 0, arg4: object = 0,
          arg5: object = 0) -> int:
    """prctl(2) in this process."""
    return syscall(uapi.SYS_prctl, option, arg2, arg3, arg4, arg5)


def timer_restore_ids() -> tuple[bool, str]:
    """Whether timer_create() can be given the id to use (PR_TIMER_CREATE_RESTORE_IDS,
    Linux 6.15); the GET query changes nothing. (available, reason when not)."""
    try:
        prctl(uapi.PR_TIMER_CREATE_RESTORE_IDS, uapi.PR_TIMER_CREATE_RESTORE_IDS_GET)
    except OSError as exc:
        return False, f"prctl(PR_TIMER_CREATE_RESTORE_IDS): {exc.strerror} (Linux 6.15+)"
    return True, ""


_CONFIG_HZ = (100, 250, 300, 1000)
_SLACK_SAMPLES = 3


@functools.cache
def cpu_itimer_slack_us() -> int:
    """What setitimer() adds to the value of ITIMER_VIRTUAL and ITIMER_PROF (one tick,
    1/CONFIG_HZ s, so the timer never fires early); getitimer() shows the value with it.
    Measured on this process's own ITIMER_PROF (disarmed again at once), less the CPU
    time spent in between, then taken as the nearest tick length. The largest of a few
    samples: a tick's CPU time charged between the two calls makes one look slack-less
    (seen once: 1 ms taken for a 4 ms tick, a restored timer 3 ms late)."""
    values = []
    for _ in range(_SLACK_SAMPLES):
        signal.setitimer(signal.ITIMER_PROF, 1000.0)
        try:
            values.append(signal.getitimer(signal.ITIMER_PROF)[0])
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
    slack = (max(values) - 1000.0) * 1_000_000
    return min((round(1_000_000 / hz) for hz in _CONFIG_HZ), key=lambda t: abs(t - slack))


def set_child_subreaper(on: bool = True) -> None:
    """Make this process a child subreaper (orphans of restored trees come to us)."""
    prctl(uapi.PR_SET_CHILD_SUBREAPER, 1 if on else 0)


def userfaultfd(flags: int = 0) -> int:
    """userfaultfd(2) in this process (flags: O_CLOEXEC|O_NONBLOCK|UFFD_USER_MODE_ONLY)."""
    return syscall(uapi.SYS_userfaultfd, flags)


def memfd_create(name: str, flags: int = 0) -> int:
    """memfd_create(2) in this process."""
    buf = ctypes.create_string_buffer(name.encode())
    return syscall(uapi.SYS_memfd_create, buf, flags)


def mmap(addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """mmap(2) in this process, returning the address (for zero-copy transfer buffers)."""
    return syscall(uapi.SYS_mmap, addr, length, prot, flags, fd, offset)


def mprotect(addr: int, length: int, prot: int) -> None:
    """mprotect(2) in this process."""
    syscall(uapi.SYS_mprotect, addr, length, prot)


def resident_pages(addr: int, length: int) -> int:
    """How many pages of the mapping [addr, addr + length) are resident (mincore: for a
    file mapping, in the page cache); 0 where mincore refuses."""
    vec = (ctypes.c_ubyte * ((length + uapi.PAGE_SIZE - 1) // uapi.PAGE_SIZE))()
    try:
        syscall(uapi.SYS_mincore, addr, length, vec)
    except OSError:
        return 0
    return bytes(vec).translate(_LOW_BIT).count(1)  # bit 0: resident; the rest reserved


_LOW_BIT = bytes(b & 1 for b in range(256))


def munmap(addr: int, length: int) -> None:
    """munmap(2) in this process."""
    syscall(uapi.SYS_munmap, addr, length)



def kcmp(pid1: int, pid2: int, kind: int, idx1: int = 0, idx2: int = 0) -> int:
    """kcmp(2): 0 when the two resources are the same kernel object (e.g. KCMP_FILE: one
    open file description), 1 or 2 for an order, 3 when they differ but cannot be ordered."""
    return syscall(uapi.SYS_kcmp, pid1, pid2, kind, idx1, idx2)


def fs_type(fd: int) -> int:
    """The f_type (filesystem magic) of the file open at fd (fstatfs(2))."""
    buf = ctypes.create_string_buffer(120)  # struct statfs; f_type comes first
    syscall(uapi.SYS_fstatfs, fd, buf)
    return int.from_bytes(buf.raw[:8], "little")


def unshare(flags: int) -> None:
    """unshare(2) for this process (CLONE_NEW* flags)."""
    syscall(uapi.SYS_unshare, flags)


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace of ``fd`` (an ns file or a pidfd with CLONE_NEW* set)."""
    syscall(uapi.SYS_setns, fd, nstype)


def _cstr(value: str | None) -> ctypes.Array[ctypes.c_char] | None:
    return None if value is None else ctypes.create_string_buffer(os.fsencode(value))


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2)."""
    syscall(uapi.SYS_mount, _cstr(source), _cstr(target), _cstr(fstype), flags, _cstr(data))


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2) (MNT_DETACH for a lazy unmount)."""
    syscall(uapi.SYS_umount2, _cstr(target), flags)
