"""``python -m engine check``: which features the engine has, each probed for real.

Nothing is guessed from the kernel version: every kernel feature is exercised on this
process or on a helper child we fork (and kill by pid at the end). Besides the kernel
features, the dump and restore packages declare what they implement: a package that defines

    def features() -> dict[str, tuple[bool, str]]

(name -> (available, reason when not)) in its ``__init__`` contributes those entries;
"dump" and "restore" themselves are True when the package imports and declares itself
available. Each name is defined once, where it is probed or declared; the table ``check``
prints is the whole vocabulary: a test's ``.desc`` ``feature:`` list, the harness's mode
checks and its drivers' maps use only these names (tests/test_feature_names.py).
"""

from __future__ import annotations

import ctypes
import importlib
import json
import mmap
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from engine.images import directio
from engine.kernel import inject, ipc, ptrace, uapi, uffd
from engine.kernel import sys as ksys
from engine.kernel.inject import Injector
from engine.kernel.structs import (
    CloneArgs,
    PrctlMmMap,
)
from engine.proc import auxv as procauxv
from engine.proc import maps as procmaps
from engine.proc import pagemap as procpagemap
from engine.proc import stat as procstat
from engine.proc import tasks

Result = tuple[bool, str]
#: what a failing probe may raise (anything else is a bug in the probe and propagates)
_PROBE_ERRORS = (OSError, ValueError, RuntimeError, LookupError, StopIteration)
_TIMEOUT = 5.0


class _Helper:
    """A forked child that only waits: the target of the cross-process probes."""

    def __init__(self) -> None:
        # The child is a copy of this interpreter: it has the file mappings, rseq
        # registration and fds the probes look at. The pipe tells us it runs.
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never returns into the engine
            try:
                os.close(r)
                ksys.prctl(uapi.PR_SET_PDEATHSIG, signal.SIGKILL)
                os.write(w, b"x")
                os.close(w)
                while True:
                    time.sleep(1000)
            finally:
                os._exit(0)
        os.close(w)
        ready = os.read(r, 1)  # blocks only until the child started (or died)
        os.close(r)
        if ready != b"x":
            raise OSError("check: helper child did not start")
        self.pid = pid

    def kill(self) -> None:
        """Kill and reap the helper (by pid), waiting at most a few seconds."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + _TIMEOUT
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG | uapi.WALL)
            except ChildProcessError:
                return
            if pid:
                return
            time.sleep(0.005)


@contextmanager
def _seized(pid: int) -> Iterator[None]:
    """Seize and stop ``pid`` for the duration of the block, then detach."""
    ptrace.seize(pid, inject.SEIZE_OPTIONS)
    try:
        ptrace.freeze(pid, _TIMEOUT)
        yield
    finally:
        ptrace.detach(pid)


# ---------------------------------------------------------------------------------------
# Probes. Each returns (available, reason); an exception becomes (False, str(exc)).
# ---------------------------------------------------------------------------------------

def _probe_ptrace(h: _Helper) -> dict[str, Result]:
    out: dict[str, Result] = {}
    with _seized(h.pid):
        out["ptrace_seize"] = (True, "")
        regs = ptrace.get_regs(h.pid)
        ptrace.set_regs(h.pid, regs)
        out["ptrace_regs"] = (True, "")
        out["ptrace_xstate"] = _try(lambda: _xstate_roundtrip(h.pid))
        out["ptrace_sigmask"] = _try(lambda: _sigmask_roundtrip(h.pid))
        out["ptrace_peeksiginfo"] = _try(lambda: _peeksiginfo_probe(h.pid))
        out["ptrace_rseq_config"] = _try(lambda: _rseq_probe(h.pid))
        out["syscall_inject"] = _try(lambda: _inject_probe(h.pid))
    return out


def _xstate_roundtrip(pid: int) -> Result:
    data = ptrace.get_xstate(pid)
    ptrace.set_xstate(pid, data)
    return (True, "") if data else (False, "empty xstate")


def _sigmask_roundtrip(pid: int) -> Result:
    mask = ptrace.get_sigmask(pid)
    ptrace.set_sigmask(pid, mask | 1 << (signal.SIGUSR2 - 1))
    changed = ptrace.get_sigmask(pid)
    ptrace.set_sigmask(pid, mask)
    if not changed >> (signal.SIGUSR2 - 1) & 1:
        return False, "PTRACE_SETSIGMASK did not take effect"
    return True, ""


def _peeksiginfo_probe(pid: int) -> Result:
    ptrace.peek_siginfo(pid, shared=True)
    ptrace.peek_siginfo(pid, shared=False)
    return True, ""


def _rseq_probe(pid: int) -> Result:
    conf = ptrace.get_rseq_config(pid)
    if not conf.rseq_abi_pointer:
        return True, "works; the helper has no rseq registered"
    return True, ""


def _inject_probe(pid: int) -> Result:
    with Injector(pid, timeout=_TIMEOUT) as inj:
        got = inj.check(uapi.SYS_getpid)
        addr = inj.scratch(16)
        inj.write(addr, b"probe")
        back = inj.read(addr, 5)
    if got != pid or back != b"probe":
        return False, f"injected getpid returned {got}, scratch read {back!r}"
    return True, ""


def _probe_mem(h: _Helper) -> dict[str, Result]:
    out: dict[str, Result] = {}
    vmas = procmaps.read_maps(h.pid)
    ro = next((v for v in vmas if v.perms == "r--p" and v.is_file), None)
    if ro is None:
        return {"proc_mem": (False, "helper has no read-only file mapping to probe")}
    out["proc_mem"] = _try(lambda: _proc_mem_probe(h.pid, ro))
    buf = ctypes.create_string_buffer(8)
    try:
        n = ksys.process_vm_readv(h.pid, [(ctypes.addressof(buf), 8)], [(ro.start, 8)])
        out["process_vm_readv"] = (n == 8, "" if n == 8 else f"short read {n}")
    except OSError as exc:
        out["process_vm_readv"] = (False, str(exc))
    rw = next((v for v in vmas if v.writable and not v.shared), None)
    if rw is not None:
        try:
            n = ksys.process_vm_readv(h.pid, [(ctypes.addressof(buf), 8)], [(rw.start, 8)])
            n = ksys.process_vm_writev(h.pid, [(ctypes.addressof(buf), n)], [(rw.start, n)])
            out["process_vm_writev"] = (n == 8, "" if n == 8 else f"short write {n}")
        except OSError as exc:
            out["process_vm_writev"] = (False, str(exc))
    out["map_files"] = _try(lambda: _map_files_probe(h.pid, ro))
    out["pagemap_scan"] = _try(lambda: _pagemap_scan_probe(h.pid))
    return out


def _proc_mem_probe(pid: int, ro: procmaps.MapsLine) -> Result:
    """Read and write back (FOLL_FORCE) a read-only page through /proc/PID/mem."""
    fd = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
    try:
        with _seized(pid):
            before = os.pread(fd, 8, ro.start)
            os.pwrite(fd, before, ro.start)
    finally:
        os.close(fd)
    return True, ""


def _map_files_probe(pid: int, vma: procmaps.MapsLine) -> Result:
    path = f"/proc/{pid}/map_files/{vma.map_files_name}"
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    os.close(fd)
    return True, ""


def _pagemap_scan_probe(pid: int) -> Result:
    fd = procpagemap.open_pagemap(pid)
    try:
        stack = next(v for v in procmaps.read_maps(pid) if v.path == "[stack]")
        runs = ksys.pagemap_scan(fd, stack.start, stack.end,
                                 category_anyof_mask=uapi.PAGE_IS_PRESENT,
                                 return_mask=uapi.PAGE_IS_PRESENT)
    finally:
        os.close(fd)
    if not runs:
        return False, "PAGEMAP_SCAN found no present page in the helper's stack"
    return True, ""


def _probe_soft_dirty() -> Result:
    # A written page shows PM_SOFT_DIRTY only when CONFIG_MEM_SOFT_DIRTY is built in.
    m = mmap.mmap(-1, uapi.PAGE_SIZE)
    try:
        m[0:1] = b"x"
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        fd = procpagemap.open_pagemap(os.getpid())
        try:
            entry = procpagemap.entries(fd, addr, addr + uapi.PAGE_SIZE)[0]
        finally:
            os.close(fd)
    finally:
        del addr
        m.close()
    if entry & uapi.PM_SOFT_DIRTY:
        return True, ""
    return False, "a freshly written page is not soft-dirty (no CONFIG_MEM_SOFT_DIRTY)"


def _probe_uffd() -> dict[str, Result]:
    out: dict[str, Result] = {}
    out["uffd"] = _try(lambda: _uffd_copy_probe(0))
    out["uffd_user_mode"] = _try(lambda: _uffd_copy_probe(uapi.UFFD_USER_MODE_ONLY))
    out["uffd_dev"] = _try(_uffd_dev_probe)
    out["uffd_wp_async"] = _try(_uffd_wp_async_probe)
    return out


def _anon(size: int) -> int:
    return ksys.mmap(0, size, uapi.PROT_READ | uapi.PROT_WRITE,
                     uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS)


def _uffd_copy_probe(flags: int) -> Result:
    """Register a range for missing faults and fill a page with UFFDIO_COPY (lazy pages)."""
    fd = ksys.userfaultfd(os.O_CLOEXEC | os.O_NONBLOCK | flags)
    size = uapi.PAGE_SIZE
    area = _anon(size)
    src = ctypes.create_string_buffer(b"uffd-probe", size)
    try:
        uffd.api(fd, 0)
        uffd.register(fd, area, size, uapi.UFFDIO_REGISTER_MODE_MISSING)
        uffd.copy(fd, area, ctypes.addressof(src), size)
        if ctypes.string_at(area, 10) != b"uffd-probe":
            return False, "UFFDIO_COPY did not fill the page"
    finally:
        ksys.munmap(area, size)
        os.close(fd)
    return True, ""


def _uffd_dev_probe() -> Result:
    dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
    try:
        fd = ksys.ioctl(dev, uapi.USERFAULTFD_IOC_NEW, os.O_CLOEXEC)
        os.close(fd)
    finally:
        os.close(dev)
    return True, ""


def _uffd_wp_async_probe() -> Result:
    """Dirty tracking of DESIGN.md section 7: async uffd-wp + PAGEMAP_SCAN(WRITTEN)."""
    fd = ksys.userfaultfd(os.O_CLOEXEC | os.O_NONBLOCK)
    pages = 4
    size = pages * uapi.PAGE_SIZE
    area = _anon(size)
    pm = procpagemap.open_pagemap(os.getpid())
    try:
        want = uapi.UFFD_FEATURE_WP_ASYNC | uapi.UFFD_FEATURE_WP_UNPOPULATED
        granted, _ = uffd.api(fd, want)
        if granted & want != want:
            return False, f"UFFDIO_API features {granted:#x} lack WP_ASYNC|WP_UNPOPULATED"
        uffd.register(fd, area, size, uapi.UFFDIO_REGISTER_MODE_WP)
        # The first scan write-protects everything, the second sees the one write.
        uffd.written_runs(pm, area, area + size)
        ctypes.memset(area + 2 * uapi.PAGE_SIZE, 1, 1)
        runs = uffd.written_runs(pm, area, area + size)
        expect = [(area + 2 * uapi.PAGE_SIZE, area + 3 * uapi.PAGE_SIZE)]
        if runs != expect:
            return False, f"PAGEMAP_SCAN reported {runs}, expected only the written page"
    finally:
        os.close(pm)
        ksys.munmap(area, size)
        os.close(fd)
    return True, ""


def _probe_pidfd(h: _Helper) -> dict[str, Result]:
    out: dict[str, Result] = {}
    pidfd = ksys.pidfd_open(h.pid)
    out["pidfd_open"] = (True, "")
    try:
        fd = ksys.pidfd_getfd(pidfd, 0)
        os.close(fd)
        out["pidfd_getfd"] = (True, "")
    except OSError as exc:
        out["pidfd_getfd"] = (False, str(exc))
    finally:
        os.close(pidfd)
    return out


def _fork_probe(body: Callable[[], bool]) -> Result:
    """Run ``body`` in a forked child (it may change the child's own state); True if it
    returned True, with the child's exception text otherwise."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            ok = body()
            os.write(w, b"ok" if ok else b"returned false")
            code = 0
        except _PROBE_ERRORS as exc:  # report to the parent; os._exit below never returns
            os.write(w, str(exc).encode()[:500])
        finally:
            os._exit(code)
    os.close(w)
    try:
        msg = _read_all(r)
    finally:
        os.close(r)
        status = _reap(pid)
    if msg == b"ok":
        return True, ""
    return False, msg.decode(errors="replace") or f"probe child ended with wait status {status}"


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        data = os.read(fd, 4096)  # the child writes once and exits; EOF bounds the wait
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def _reap(pid: int) -> int:
    """Wait for our child ``pid`` (killing it after the deadline); return its wait status."""
    deadline = time.monotonic() + _TIMEOUT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def _clone3_probe(set_tid: bool) -> Result:
    args = CloneArgs()
    args.exit_signal = signal.SIGCHLD
    want = 0
    tid_arr = (ctypes.c_int * 1)()
    attempts = 3 if set_tid else 1
    for attempt in range(attempts):
        if set_tid:
            want = tasks.free_pid_after(100 * (attempt + 1))
            tid_arr[0] = want
            args.set_tid = ctypes.addressof(tid_arr)
            args.set_tid_size = 1
        try:
            pid = ksys.clone3(args)
            break
        except FileExistsError:  # someone took the free pid meanwhile: pick another
            if attempt == attempts - 1:
                raise
    if pid == 0:
        os._exit(0)  # child: exit at once, without running any Python cleanup
    _reap(pid)
    if set_tid and pid != want:
        return False, f"clone3 set_tid asked {want}, got {pid}"
    return True, ""


def _ns_last_pid_probe() -> Result:
    with open("/proc/sys/kernel/ns_last_pid", "r+", encoding="ascii") as f:
        value = f.read()
        f.seek(0)
        f.write(value)  # writing the same value back changes nothing
    return True, ""


def _set_mm_map_body() -> bool:
    st = procstat.read_stat(os.getpid())
    auxv = procauxv.read_auxv_raw(os.getpid())
    auxv_buf = ctypes.create_string_buffer(auxv, len(auxv))
    brk = ksys.syscall(uapi.SYS_brk, 0)
    m = PrctlMmMap(
        start_code=st.start_code, end_code=st.end_code, start_data=st.start_data,
        end_data=st.end_data, start_brk=st.start_brk, brk=brk, start_stack=st.start_stack,
        arg_start=st.arg_start, arg_end=st.arg_end, env_start=st.env_start,
        env_end=st.env_end, auxv=ctypes.addressof(auxv_buf), auxv_size=len(auxv),
        exe_fd=0xFFFFFFFF,
    )
    ksys.prctl(uapi.PR_SET_MM, uapi.PR_SET_MM_MAP, m, ctypes.sizeof(m))
    return True


def _vdso_mremap_body() -> bool:
    vdso = next(v for v in procmaps.read_maps(os.getpid()) if v.path == "[vdso]")
    dest = _anon(vdso.size)
    # After this the child must not call into the vdso (its vvar did not move): it
    # reports and exits at once.
    flags = uapi.MREMAP_MAYMOVE | uapi.MREMAP_FIXED
    return ksys.syscall(uapi.SYS_mremap, vdso.start, vdso.size, vdso.size, flags, dest) == dest


def _userns_body() -> bool:
    ksys.syscall(uapi.SYS_unshare, uapi.CLONE_NEWUSER)
    return True


def _ipc_next_id_body() -> bool:
    """In a new ipc namespace: a segment, a semaphore set and a queue made with the ids
    asked for through kernel/{shm,sem,msg}_next_id."""
    ksys.unshare(uapi.CLONE_NEWIPC)
    make: dict[str, Callable[[], int]] = {
        "shm": lambda: ipc.shmget(0, 4096, uapi.IPC_CREAT | 0o600),
        "sem": lambda: ipc.semget(0, 1, uapi.IPC_CREAT | 0o600),
        "msg": lambda: ipc.msgget(0, uapi.IPC_CREAT | 0o600)}
    for kind, get in make.items():
        ipc.write_sysctl(ipc.NEXT_ID[kind], "77")
        got = get()
        if got != 77:
            raise OSError(0, f"{kind}_next_id 77 gave id {got}")
    return True


def _msg_copy_body() -> bool:
    """In a new ipc namespace: msgrcv(MSG_COPY) reads a message and leaves it queued."""
    ksys.unshare(uapi.CLONE_NEWIPC)
    q = ipc.msgget(0, uapi.IPC_CREAT | 0o600)
    ipc.msgsnd(q, 5, b"probe")
    if ipc.msg_copy(q, 0, 16) != (5, b"probe") or ipc.msg_stat(q).qnum != 1:
        raise OSError(0, "MSG_COPY did not give the queued message back unchanged")
    return True


def _mqueue_body() -> bool:
    """In a new ipc namespace: a POSIX message queue made, written, read, unlinked."""
    ksys.unshare(uapi.CLONE_NEWIPC)
    fd = ipc.mq_open("engine-check", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     0o600)
    ipc.mq_send(fd, b"probe", 3)
    ok = ipc.mq_receive(fd, ipc.mq_getattr(fd).msgsize) == (3, b"probe")
    ipc.mq_unlink("engine-check")
    os.close(fd)
    return ok


def _kcmp_probe() -> Result:
    fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    dup = os.dup(fd)
    try:
        same = ksys.kcmp(os.getpid(), os.getpid(), uapi.KCMP_FILE, fd, dup)
    finally:
        os.close(dup)
        os.close(fd)
    return (True, "") if same == 0 else (False, f"kcmp of dup()ed fds returned {same}")


def _memfd_probe() -> Result:
    fd = ksys.memfd_create("engine-check", uapi.MFD_CLOEXEC)
    os.close(fd)
    return True, ""


def _direct_io_probe() -> Result:
    """O_DIRECT on a new file in the temp dir, where images usually go (the engine probes
    each pages file again; without it, it reads and writes them buffered)."""
    fd, path = tempfile.mkstemp(prefix="engine-check-")
    try:
        if directio.enable_direct_write(fd):
            return True, ""
        return False, (f"O_DIRECT refused or failing on the filesystem of "
                       f"{os.path.dirname(path)}: images there are read and written buffered")
    finally:
        directio.close_quietly(fd)
        os.unlink(path)


def _try(fn: Callable[[], Result]) -> Result:
    try:
        return fn()
    except _PROBE_ERRORS as exc:  # a failed probe is a missing feature, with its reason
        return False, f"{type(exc).__name__}: {exc}"


def _package_features(name: str) -> dict[str, Result]:
    """Features declared by engine.<name> (see module docstring)."""
    try:
        mod = importlib.import_module(f"engine.{name}")
    except ImportError as exc:  # missing or broken package: report, do not crash check
        return {name: (False, f"engine.{name} is not importable: {exc}")}
    declare = getattr(mod, "features", None)
    if declare is None:
        return {name: (False, f"engine.{name} declares no features()")}
    try:
        declared = dict(declare())
    except (*_PROBE_ERRORS, TypeError) as exc:  # a broken declaration counts as missing
        return {name: (False, f"engine.{name}.features() failed: {exc}")}
    declared.setdefault(name, (False, f"engine.{name}.features() does not declare {name!r}"))
    return {k: (bool(v[0]), str(v[1])) for k, v in declared.items()}


#: probes run on the helper child, with every feature name each may report
_HELPER_GROUPS: tuple[tuple[Callable[[_Helper], dict[str, Result]], tuple[str, ...]], ...] = (
    (_probe_ptrace, ("ptrace_seize", "ptrace_regs", "ptrace_xstate", "ptrace_sigmask",
                     "ptrace_peeksiginfo", "ptrace_rseq_config", "syscall_inject")),
    (_probe_mem, ("proc_mem", "process_vm_readv", "process_vm_writev", "map_files",
                  "pagemap_scan")),
    (_probe_pidfd, ("pidfd_open", "pidfd_getfd")),
)


def probe() -> dict[str, Result]:
    """Probe every feature; return name -> (available, reason when not)."""
    out: dict[str, Result] = {}
    helper = _Helper()
    try:
        for group, names in _HELPER_GROUPS:
            try:
                out.update(group(helper))
            except _PROBE_ERRORS as exc:  # the group failed early: all of it is missing
                for name in names:
                    out.setdefault(name, (False, f"{type(exc).__name__}: {exc}"))
    finally:
        helper.kill()
    out["soft_dirty"] = _try(_probe_soft_dirty)
    out.update(_probe_uffd())
    out["mem_track"] = out["uffd_wp_async"] if not out["soft_dirty"][0] else out["soft_dirty"]
    out["clone3"] = _try(lambda: _clone3_probe(False))
    out["clone3_set_tid"] = _try(lambda: _clone3_probe(True))
    out["ns_last_pid"] = _try(_ns_last_pid_probe)
    out["prctl_set_mm_map"] = _try(lambda: _fork_probe(_set_mm_map_body))
    out["vdso_mremap"] = _try(lambda: _fork_probe(_vdso_mremap_body))
    out["userns"] = _try(lambda: _fork_probe(_userns_body))
    out["memfd"] = _try(_memfd_probe)
    out["kcmp"] = _try(_kcmp_probe)
    out["ipc_next_id"] = _try(lambda: _fork_probe(_ipc_next_id_body))
    out["msg_copy"] = _try(lambda: _fork_probe(_msg_copy_body))
    out["posix_mqueue"] = _try(lambda: _fork_probe(_mqueue_body))
    out["direct_io"] = _try(_direct_io_probe)
    for pkg in ("dump", "restore"):
        out.update(_package_features(pkg))
    _apply_kernel_needs(out)
    return out


_DIRTY_TRACKING = ("needs dirty-memory tracking with userfaultfd WP_ASYNC and PAGEMAP_SCAN "
                   "(Linux 6.7+)")
#: What the engine implements only where these kernel features were probed: name ->
#: (kernel features, why). Incremental dumps track written memory with userfaultfd
#: WP_ASYNC read back by PAGEMAP_SCAN (Linux 6.7+); soft-dirty, where it exists, is not
#: used. A tree in a user namespace of its own (flavour uns) needs user namespaces.
KERNEL_NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "pre_dump": (("uffd_wp_async", "pagemap_scan"), _DIRTY_TRACKING),
    "dump_incremental": (("uffd_wp_async", "pagemap_scan"), _DIRTY_TRACKING),
    "flavor_uns": (("userns",), "needs user namespaces"),
    "ipc_sysv": (("ipc_next_id", "msg_copy"),
                 ("needs SysV objects made with chosen ids (kernel/*_next_id) and messages "
                  "copied without taking them (msgrcv MSG_COPY): CONFIG_CHECKPOINT_RESTORE")),
    "ipc_mqueue": (("posix_mqueue",), "needs POSIX message queues (CONFIG_POSIX_MQUEUE)"),
}


def _apply_kernel_needs(out: dict[str, Result]) -> None:
    """Turn off the engine features whose kernel features are missing, saying which."""
    for name, (needs, why) in KERNEL_NEEDS.items():
        if name not in out or not out[name][0]:
            continue
        missing = [f"{k}: {out[k][1] or 'not probed'}" for k in needs
                   if not out.get(k, (False, ""))[0]]
        if missing:
            out[name] = (False, f"{why}; missing " + "; ".join(missing))


def cli(argv: list[str], as_json: bool) -> int:
    """Print the probe results; exit status 0 (the table itself says what is missing)."""
    del argv
    results = probe()
    if as_json:
        doc = {
            "features": {k: v[0] for k, v in sorted(results.items())},
            "reasons": {k: v[1] for k, v in sorted(results.items()) if v[1]},
        }
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    width = max(len(k) for k in results)
    for name, (ok, why) in sorted(results.items()):
        line = f"{name:<{width}}  {'yes' if ok else 'no '}"
        if why:
            line += f"  ({why})"
        print(line)
    return 0
