"""`python -m engine dump` on a real process: what the image holds, and that the task is
killed (default) or goes on exactly as before (--leave-running)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.images import PE_PRESENT, DumpImage, Pagemap, load
from engine.kernel import uapi
from tests.engine.dump_support import REPO, SmallTree, Victim, run_engine

PG = 4096


def _page_bytes(img: DumpImage, pm: Pagemap, pages_name: str, addr: int) -> bytes | None:
    """The stored content of the page at addr, or None when the pagemap lacks it."""
    for e, off in zip(pm.entries, pm.offsets):
        if e.addr <= addr < e.end and e.flags & PE_PRESENT:
            with img.dir.pages_reader(pages_name, pm) as r:
                start = off + (addr - e.addr)
                return bytes(r.view()[start:start + PG])
    return None


def test_dump_leave_running_records_everything(victim: Victim,
                                               tmp_path: Path) -> None:
    fds_before = victim.fd_table()
    mem_before = victim.memory_digest()
    images = tmp_path / "img"
    res = run_engine("dump", "-t", str(victim.pid), "-D", str(images), "--leave-running")
    assert res.returncode == 0, res.stderr

    # The task goes on as before: running, untraced, same fds, same memory.
    assert victim.is_running()
    status = victim.proc_status()
    assert status["TracerPid"] == "0" and status["State"][0] in "RS"
    assert victim.fd_table() == fds_before
    assert victim.memory_digest() == mem_before

    img = load(str(images))
    assert oct(images.stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in images.iterdir())
    assert img.inventory.root_pid == victim.pid
    t = img.tasks[victim.pid]
    core, mm, pm = t.core, t.mm, t.pagemap
    assert mm is not None and pm is not None

    # signals: blocked + pending SIGUSR2, the SIGUSR1 handler, the altstack, rseq
    th = core.threads[0]
    assert th.sigmask & (1 << (uapi.SIGUSR2 - 1))
    assert uapi.SIGUSR2 in [p.signo for p in core.shared_pending]
    usr1 = next(a for a in core.sigactions if a.signo == uapi.SIGUSR1)
    assert usr1.handler > 1 and usr1.flags & uapi.SA_RESTART and usr1.flags & uapi.SA_ONSTACK
    assert usr1.mask & (1 << (uapi.SIGHUP - 1))
    assert th.sigaltstack is not None and th.sigaltstack.size == 65536
    assert th.rseq is not None and th.rseq.signature == uapi.RSEQ_SIG_X86
    assert len(t.xstate[th.tid]) >= 512
    assert core.umask == 0o022 or core.umask == os.umask(os.umask(0))
    assert core.cwd == str(victim.workdir)
    assert any(r.name == "RLIMIT_NOFILE" for r in core.limits)

    # memory: written anon pages stored with their content, untouched ones absent
    by_start = {v.start: v for v in mm.vmas}
    for i in (0, 3, 300, 1023):
        data = _page_bytes(img, pm, mm.pages, victim.anon + i * PG)
        assert data == bytes([(i * 7 + 1) & 0xFF]) * PG
    for i in (1, 2, 301):
        assert _page_bytes(img, pm, mm.pages, victim.anon + i * PG) is None
    none = by_start[victim.prot_none]
    assert none.prot == 0
    assert _page_bytes(img, pm, mm.pages, victim.prot_none + PG) == b"\x5a" * PG
    gd = by_start[victim.growsdown]  # still starts where it did: never touched below
    assert gd.flags & uapi.MAP_GROWSDOWN and "gd" in gd.vmflags
    assert _page_bytes(img, pm, mm.pages, victim.growsdown) == b"\x6b" * PG

    # shared memory: one object, with the pages no task maps any more
    shm_vma = by_start[victim.shmem]
    assert shm_vma.kind == "shmem" and shm_vma.end - shm_vma.start == 32 * PG
    sh = img.shmem[shm_vma.shmem_id]
    assert sh.entry.size == 64 * PG
    assert sum(e.nr_pages for e in sh.pagemap.entries) == 64
    for i in (0, 31, 32, 63):
        data = _page_bytes(img, sh.pagemap, sh.entry.pages, i * PG)
        assert data == bytes([0x80 + i]) * PG

    # files: pipe data saved (and not consumed: the victim checks), offsets, unlinked file
    files = img.files.by_id()
    fdmap = {f.fd: files[f.file_id] for f in core.fds}
    assert fdmap[3].type == "pipe" and fdmap[3].pipe_ino == fdmap[4].pipe_ino
    assert (images / fdmap[3].content).read_bytes() == b"pipe-data-123"
    reg = next(f for f in files.values() if (f.path or "").endswith("regular.txt"))
    assert reg.pos == 5 and reg.flags & uapi.O_APPEND
    ghost = next(f for f in files.values() if f.deleted)
    assert ghost.pos == 13 and ghost.path.endswith("unlinked.txt")
    assert (images / ghost.content).read_bytes() == b"ghost-content"

    assert victim.finish() == (0, "")


def test_dump_kills_the_task_by_default(victim: Victim, tmp_path: Path) -> None:
    res = run_engine("dump", "-t", str(victim.pid), "-D", str(tmp_path / "img"))
    assert res.returncode == 0, res.stderr
    assert victim.proc.wait(timeout=10) == -signal.SIGKILL
    assert load(str(tmp_path / "img")).inventory.tasks[0].pid == victim.pid


def test_show_prints_the_image(victim: Victim, tmp_path: Path) -> None:
    res = run_engine("dump", "-t", str(victim.pid), "-D", str(tmp_path / "img"),
                     "--leave-running")
    assert res.returncode == 0, res.stderr
    shown = run_engine("show", str(tmp_path / "img"))
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert f"task {victim.pid}" in out and "growsdown" in out and "pipe:[" in out
    assert "SIGUSR1" in out and "deleted" in out and "shmem-" in out


def test_dump_of_a_stopped_task_keeps_it_stopped(victim: Victim,
                                                 tmp_path: Path) -> None:
    os.kill(victim.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while victim.proc_status()["State"][0] != "T":
        assert time.monotonic() < deadline, "victim did not stop"
        time.sleep(0.01)
    res = run_engine("dump", "-t", str(victim.pid), "-D", str(tmp_path / "img"),
                     "--leave-running")
    assert res.returncode == 0, res.stderr
    assert load(str(tmp_path / "img")).inventory.tasks[0].state == "stopped"
    assert not victim.is_running(within=0.3)
    assert victim.proc_status()["State"][0] == "T"
    os.kill(victim.pid, signal.SIGCONT)
    assert victim.is_running()
    assert victim.finish() == (0, "")


def test_dump_tree_with_thread_child_and_zombie(small_tree: SmallTree, tmp_path: Path) -> None:
    proc, zombie, child = small_tree
    res = run_engine("dump", "-t", str(proc.pid), "-D", str(tmp_path / "img"),
                     "--leave-running")
    assert res.returncode == 0, res.stderr
    img = load(str(tmp_path / "img"))
    inv = img.inventory
    assert inv.tasks[0].pid == proc.pid
    by_pid = {t.pid: t for t in inv.tasks}
    assert set(by_pid) == {proc.pid, zombie, child}
    assert len(by_pid[proc.pid].threads) == 2
    threads = img.tasks[proc.pid].core.threads
    assert sorted(t.tid for t in threads) == sorted(by_pid[proc.pid].threads)
    assert all(t.rseq is not None and t.ns_tid == [t.tid] for t in threads)
    assert len({t.regs["fs_base"] for t in threads}) == 2  # each thread its own TLS
    assert by_pid[zombie].state == "zombie" and by_pid[zombie].exit_code == 7 << 8
    assert by_pid[child].ppid == proc.pid and img.tasks[child].mm is not None
    # still alive and untraced afterwards
    for pid in (proc.pid, child):
        status = Path(f"/proc/{pid}/status").read_text()
        assert "TracerPid:\t0" in status and "State:\tS" in status


def test_task_inside_a_syscall_gets_restart_registers(tmp_path: Path) -> None:
    """A task blocked in pause() is dumped with the registers that re-run the syscall:
    rip on its `syscall` instruction, rax = the syscall number."""
    code = "import signal; print(1, flush=True); signal.pause()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "1"
        deadline = time.monotonic() + 5
        while Path(f"/proc/{proc.pid}/wchan").read_text() in ("0", ""):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        res = run_engine("dump", "-t", str(proc.pid), "-D", str(tmp_path / "img"),
                         "--leave-running")
        assert res.returncode == 0, res.stderr
        th = load(str(tmp_path / "img")).tasks[proc.pid].core.threads[0]
        assert th.in_syscall
        assert th.regs["rax"] == th.regs["orig_rax"] == uapi.SYS_pause
        fd = os.open(f"/proc/{proc.pid}/mem", os.O_RDONLY)
        try:
            assert os.pread(fd, 2, th.regs["rip"]) == b"\x0f\x05"
        finally:
            os.close(fd)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=10)


PRCTL_STATE = """
import ctypes, signal, threading, time
libc = ctypes.CDLL(None)
signal.signal(signal.SIGALRM, lambda *a: None)
signal.setitimer(signal.ITIMER_REAL, 30.0, 2.0)
libc.prctl(36, 1)          # PR_SET_CHILD_SUBREAPER
libc.prctl(1, 10)          # PR_SET_PDEATHSIG, SIGUSR1
libc.prctl(15, b"main-nm")  # PR_SET_NAME
class SigEvent(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint64), ("signo", ctypes.c_int), ("notify", ctypes.c_int),
                ("tid", ctypes.c_int), ("pad", ctypes.c_byte * 44)]
timer = ctypes.c_int()
ev = SigEvent(0x1234, 10, 0, 0)                      # SIGEV_SIGNAL, SIGUSR1
assert libc.syscall(222, 1, ctypes.byref(ev), ctypes.byref(timer)) == 0  # CLOCK_MONOTONIC
spec = (ctypes.c_int64 * 4)(3, 0, 20, 0)            # every 3 s, first in 20 s
assert libc.syscall(223, timer.value, 0, spec, None) == 0
ev2 = SigEvent(0, 12, 4, threading.get_native_id())  # SIGEV_THREAD_ID, SIGUSR2, disarmed
assert libc.syscall(222, 0, ctypes.byref(ev2), ctypes.byref(timer)) == 0
ready = threading.Event()
def thread():
    libc.prctl(15, b"thr-nm")
    ready.set()
    time.sleep(60)
threading.Thread(target=thread, daemon=True).start()
ready.wait()
print("ready", flush=True)
time.sleep(60)
"""


def test_timers_names_and_prctl_state(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", PRCTL_STATE], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        res = run_engine("dump", "-t", str(proc.pid), "-D", str(tmp_path / "img"),
                         "--leave-running")
        assert res.returncode == 0, res.stderr
        core = load(str(tmp_path / "img")).tasks[proc.pid].core
        assert core.child_subreaper
        (real,) = core.itimers
        assert real.which == 0 and real.interval_us == 2_000_000
        assert 0 < real.value_us <= 30_000_000
        names = {t.tid: t.comm for t in core.threads}
        assert names[proc.pid] == "main-nm" and set(names.values()) == {"main-nm", "thr-nm"}
        main = next(t for t in core.threads if t.tid == proc.pid)
        assert main.pdeath_signal == signal.SIGUSR1
        armed, idle = sorted(core.posix_timers, key=lambda t: t.signo)
        assert (armed.clock_id, armed.signo, armed.sigev_value, armed.notify) == (1, 10, 0x1234, 0)
        assert armed.interval_ns == 3_000_000_000 and 0 < armed.value_ns <= 20_000_000_000
        assert (idle.clock_id, idle.signo, idle.notify, idle.notify_tid) == (0, 12, 4, proc.pid)
        assert idle.value_ns == idle.interval_ns == 0
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_session_led_from_outside_the_pid_namespace(victim_bin: Path,
                                                    tmp_path: Path) -> None:
    """In a container the session leader lies outside the pid namespace and /proc says
    sid 0 / pgid 0: the image keeps that, is accepted on load, and the restored task
    stays in the engine's (outside-led) session and group."""
    script = Path(__file__).parent / "data" / "outside_session.py"
    out = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable,
                          str(script), str(victim_bin), str(tmp_path)],
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                         capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["before"] == ["1", "0", "0"]  # ppid 1 (the script), pgid 0, sid 0
    assert facts["dump"][0] == 0, facts["dump"][1]
    assert facts["restore"][0] == 0, facts["restore"][1]
    assert facts["after"] == ["T", "1", "0", "0"]  # left stopped, re-parented, same groups
    tasks = load(str(tmp_path / "img")).inventory.tasks
    assert (tasks[0].pgid, tasks[0].sid) == (0, 0)
