"""Run a selection under other kernels: each one booted with virtme-ng (vng), the same
runner command run inside, the results brought back tagged with the kernel.

The guest sees this machine's files read-only (virtme-ng's 9p root), so the checkout and
its built binaries are the same; the guest's /tmp, where the work dirs and images go, is
an overlay on tmpfs. One directory of the host is shared writable (``--rwdir``): the guest
runner appends each result to ``results.jsonl`` there as it finishes (so a guest that hangs
later still gives back what it ran), and the guest records the kernel's taint flags before
and after the run and its kernel log. A kernel that does not boot, a guest that stays silent
past its deadline or a run that tainted the kernel is a failed result of its own, named
``kernel/boot``, ``kernel/hang`` or ``kernel/health``, with the console tail or log lines.

KVM is used when a probe shows qemu can run a guest with it; otherwise software emulation
(TCG, about 10x slower: a boot takes 25-45 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from zdtm import ROOT_DIR
from zdtm.plumbing import kill_group
from zdtm.report import totals
from zdtm.result import FAIL, HARNESS_ERROR, SKIP, TEST_FAIL, TIMEOUT, Kind, Phase, Result

VNG = "vng"
QEMU = "qemu-system-x86_64"
HOST = "host"  # --kernel host: the running kernel, no VM
BOOT_TIMEOUT = 600.0  # from vng's start to the guest's first line (TCG on a loaded host:
# 86-141 s measured beside other work, more than 300 s with two VMs at a load of 20)
SILENCE_GRACE = 300.0  # beyond the longest legitimate quiet phase (an engine step)
GUEST_MEMORY = "2G"
GUEST_CPUS = 2
CONSOLE_TAIL = 40
MARK = "zdtm-vm:"  # lines the guest script prints itself
RESULTS = "results.jsonl"
#: /proc/sys/kernel/tainted bits, as the kernel prints them (Documentation/admin-guide/
#: tainted-kernels.rst)
TAINT_LETTERS = "PFSRMBUDAWCIOELKXTN"
#: kernel log lines that mean the kernel itself went wrong during the run
KMSG_BAD = re.compile(r"\b(BUG:|WARNING:|Oops|general protection fault|Call Trace:|"
                      r"kernel BUG|soft lockup|hard LOCKUP|blocked for more than|"
                      r"Kernel panic|UBSAN:|KASAN:|list_add corruption)")


class KernelError(Exception):
    """A --kernel argument that names no usable kernel image."""


@dataclass(frozen=True)
class Kernel:
    """A kernel to run under: an image to boot, or the host's own (``host``)."""

    image: Path | None
    release: str

    @property
    def is_host(self) -> bool:
        """The running kernel: the selection runs here, without a VM."""
        return self.image is None


def image_release(path: Path) -> str:
    """The release string of a bzImage (``6.1.0-57-amd64``), read from its setup header
    (``HdrS`` at 0x202, the version string's offset - 0x200 at 0x20E); the file name after
    ``vmlinuz-`` for other images."""
    with open(path, "rb") as f:
        head = f.read(0x4000)
    if len(head) >= 0x210 and head[0x202:0x206] == b"HdrS":
        (off,) = struct.unpack_from("<H", head, 0x20E)
        start = off + 0x200
        if 0x200 < start < len(head):
            text = head[start:head.find(b"\0", start)].decode("ascii", "replace")
            if text.split():
                return text.split()[0]
    return path.name.removeprefix("vmlinuz-")


def resolve(text: str) -> Kernel:
    """``host``, a kernel image path, or a release installed as /boot/vmlinuz-RELEASE."""
    if text == HOST:
        return Kernel(None, os.uname().release)
    path = Path(text)
    if not path.is_file():
        path = Path("/boot") / f"vmlinuz-{text}"
    if not path.is_file():
        raise KernelError(f"--kernel {text}: no such kernel image (nor /boot/vmlinuz-{text})")
    try:
        return Kernel(path.resolve(), image_release(path))
    except OSError as exc:
        raise KernelError(f"--kernel {text}: cannot read {path}: {exc.strerror}") from None


def missing_tools() -> str | None:
    """Why VMs cannot be started here, or None."""
    if shutil.which(VNG) is None:
        return "virtme-ng is not installed (pip install virtme-ng)"
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (apt-get install qemu-system-x86)"
    if shutil.which("busybox") is None:
        return "virtme-ng needs a busybox (apt-get install busybox-static)"
    return None


_KVM: dict[str, tuple[bool, str]] = {}
KVM_DEVICE = "/dev/kvm"
KVM_PROBE_TIMEOUT = 30.0  # a kernel under KVM prints its banner within a few seconds
_BANNER = "Linux version "


def kvm_usable(image: Path | str) -> tuple[bool, str]:
    """Whether qemu with KVM runs the kernel `image` here (probed once per image), and why
    not: /dev/kvm may refuse ordinary guests (a PVM host: ``failed to set MSR``), or run
    the firmware and then hang as the kernel starts (no error at all)."""
    key = str(image)
    if key not in _KVM:
        _KVM[key] = _probe_kvm(key)
    return _KVM[key]


def _probe_kvm(image: str) -> tuple[bool, str]:
    """Boot `image` under KVM with no root file system: it must print its banner on the
    serial console (then it panics, and -no-reboot ends qemu)."""
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return False, f"no usable {KVM_DEVICE}"
    cmd = [QEMU, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-display",
           "none", "-no-reboot", "-serial", "stdio", "-kernel", image, "-append",
           "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1"]
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           errors="replace", timeout=KVM_PROBE_TIMEOUT, check=False)
        out = p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        out = _text(exc.stdout) + _text(exc.stderr)
        if _BANNER not in out:
            return False, (f"qemu with KVM: {Path(image).name} printed nothing within "
                           f"{KVM_PROBE_TIMEOUT:.0f}s (the guest hangs)")
    except OSError as exc:
        return False, f"qemu with KVM: {exc}"
    if _BANNER in out:
        return True, ""
    errors = [m.group(0) for m in re.finditer(r"(error|failed)\b.*", out, re.IGNORECASE)]
    return False, "qemu with KVM: " + (errors[0].strip() if errors
                                       else f"no kernel banner (exit status {p.returncode})")


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def guest_argv(raw_argv: Sequence[str]) -> list[str]:
    """The runner's own command line for the guest: without --kernel (one level of VMs),
    --report (the host writes the one report) and --work-root (a host path: the guest
    keeps its work dirs in its own /tmp)."""
    out: list[str] = []
    skip = False
    for arg in raw_argv:
        if skip:
            skip = False
            continue
        if arg in ("--kernel", "--report", "--work-root"):
            skip = True
            continue
        if arg.startswith(("--kernel=", "--report=", "--work-root=")):
            continue
        out.append(arg)
    return out


def guest_script(argv: Sequence[str], out: Path) -> str:
    """The shell command the guest runs: marks, taint before/after, the runner, dmesg."""
    o = shlex.quote(str(out))
    runner = shlex.join([sys.executable, str(ROOT_DIR / "runner.py"), *argv,
                         "--results-out", f"{out}/{RESULTS}"])
    return (f"echo {MARK} booted $(uname -r) uptime $(cut -d' ' -f1 /proc/uptime); "
            f"cat /proc/sys/kernel/tainted > {o}/taint.before; "
            f"cd {shlex.quote(str(ROOT_DIR))} && {runner}; rc=$?; "
            f"cat /proc/sys/kernel/tainted > {o}/taint.after; dmesg > {o}/dmesg.txt; "
            f"echo {MARK} done $rc")


@dataclass
class GuestRun:
    """What one kernel's VM gave back."""

    kernel: Kernel
    results: list[Result] = field(default_factory=list)
    boot_seconds: float | None = None  # vng start -> the guest's first line
    guest_uptime: float | None = None  # the guest kernel's own uptime at that line
    wall_seconds: float = 0.0
    accel: str = ""


class _Lines:
    """The VM's console, line by line, from a reader thread (a queue with deadlines)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()
        self.tail: deque[str] = deque(maxlen=CONSOLE_TAIL)
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.q.put(raw.rstrip("\n"))
        self.q.put(None)

    def next(self, timeout: float) -> str | None:
        """The next line; None at the end; TimeoutError when none came in time."""
        try:
            line = self.q.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            raise TimeoutError from None
        if line is not None:
            self.tail.append(line)
        return line


def _kill_vm(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the VM's process group (vng and the qemu it started; we made the group)."""
    kill_group(proc, grace=30)


def vng_command(kernel: Kernel, script: str, out: Path, kvm: bool) -> list[str]:
    """The vng command line booting `kernel` to run `script` as root."""
    assert kernel.image is not None
    cmd = [VNG, "--run", str(kernel.image), "--user", "root", "--memory", GUEST_MEMORY,
           "--cpus", str(GUEST_CPUS), "--rwdir", str(out)]
    if not kvm:
        cmd.append("--disable-kvm")
    return [*cmd, "--", script]


def run_guest(kernel: Kernel, argv: Sequence[str], line: Callable[[str], None],
              silence: float, logs: Path | None = None) -> GuestRun:
    """Boot `kernel`, run the runner with `argv` inside, stream its lines through `line`
    (prefixed with the release) and collect the results; the guest's kernel log is kept
    as `logs`/dmesg-RELEASE.txt when `logs` is given. Never hangs: the boot has
    BOOT_TIMEOUT, after it the guest may be silent at most `silence` seconds."""
    assert kernel.image is not None
    kvm, why = kvm_usable(kernel.image)
    run = GuestRun(kernel, accel="kvm" if kvm else f"tcg ({why})")
    tag = f"[{kernel.release}]"
    line(f"{tag} booting {kernel.image} ({run.accel})")
    with tempfile.TemporaryDirectory(prefix="zdtm-vm-") as tmp:
        out = Path(tmp)
        # vng's own temp files (its return-code file, removed by its exit handler, which
        # the SIGKILL below never lets run) go here, and away with this directory.
        vng_tmp = out / "vng"
        vng_tmp.mkdir()
        start = time.monotonic()
        proc = subprocess.Popen(vng_command(kernel, guest_script(argv, out), out, kvm),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, start_new_session=True,
                                cwd=ROOT_DIR, env=dict(os.environ, TMPDIR=str(vng_tmp)))
        lines = _Lines(proc)
        problem = None
        try:
            problem = _follow(run, lines, line, start, silence)
        finally:
            _kill_vm(proc)
            run.wall_seconds = time.monotonic() - start
        run.results = _read_results(out / RESULTS, kernel.release)
        if problem is not None:
            problem.details += ["console tail:", *(f"  {t}" for t in lines.tail)]
            run.results.append(problem)
        elif run.boot_seconds is not None:
            health = _health(out, kernel.release)
            if health is not None:
                run.results.append(health)
            if logs is not None and (out / "dmesg.txt").exists():
                logs.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(out / "dmesg.txt", logs / f"dmesg-{kernel.release}.txt")
    return run


def _follow(run: GuestRun, lines: _Lines, line: Callable[[str], None], start: float,
            silence: float) -> Result | None:
    """Read the console until the guest is done; a Result when it did not boot or hung."""
    tag = f"[{run.kernel.release}]"
    while True:
        booted = run.boot_seconds is not None
        limit = (time.monotonic() + silence if booted else start + BOOT_TIMEOUT)
        try:
            text = lines.next(limit - time.monotonic())
        except TimeoutError:
            if not booted:
                return _kernel_result(run.kernel.release, "boot", TIMEOUT,
                                      f"the kernel did not boot within {BOOT_TIMEOUT:.0f}s")
            return _kernel_result(run.kernel.release, "hang", TIMEOUT,
                                  f"the guest gave no output for {silence:.0f}s; VM killed")
        if text is None:
            if not booted:
                return _kernel_result(run.kernel.release, "boot", HARNESS_ERROR,
                                      "the VM ended before the guest ran anything")
            return None
        if text.startswith(f"{MARK} booted"):
            run.boot_seconds = time.monotonic() - start
            words = text.split()
            with contextlib.suppress(ValueError, IndexError):
                run.guest_uptime = float(words[words.index("uptime") + 1])
            line(f"{tag} booted in {run.boot_seconds:.1f}s")
        elif text.startswith(f"{MARK} done"):
            return None
        elif booted:
            line(f"{tag} {text}")


def is_kernel_result(r: Result) -> bool:
    """Whether a result is about a kernel (boot, hang, health), not one test run."""
    return r.flavor == "vm" and r.test.startswith("kernel/")


def _kernel_result(release: str, what: str, kind: Kind, message: str) -> Result:
    r = Result(test=f"kernel/{what}", flavor="vm", engine="-", kernel=release)
    r.fail(Phase.START if what == "boot" else Phase.CHECK, kind, message)
    return r


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _read_results(path: Path, release: str) -> list[Result]:
    """The guest's results (one JSON object a line), tagged with the kernel."""
    out = []
    for text in _read(path).splitlines():
        if text.strip():
            r = Result.from_dict(json.loads(text))
            r.kernel = release
            out.append(r)
    return out


def taint_letters(value: int) -> str:
    """``W`` for 512, ``GW``-style: one letter per set bit, as the kernel names them."""
    return "".join(c for i, c in enumerate(TAINT_LETTERS) if value >> i & 1) or "-"


def _health(out: Path, release: str) -> Result | None:
    """A failed ``kernel/health`` result when the run tainted the guest kernel or left
    oops/warning lines in its log."""
    try:
        before = int(_read(out / "taint.before").strip() or 0)
        after = int(_read(out / "taint.after").strip())
    except ValueError:
        r = _kernel_result(release, "health", HARNESS_ERROR,
                           "the guest did not record its taint flags (runner killed?)")
        return r
    bad = [ln for ln in _read(out / "dmesg.txt").splitlines() if KMSG_BAD.search(ln)]
    if after == before and not bad:
        return None
    message = (f"kernel tainted during the run: {taint_letters(before)} -> "
               f"{taint_letters(after)}" if after != before else
               f"{len(bad)} kernel log line(s) of a kernel problem")
    r = _kernel_result(release, "health", TEST_FAIL, message)
    r.details = ["kernel log:", *(f"  {ln}" for ln in bad[:60])]
    return r


def timing_lines(runs: Sequence[GuestRun], results: Sequence[Result]) -> list[str]:
    """Boot and run times per kernel, and each test's time under every kernel side by side
    (the host's column too when ``host`` was one of the kernels)."""
    lines = ["time per kernel:"]
    for g in runs:
        tests = [r for r in results if r.kernel == g.kernel.release
                 and not is_kernel_result(r)]
        boot = "-" if g.boot_seconds is None else f"{g.boot_seconds:.1f}s"
        if g.guest_uptime is not None:
            boot += f" (guest kernel up {g.guest_uptime:.1f}s then)"
        lines.append(f"  {g.kernel.release}: {g.accel}, boot {boot}, whole run "
                     f"{g.wall_seconds:.1f}s, tests {sum(r.duration for r in tests):.1f}s")
    kernels = [g.kernel.release for g in runs]
    by_case: dict[tuple[str, str], dict[str, float]] = {}
    for r in results:
        if not is_kernel_result(r) and r.outcome != SKIP:
            by_case.setdefault((r.test, r.flavor), {})[r.kernel or ""] = r.duration
    if len(kernels) > 1 and by_case:
        width = max(len(f"{t} [{f}]") for t, f in by_case)
        lines.append("time per test (s): " + "  ".join(kernels))
        for (t, f), secs in sorted(by_case.items()):
            cells = "  ".join(f"{secs[k]:>{len(k)}.1f}" if k in secs else f"{'-':>{len(k)}}"
                              for k in kernels)
            lines.append(f"  {f'{t} [{f}]':<{width}}  {cells}")
    return lines


def run_kernels(kernels: Sequence[Kernel], argv: Sequence[str], line: Callable[[str], None],
                local: Callable[[], list[Result]], *, keep_going: bool, silence: float,
                logs: Path | None = None, done: list[Result] | None = None) -> list[Result]:
    """The selection under each kernel in turn (`local` runs it here for ``host``); every
    result names its kernel; guest kernel logs go to `logs`. Ends with the time lines and
    a summary per kernel. Each kernel's results also go into `done` as soon as it ends,
    so an interrupt during a later kernel keeps them for the report."""
    runs: list[GuestRun] = []
    for k in kernels:
        line(f"=== kernel {k.release}")
        if k.is_host:
            start = time.monotonic()
            g = GuestRun(k, local(), accel="host")
            g.wall_seconds = time.monotonic() - start
            for r in g.results:
                r.kernel = k.release
        else:
            g = run_guest(k, argv, line, silence, logs)
            for r in filter(is_kernel_result, g.results):
                line(r.summary())
                line("\n".join(f"    {d}" for d in r.details))
        runs.append(g)
        if done is not None:
            done.extend(g.results)
        if not keep_going and any(r.outcome == FAIL for r in g.results):
            line("stopping after the first failing kernel (use --keep-going to go on)")
            break
    results = [r for g in runs for r in g.results]
    for text in timing_lines(runs, results):
        line(text)
    for g in runs:
        line(f"kernel {g.kernel.release}: {totals(g.results)}")
    return results
