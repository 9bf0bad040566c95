"""Pages written by the frozen task itself (engine/dump/selfwrite.py), on throwaway children."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.dump.pages import Run
from engine.dump.selfwrite import MIN_RUN, TaskWriter
from engine.images.imgdir import ImageDir
from engine.kernel import inject, pagecrc, ptrace, uapi
from engine.kernel import sys as ksys
from engine.kernel.inject import Injector

REGION = 0x3E0000000000
SIZE = 4 * MIN_RUN
PG = 4096


def _pattern(i: int) -> bytes:
    return bytes([i % 251 + 1]) * PG


def _allow_all_seccomp() -> None:
    """A seccomp filter that allows everything (the task then reports Seccomp: 2)."""
    insn = (ctypes.c_uint16 * 4)(0x06, 0, 0, 0)  # BPF_RET | BPF_K
    raw = bytearray(bytes(insn))
    raw[4:8] = (0x7FFF0000).to_bytes(4, "little")  # SECCOMP_RET_ALLOW
    prog_insns = ctypes.create_string_buffer(bytes(raw), 8)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(1, ctypes.addressof(prog_insns))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(prog), 0, 0):
        os._exit(3)  # PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP(SECCOMP_MODE_FILTER)


def _child(setup: Callable[[], None]) -> None:
    try:
        ksys.mmap(REGION, SIZE, uapi.PROT_READ | uapi.PROT_WRITE,
                  uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS | uapi.MAP_FIXED_NOREPLACE)
        view = memoryview((ctypes.c_char * SIZE).from_address(REGION)).cast("B")
        for i in range(SIZE // PG):
            view[i * PG:(i + 1) * PG] = _pattern(i)
        setup()
        while True:
            time.sleep(1)
    finally:
        os._exit(1)


@pytest.fixture
def frozen(request: pytest.FixtureRequest) -> Iterator[int]:
    """A forked child with SIZE bytes of patterned memory at REGION, seized and stopped;
    `request.param` is run in the child first (default: nothing)."""
    setup = getattr(request, "param", lambda: None)
    pid = os.fork()
    if pid == 0:
        _child(setup)
    try:
        deadline = time.monotonic() + 5
        while f"{REGION:x}-" not in Path(f"/proc/{pid}/maps").read_text():
            assert time.monotonic() < deadline, "child did not map its region"
            time.sleep(0.005)
        time.sleep(0.05)  # let the child finish its setup
        ptrace.seize(pid, uapi.PTRACE_O_EXITKILL)
        ptrace.interrupt(pid)
        ptrace.wait_stop(pid, 5)
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _writer(tmp_path: Path, pages: int) -> tuple[ImageDir, object]:
    img = ImageDir.create(str(tmp_path / "img"))
    return img, img.pages_writer("pages-1.img", pages, direct=True)


def _fds(pid: int) -> list[str]:
    return sorted(os.listdir(f"/proc/{pid}/fd"))


def test_task_writes_its_long_runs_and_keeps_nothing(frozen: int, tmp_path: Path) -> None:
    img, out = _writer(tmp_path, SIZE // PG)
    fds, regs = _fds(frozen), ptrace.get_regs(frozen)
    maps = Path(f"/proc/{frozen}/maps").read_text()
    long_run = Run(REGION + MIN_RUN, 2 * MIN_RUN, False)
    short = Run(REGION, PG, False)
    placed = [(short, 0), (long_run, 2 * MIN_RUN)]
    w = TaskWriter(frozen)
    assert w(out, placed) == [(short, 0)]  # short runs stay with the engine
    assert w.bytes == 2 * MIN_RUN
    data = Path(out.path).read_bytes()
    first = MIN_RUN // PG
    assert data[2 * MIN_RUN:2 * MIN_RUN + PG] == _pattern(first)
    assert data[-PG:] == _pattern(first + 2 * MIN_RUN // PG - 1)
    # the task summed what it wrote: its checksums are those of the file's pages
    at = 2 * MIN_RUN // PG
    assert out.sums.values[at:] == pagecrc.sums_of(out.sums.algo, data[2 * MIN_RUN:])
    assert _fds(frozen) == fds
    after = ptrace.get_regs(frozen)
    assert (after.rip, after.rsp, after.rax) == (regs.rip, regs.rsp, regs.rax)
    # and no mapping of the injection is left
    assert Path(f"/proc/{frozen}/maps").read_text() == maps
    out.abort()
    img.discard()


def _refuse_case(frozen: int, tmp_path: Path) -> None:
    img, out = _writer(tmp_path, SIZE // PG)
    fds = _fds(frozen)
    placed = [(Run(REGION, SIZE, False), 0)]
    assert TaskWriter(frozen)(out, placed) == placed
    assert os.path.getsize(out.path) == 0
    assert _fds(frozen) == fds
    out.abort()
    img.discard()


@pytest.mark.parametrize("frozen", [_allow_all_seccomp], indirect=True)
def test_a_task_with_seccomp_is_never_injected(frozen: int, tmp_path: Path) -> None:
    assert "Seccomp:\t2" in Path(f"/proc/{frozen}/status").read_text()
    _refuse_case(frozen, tmp_path)


@pytest.mark.parametrize("frozen", [lambda: resource.setrlimit(
    resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))], indirect=True)
def test_a_file_size_limit_keeps_the_engine_writing(frozen: int, tmp_path: Path) -> None:
    _refuse_case(frozen, tmp_path)


@pytest.mark.parametrize("frozen", [lambda: os.setresuid(1000, 1000, 1000)], indirect=True)
def test_a_task_that_may_not_open_the_file_hands_back(frozen: int, tmp_path: Path) -> None:
    _refuse_case(frozen, tmp_path)


def test_another_file_at_the_path_is_not_written(frozen: int, tmp_path: Path) -> None:
    """The task must write the engine's file: a different file at its path (as a chroot
    or another mount namespace could give) is detected by inode and left untouched."""
    img, out = _writer(tmp_path, SIZE // PG)
    moved = Path(out.path + ".moved")
    os.rename(out.path, moved)
    Path(out.path).write_bytes(b"other")
    fds = _fds(frozen)
    placed = [(Run(REGION, SIZE, False), 0)]
    assert TaskWriter(frozen)(out, placed) == placed
    assert Path(out.path).read_bytes() == b"other"
    assert moved.stat().st_size == 0
    assert _fds(frozen) == fds
    out.abort()
    img.discard()


def _engine_dies(pid: int, out_dir: Path, when: str) -> None:
    """In a forked tracer: seize pid and have it write its pages; SIGKILL ourselves at
    `when`: while the task sums its pages, or at the injection of its first pwrite."""
    try:
        ptrace.seize(pid, inject.SEIZE_OPTIONS)  # as the dumper does
        ptrace.freeze(pid, 5)
        _, out = _writer(out_dir, SIZE // PG)
        if when == "summing":  # pagecrc's own ptrace dies once the task runs page_crcs
            dying = types.SimpleNamespace(**vars(ptrace))
            dying.wait_stop = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
            pagecrc.ptrace = dying  # type: ignore[assignment]
        else:
            real_syscall = Injector.syscall

            def dying(self: Injector, nr: int, *args: int) -> int:
                if nr == uapi.SYS_pwrite64:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_syscall(self, nr, *args)
            Injector.syscall = dying  # type: ignore[method-assign]
        TaskWriter(pid)(out, [(Run(REGION, SIZE, False), 0)])
    finally:
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("when", ["summing", "writing"])
def test_task_survives_its_engine_killed_while_writing(tmp_path: Path, when: str) -> None:
    """The engine SIGKILLed while the task sums its pages or is about to write them: the
    task closes the pages file, unmaps the injected code, puts itself back and sleeps on
    with its memory, maps, descriptors and mask as before."""
    if not pagecrc.native():
        pytest.skip("no SSE4.2 here: the task never runs injected code")
    pid = os.fork()
    if pid == 0:
        _child(lambda: None)
    try:
        deadline = time.monotonic() + 5
        while f"{REGION:x}-" not in Path(f"/proc/{pid}/maps").read_text():
            assert time.monotonic() < deadline, "child did not map its region"
            time.sleep(0.005)
        time.sleep(0.05)
        maps, fds = Path(f"/proc/{pid}/maps").read_text(), _fds(pid)
        mask = _sig_blocked(pid)
        engine = os.fork()
        if engine == 0:
            _engine_dies(pid, tmp_path, when)
        _, status = os.waitpid(engine, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        deadline = time.monotonic() + 5
        while _proc_state(pid) != "S":
            assert time.monotonic() < deadline, f"task in state {_proc_state(pid)}"
            time.sleep(0.01)
        assert Path(f"/proc/{pid}/maps").read_text() == maps
        assert _fds(pid) == fds and _sig_blocked(pid) == mask
        with open(f"/proc/{pid}/mem", "rb") as mem:
            mem.seek(REGION)
            assert mem.read(SIZE) == b"".join(_pattern(i) for i in range(SIZE // PG))
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _sig_blocked(pid: int) -> str:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return next(ln for ln in f if ln.startswith("SigBlk:"))
