"""Another project's zdtm suite, run unchanged (``--tests-dir DIR``, e.g. CRIU's zdtm/static).

What such a suite brings besides its binaries, and how each is honoured here:

- ``NAME.desc`` in CRIU's dialect (zdtm.desc, read without eval()); keys and flags this
  harness does not know are notes of the test, not errors.
- Its Makefile knows how each test starts (``NAME.pid: NAME`` rules with per-test
  arguments such as ``--envname=...``, ``--mask=...``, both ``--dirname`` and ``--filename``).
  ``make -n -o NAME -W NAME NAME.pid`` prints that command without running it (``-o NAME``:
  the binary is never rebuilt, so make runs nothing of the suite's build); its arguments
  beyond --pidfile/--outfile are passed to the binary.  Without a rule, the descriptor's
  ``file``/``dir`` keys or else the option names the binary declares decide
  --filename/--dirname (both when it declares both).
- ``NAME.checkskip``: run before the test (cwd: the suite's directory); non-zero exit SKIPs.
- ``NAME.hook``: run with ``--post-start``, ``--pre-dump``, ``--post-pre-dump``,
  ``--pre-restore``, ``--post-restore`` and ``--clean`` (always, at the end) in the test's
  work dir, with ZDTM_TEST_PID (and ZDTM_IMG_DIR once there are images) in its environment;
  non-zero exit fails the test with the hook's output.
- the ``pre-dump-notify`` flag: the test is started with ZDTM_NOTIFY_FDIN=100 and
  ZDTM_NOTIFY_FDOUT=101, and after each pre-dump the harness writes an int to its fd 100
  and waits for the reply on fd 101.

Every script and the notify exchange run under a deadline.  Mounts left under the work
dir (by the test or a hook) are unmounted at cleanup, before the work dir is removed.
"""

from __future__ import annotations

import ctypes
import functools
import os
import select
import shlex
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from zdtm import plumbing, proc
from zdtm.desc import TestDesc, beside, desc_fields
from zdtm.result import CHECK_FAILED, TEST_FAIL, TIMEOUT, Phase, Result

SCRIPT_TIMEOUT = 60.0   # deadline of one .checkskip or .hook call
MAKE_TIMEOUT = 30.0     # deadline of one ``make -n``
NOTIFY_TIMEOUT = 30.0   # deadline of the test's answer to a pre-dump notification
KILL_TIMEOUT = 10.0     # what a script left running at its deadline must be gone by then
NOTIFY_FDIN, NOTIFY_FDOUT = 100, 101
#: Where each hook argument runs, as a result phase.
HOOK_PHASES = {"--post-start": Phase.START, "--pre-dump": Phase.DUMP,
               "--post-pre-dump": Phase.PRE_DUMP, "--pre-restore": Phase.RESTORE,
               "--post-restore": Phase.RESTORE, "--clean": Phase.STOP}
_SHELL_CHARS = frozenset(";|&<>`$")  # a rule command with these is not a plain start
_MNT_DETACH = 2


# ---- start arguments ---------------------------------------------------------------------


@dataclass(frozen=True)
class StartPlan:
    """How a test is started: its arguments, where they came from, or why it cannot be."""

    args: tuple[str, ...]
    source: str
    problem: str | None = None   # not startable by the zdtm protocol: the run SKIPs with it


@functools.lru_cache(maxsize=1024)
def start_plan(test: TestDesc) -> StartPlan:
    """The zdtm-protocol arguments of ``test`` (relative to its work dir)."""
    if test.kind != "external":
        return StartPlan(tuple(test.start_args()), "descriptor")
    extras, why_not = _make_rule_args(test)
    base = (f"--pidfile={test.short}.pid", f"--outfile={test.short}.out")
    if extras is not None:
        return StartPlan(base + extras, "Makefile rule")
    if "needs_file" in _desc_keys(test) or "needs_dir" in _desc_keys(test):
        return StartPlan(tuple(test.start_args()), f"descriptor ({why_not})")
    if not _is_elf(test.binary):
        return StartPlan((), why_not, problem="not a zdtm-protocol test: a script with no "
                         f"start rule in its suite ({why_not})")
    declared = [o for o in ("dirname", "filename") if _declares_option(test.binary, o)]
    args = TestDesc(name=test.name, kind=test.kind, binary=test.binary,
                    needs_file="filename" in declared,
                    needs_dir="dirname" in declared).start_args()
    what = " and ".join(f"--{o}" for o in declared) or "neither --filename nor --dirname"
    return StartPlan(tuple(args), f"binary declares {what} ({why_not})")


def _desc_keys(test: TestDesc) -> set[str]:
    """The TestDesc fields the test's descriptor sets (re-read: start_plan is cached)."""
    return set(desc_fields(test.desc_path, strict=False)) if test.desc_path else set()


def _make_rule_args(test: TestDesc) -> tuple[tuple[str, ...] | None, str]:
    """The arguments the suite's Makefile gives the test beyond --pidfile/--outfile.

    (None, why) when there is no usable rule.  make only prints the command (-n); -o NAME
    keeps it from rebuilding the binary (or anything it depends on); -W NAME makes NAME.pid
    out of date even when a stale one exists.  Not -B: that also remakes included makefiles
    (a suite's generated .d files), whose recipes make runs even under -n.
    """
    directory = test.binary.parent
    if not any((directory / m).exists() for m in ("Makefile", "makefile", "GNUmakefile")):
        return None, "no Makefile"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    name = test.binary.name
    try:
        done = subprocess.run(["make", "-n", "-s", "--no-print-directory", "-C",
                               str(directory), "-o", name, "-W", name, f"{name}.pid"],
                              capture_output=True, text=True, timeout=MAKE_TIMEOUT, env=env,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return None, f"make -n {name}.pid gave no answer in {MAKE_TIMEOUT:.0f}s"
    except OSError as exc:
        return None, f"make: {exc.strerror}"
    lines = [ln.strip() for ln in done.stdout.splitlines() if ln.strip()]
    if done.returncode != 0 or not lines:
        err = (done.stderr.strip().splitlines() or ["no command"])[-1]
        return None, f"no {name}.pid rule: {err}"
    return _args_of_command(lines[-1], name)


def _args_of_command(command: str, name: str) -> tuple[tuple[str, ...] | None, str]:
    """The test's own arguments in a rule's command line (None when it is not that simple)."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return None, f"cannot parse the {name}.pid command: {exc}"
    if (not argv or Path(argv[0]).name != name
            or any(_SHELL_CHARS.intersection(a) for a in argv)):
        return None, f"the {name}.pid rule is not a plain start of {name}: {command}"
    extras = []
    skip_next = False
    for arg in argv[1:]:
        if skip_next:
            skip_next = False
        elif arg in ("--pidfile", "--outfile"):
            skip_next = True  # this harness names the pidfile and outfile itself
        elif not arg.startswith(("--pidfile=", "--outfile=")):
            extras.append(arg)
    return tuple(extras), "Makefile rule"


def _is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _declares_option(binary: Path, option: str) -> bool:
    """Whether a prebuilt zdtm binary declares a command-line option.

    zdtm test libraries keep option names as C strings, so a binary that accepts
    --filename holds the NUL-terminated string "filename".
    """
    try:
        return (option.encode() + b"\0") in binary.read_bytes()
    except OSError:
        return False


def start_argv(test: TestDesc) -> list[str]:
    """The full command starting ``test`` (its environment variables first, through env)."""
    argv = [str(test.binary), *start_plan(test).args]
    if "pre-dump-notify" in test.flags:
        argv = ["/usr/bin/env", f"ZDTM_NOTIFY_FDIN={NOTIFY_FDIN}",
                f"ZDTM_NOTIFY_FDOUT={NOTIFY_FDOUT}", *argv]
    return argv


# ---- before the run: arch, start plan, checkskip -----------------------------------------


def precheck(test: TestDesc, result: Result) -> bool:
    """SKIP (or fail, on a deadline) what the suite says cannot run here; True to go on."""
    machine = os.uname().machine
    if test.arch and test.arch != machine:
        result.skip(Phase.START, f"arch: the test is for {test.arch}, this machine is {machine}")
        return False
    plan = start_plan(test)
    if plan.problem:
        result.skip(Phase.START, plan.problem)
        return False
    checkskip = script(test, ".checkskip")
    if checkskip is None:
        return True
    before = set(plumbing.descendants(os.getpid()))
    done = run_script([str(checkskip)], cwd=test.binary.parent, env=dict(os.environ))
    # a probe has nothing to leave running: the test's cleanup would not know it
    plumbing.kill_tree([p for p in plumbing.descendants(os.getpid()) if p not in before],
                       KILL_TIMEOUT)
    if done.rc is None:
        result.fail(Phase.START, TIMEOUT, f"{checkskip.name}: no answer in "
                                          f"{SCRIPT_TIMEOUT:.0f}s, killed", done.output)
        return False
    if done.rc != 0:
        last = done.output[-1] if done.output else "no output"
        result.skip(Phase.START, f"{checkskip.name} exited {done.rc}: {last}")
        return False
    return True


# ---- scripts: .checkskip, .hook ----------------------------------------------------------


@dataclass
class ScriptRun:
    """A finished script: exit status (None: killed at its deadline) and output tail."""

    rc: int | None
    output: list[str]


def script(test: TestDesc, suffix: str) -> Path | None:
    """The test's ``.hook`` or ``.checkskip`` when it has an executable one."""
    path = beside(test.binary, suffix)
    return path if path.is_file() and os.access(path, os.X_OK) else None


class Script:
    """A suite script running in its own session, its output in a file.

    Output goes to a file, never a pipe a daemon it starts could keep open.  At the deadline
    the script and everything it started are killed.  A script that ends in time but leaves
    a daemon (another session) leaves a descendant of the harness: the test's cleanup ends it.
    """

    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str],
                 timeout: float | None = None) -> None:
        self.timeout = SCRIPT_TIMEOUT if timeout is None else timeout
        self.deadline = time.monotonic() + self.timeout
        self.out = tempfile.TemporaryFile()  # noqa: SIM115 - closed by finish()
        self.child: subprocess.Popen[bytes] | None = None
        try:
            self.child = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                          stdout=self.out, stderr=subprocess.STDOUT,
                                          start_new_session=True, close_fds=True)
        except OSError as exc:  # no interpreter, not executable: the script's own problem
            self.out.write(f"cannot run {argv[0]}: {exc.strerror}\n".encode())

    def finish(self) -> ScriptRun:
        """Wait (until the deadline) for the script; its status and last output lines."""
        if self.child is None:
            self.out.seek(0)
            with self.out:
                return ScriptRun(126, self.out.read().decode(errors="replace").splitlines())
        try:
            rc: int | None = self.child.wait(timeout=max(self.deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            # everything the script started goes with it (re-parented to us, then reaped)
            members = [p for p in plumbing.tree(self.child.pid) if p != self.child.pid]
            plumbing.kill_group(self.child)
            plumbing.kill_tree(members, KILL_TIMEOUT)
            rc = None
        with self.out:
            self.out.seek(0)
            text = self.out.read().decode(errors="replace")
        return ScriptRun(rc, text.splitlines()[-20:])


def run_script(argv: list[str], *, cwd: Path, env: dict[str, str],
               timeout: float | None = None) -> ScriptRun:
    """Run a suite script to its end (or its deadline)."""
    return Script(argv, cwd=cwd, env=env, timeout=timeout).finish()


class HookCall:
    """``NAME.hook ARG`` started now (nothing when the test has no hook)."""

    def __init__(self, test: TestDesc, arg: str, *, cwd: Path, env: dict[str, str]) -> None:
        self.arg = arg
        self.hook = script(test, ".hook")
        self.running = (Script([str(self.hook), arg], cwd=cwd, env=dict(os.environ, **env))
                        if self.hook else None)

    def finish(self, result: Result) -> bool:
        """Wait for the hook; a failure or a deadline is recorded; True when fine."""
        if self.running is None or self.hook is None:
            return True
        done = self.running.finish()
        phase = HOOK_PHASES[self.arg]
        output = [f"hook: {ln}" for ln in done.output]
        what = f"{self.hook.name} {self.arg}"
        if done.rc is None:
            result.fail(phase, TIMEOUT, f"{what}: no answer in {SCRIPT_TIMEOUT:.0f}s, killed",
                        output)
            return False
        if done.rc != 0:
            result.fail(phase, TEST_FAIL, f"{what} exited {done.rc}", output)
            return False
        return True


def run_hook(test: TestDesc, arg: str, *, cwd: Path, result: Result,
             env: dict[str, str]) -> bool:
    """Run ``NAME.hook ARG`` if the test has one; a failure is recorded; True when fine."""
    return HookCall(test, arg, cwd=cwd, env=env).finish(result)


# ---- pre-dump notification ---------------------------------------------------------------


def notify_pre_dump(test: TestDesc, pid: int, result: Result) -> bool:
    """Tell a ``pre-dump-notify`` test that a pre-dump happened and wait for its answer.

    Both ends are opened non-blocking (through /proc a pipe opens like a FIFO, which could
    otherwise wait forever for a peer); the answer is awaited under NOTIFY_TIMEOUT.
    """
    if "pre-dump-notify" not in test.flags:
        return True
    answer = ask = -1
    try:
        answer = os.open(f"/proc/{pid}/fd/{NOTIFY_FDOUT}", os.O_RDONLY | os.O_NONBLOCK)
        ask = os.open(f"/proc/{pid}/fd/{NOTIFY_FDIN}", os.O_WRONLY | os.O_NONBLOCK)
        os.write(ask, struct.pack("i", 0))
        ready, _, _ = select.select([answer], [], [], NOTIFY_TIMEOUT)
        reply = os.read(answer, 4) if ready else None
    except OSError as exc:
        result.fail(Phase.PRE_DUMP, TEST_FAIL, f"pre-dump notify: pid {pid} fds "
                                               f"{NOTIFY_FDIN}/{NOTIFY_FDOUT}: {exc.strerror}")
        return False
    finally:
        for fd in (answer, ask):
            if fd >= 0:
                os.close(fd)
    if reply is None:
        result.fail(Phase.PRE_DUMP, TIMEOUT, f"pre-dump notify: no answer from pid {pid} in "
                                             f"{NOTIFY_TIMEOUT:.0f}s")
        return False
    if len(reply) != 4:
        result.fail(Phase.PRE_DUMP, TEST_FAIL, f"pre-dump notify: pid {pid} answered {reply!r}")
        return False
    return True


# ---- mounts left behind ------------------------------------------------------------------


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` in our mount namespace, deepest first."""
    base = os.path.realpath(root)
    found = [_unescape(point) for point, _fs, _src in
             proc.parse_mountinfo(proc.read_text("/proc/self/mountinfo"))]
    inside = {p for p in found if p == base or p.startswith(base + "/")}
    return sorted(inside, key=lambda p: (-p.count("/"), p))


def _unescape(point: str) -> str:
    r"""mountinfo escapes space, tab, newline and backslash as \ooo."""
    return point.encode().decode("unicode_escape").encode("latin-1").decode(errors="replace")


def unmount_left(root: Path, result: Result) -> None:
    """Unmount (detached) whatever is still mounted under ``root``; a leak when it was.

    Called at cleanup before the work dir is removed: removing a tree with a mount in it
    would delete the mounted filesystem's files.
    """
    left = mounts_under(root)
    if not left:
        return
    lines = []
    for point in left:
        if plumbing.libc.umount2(point.encode(), _MNT_DETACH) == 0:
            lines.append(f"left behind: mount {point} (unmounted)")
        else:
            lines.append(f"left behind: mount {point} (umount: "
                         f"{os.strerror(ctypes.get_errno())})")
    result.fail(Phase.STOP, CHECK_FAILED, f"after the test: {lines[0]}", lines)

