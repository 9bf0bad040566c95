"""One test in one flavour: build, start, C/R iterations with checks, stop, cleanup.

The same code runs under runner.py and under pytest (conftest.py).  See DESIGN.md section 4.

Freezing for the S0 snapshot: the harness itself SIGSTOPs every task of the tree by pid and
waits until every thread is in group-stop ('T'), walking the tree until no new task shows
up.  The tree then stays stopped through the dump (the engine seizes stopped tasks), so the
dumped state is exactly the S0 state; the restored tree is left stopped by the engine
(--leave-stopped), captured as S1, compared, and resumed with SIGCONT by pid.  A restore
that cannot leave the tree stopped is noted in the result and the harness stops the tree
itself right after the restore.

Tasks the test itself stopped (in group-stop before the harness's freeze: plumbing.stopped_ids)
are "stopped by signal" in S0; in S1 only those the restore left stopped, seen before the
harness stops whatever runs, so a restore that resumes such a task fails ``taskattrs``.
The harness's resume leaves them stopped.

Every phase has a deadline: engine steps and the test start are subprocesses with
timeouts; freezing and waiting for the verdict poll with deadlines; snapshots and their
comparison run under an interval timer (SIGALRM) when called from the main thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flavors import Flavor, StartError, get_flavor
from zdtm import (
    allowances,
    cgroups,
    checks,
    external,
    hostlocks,
    kernel_health,
    mountns,
    plumbing,
    snapshot,
)
from zdtm.build import BuildError, ensure_built
from zdtm.desc import TestDesc
from zdtm.drivers import Engine, EngineFailure
from zdtm.drivers.base import TreeInfo
from zdtm.drivers.translate import CrOptions, cr_options, missing_features
from zdtm.result import (
    CHECK_FAILED,
    ENGINE_CRASHED,
    ENGINE_ERROR,
    FAIL,
    HARNESS_ERROR,
    KERNEL,
    SKIP,
    TEST_FAIL,
    TIMEOUT,
    Phase,
    PhaseClock,
    Result,
)

FREEZE_TIMEOUT = 20.0
SNAPSHOT_TIMEOUT = 600.0
ENGINE_TIMEOUT = 600.0
CLEANUP_TIMEOUT = 10.0
STOP_SETTLE = 2.0  # seconds a thread detached by the restore may take back into group-stop
OWN_GRACE = 3.0  # seconds an exiting engine helper may take before it counts as a leak
ENGINE_KINDS = {"crashed": ENGINE_CRASHED, "error": ENGINE_ERROR, "timeout": TIMEOUT}

Progress = Callable[[str], None]


@dataclass
class RunOptions:
    """How to run each test (the runner's and the pytest plugin's options)."""

    iters: int = 1
    pre: int = 0
    snaps: str | None = None          # "last"/"each": pre-dumps are restorable snapshots
    lazy: bool = False
    norst: bool = False
    keep_img: bool = False
    workroot: Path | None = None      # parent of the per-test work dirs (default: a temp dir)
    engine_timeout: float = ENGINE_TIMEOUT
    tolerate_taint: bool = False      # a kernel taint present at start is no failure
    notes: list[str] = field(default_factory=list)  # added to every result (e.g. mode switch)


class PhaseTimeout(Exception):
    """An in-process phase ran past its deadline."""


class _Failed(Exception):
    """Internal: stop the run here; the result already says why."""


class _CrFailed(Exception):
    """Internal: a crfail test's pre-dump failed as expected; the C/R part ends."""


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Raise PhaseTimeout inside the block after ``seconds`` (main thread only).

    Outside the main thread Python cannot deliver the timer signal; the block then runs
    without this guard (engine steps keep their own subprocess timeouts).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise PhaseTimeout(f"{what}: no result after {seconds:.0f}s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _problem_lines(problems: list[Any]) -> list[str]:
    return [f"{p.check}: {p.message}" for p in problems]


def _last_verdict(outfile: Path) -> str | None:
    """The test's verdict line (last line mentioning PASS, FAIL or SKIP), if written."""
    try:
        lines = [ln.strip() for ln in outfile.read_text(errors="replace").splitlines()]
    except OSError:
        return None
    for line in reversed(lines):
        if any(word in line for word in ("PASS", "FAIL", "SKIP")):
            return line
    return None


def _tail(path: Path, lines: int = 15) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


class Run:
    """State of one test x flavour run; ``execute()`` drives it and returns the Result."""

    def __init__(self, test: TestDesc, flavor: str, engine: Engine, opts: RunOptions,
                 progress: Progress | None = None) -> None:
        self.test = test
        self.flavor: Flavor = get_flavor(flavor)
        self.engine = engine
        self.opts = opts
        self.progress = progress or (lambda line: None)
        self.result = Result(test=test.name, flavor=flavor, engine=engine.name,
                             notes=list(opts.notes))
        self.workdir: Path | None = None
        self.tmproot: Path | None = None
        self.root_pid = 0
        self.test_pid = 0
        self.ns_pid = 0
        self.baseline_desc: set[int] = set()
        self.clock = PhaseClock(self.result.phase_seconds)
        self.kernel = kernel_health.KernelWatch(tolerate_taint=opts.tolerate_taint)
        self.cgroups0: frozenset[str] = frozenset()
        self.cgroups_seen: set[str] = set()  # cgroups the tree's tasks were seen in
        self.phase = Phase.BUILD  # the phase running now, for harness errors
        self.cr_opts = CrOptions()  # the descriptor's engine options, for this engine
        self.crfail = "crfail" in test.flags  # this engine's dump must fail
        # a crfail test whose dump succeeded: it fails, and is restored and judged once so
        # that the checks and the test itself name the state the dump lost
        self.crfail_dumped = False

    @property
    def phase(self) -> Phase:
        """The phase running now; setting it also times the phases
        (Result.phase_seconds)."""
        return self._phase

    @phase.setter
    def phase(self, value: Phase) -> None:
        self._phase = value
        self.clock.enter(value)

    # ---- entry point -------------------------------------------------------------------

    def execute(self) -> Result:
        """Run every phase; cleanup always runs; never raises for test-caused problems."""
        started = time.monotonic()
        try:
            if self.test.problem:  # an unreadable descriptor fails this test only
                self.result.fail(Phase.BUILD, HARNESS_ERROR, self.test.problem)
                return self.result
            if self._skip_reason():
                return self.result
            self._build()
            why = mountns.enter_private()
            if why:
                self._note(why)
            self.kernel.start()  # before own0: its fd is the harness's until the end
            self.cgroups0 = cgroups.existing()
            with self._host_locks():  # before own0: its fd is the harness's until the end
                own0 = snapshot.own_state()
                self.baseline_desc = set(plumbing.descendants(os.getpid()))
                try:
                    try:
                        self._start()
                        self._iterations()
                        self._stop()
                    except _Failed:
                        pass
                    finally:
                        self._cleanup()
                finally:
                    # whatever the outcome, nothing of the run may be left
                    self._final_leak_check(own0)
                    self._kernel_check(Phase.STOP)
        except _Failed:
            pass
        except Exception as exc:  # noqa: BLE001 - any harness bug becomes a result
            self.result.fail(self.phase, HARNESS_ERROR,
                             f"{type(exc).__name__}: {exc}",
                             traceback.format_exc().splitlines()[-12:])
        finally:
            self.clock.stop()
            self.kernel.close()
            self.result.duration = time.monotonic() - started
        return self.result

    # ---- phases ------------------------------------------------------------------------

    def _skip_reason(self) -> bool:
        t, r = self.test, self.result
        if r.flavor not in t.flavors:
            r.skip(Phase.START,
                   f"flavour {r.flavor} not in the test's flavours {' '.join(t.flavors)}")
        elif self.opts.lazy and "nolazy" in t.flags:
            r.skip(Phase.START, "test is flagged nolazy")
        elif self.opts.norst and "reqrst" in t.flags:
            r.skip(Phase.START, "test is flagged reqrst and --norst was given")
        elif self.engine.performs_cr:
            why = cr_unavailable(self.engine, self.opts, r.flavor)
            if why:
                r.skip(Phase.START, why)
            else:
                self._translate()
        if r.outcome == SKIP:
            return True
        return not external.precheck(t, r)  # arch, start rule, .checkskip

    def _translate(self) -> None:
        """The descriptor's engine options and features, for this engine (or a SKIP)."""
        t, r = self.test, self.result
        self.cr_opts = cr_options(self.engine.name, t)
        missing, notes = missing_features(self.engine, t.feature)
        for note in (*self.cr_opts.notes, *notes):
            self._note(note)
        if self.cr_opts.skip:
            r.skip(Phase.START, self.cr_opts.skip)
        elif missing:
            r.skip(Phase.START, "engine lacks feature(s): " + ", ".join(missing))
        elif self.crfail and t.crfail_unless:
            self._crfail_for_this_engine()

    def _crfail_for_this_engine(self) -> None:
        """A crfail test whose refusal comes from features this engine has is a plain C/R
        test here (the test's own checks then judge the restore)."""
        lacking, notes = missing_features(self.engine, self.test.crfail_unless)
        for note in notes:
            self._note(note)
        if lacking:
            self._note("crfail: the dump must fail, the engine lacks " + ", ".join(lacking))
        else:
            self.crfail = False
            self._note(f"not crfail with the {self.engine.name} engine: it has "
                       + ", ".join(self.test.crfail_unless))

    def _build(self) -> None:
        try:
            ensure_built([self.test], with_nsinit=self.flavor.uses_ns)
        except BuildError as exc:
            self.result.fail(Phase.BUILD, HARNESS_ERROR, "build failed", str(exc).splitlines())
            raise _Failed from None

    def _make_workdir(self) -> Path:
        # uns runs the test as uid 100000: every directory above the work dir must be
        # searchable by others, whatever the umask
        if self.opts.workroot is not None:
            base = Path(self.opts.workroot)
            _make_searchable(base)
        else:
            base = self.tmproot = Path(tempfile.mkdtemp(prefix="zdtm-"))
            os.chmod(base, 0o755)
        name = f"{self.test.name.replace('/', '-')}-{self.result.flavor}-"
        workdir = Path(tempfile.mkdtemp(prefix=name, dir=base))
        os.chmod(workdir, 0o755)
        try:
            self.flavor.prepare(workdir, self.test.deps)
        except StartError:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        (workdir / "img").mkdir(mode=0o700)
        return workdir

    def _start(self) -> None:
        self.phase = Phase.START
        try:
            self.workdir = self._make_workdir()
        except StartError as exc:  # the flavour cannot use this place
            self.result.fail(Phase.START, HARNESS_ERROR, exc.message)
            raise _Failed from None
        self.result.workdir = str(self.workdir)
        self.kernel.tokens.append(str(self.workdir))
        argv = external.start_argv(self.test)
        self.progress(f"{self.result.ident}: start")
        # the suite's --post-start hook runs beside the start (a test may wait for it)
        post_start = external.HookCall(self.test, "--post-start", cwd=self.workdir, env={})
        try:
            st = self.flavor.start(argv, self.workdir, f"{self.test.short}.pid",
                                   float(self.test.timeout), self.workdir / "start.log")
        except StartError as exc:
            if exc.kind == "skip":
                verdict = _last_verdict(self.workdir / f"{self.test.short}.out")
                self.result.skip(Phase.START, f"test says: {verdict or exc.message}")
                raise _Failed from None
            kind = {"timeout": TIMEOUT, "setup": HARNESS_ERROR}.get(exc.kind, TEST_FAIL)
            self.result.fail(Phase.START, kind, exc.message.splitlines()[0],
                             exc.message.splitlines()[1:] + self._outfile_tail())
            raise _Failed from None
        finally:
            hook_ok = post_start.finish(self.result)
        self.root_pid, self.test_pid, self.ns_pid = st.root_pid, st.test_pid, st.ns_pid
        self.engine.attach(TreeInfo(self.result.flavor, self.flavor.tree_root(self.workdir)))
        if not hook_ok:
            raise _Failed

    def _iterations(self) -> None:
        cr = self.engine.performs_cr
        if not cr and not any(n.startswith("nocr") for n in self.result.notes):
            # the checks then compare two snapshots of the same frozen tree
            self._note("nocr: no checkpoint/restore")
        for i in range(1, self.opts.iters + 1):
            label = f"{self.result.ident} iter {i}/{self.opts.iters}"
            own_a = snapshot.own_state()
            # tasks the test keeps stopped stay stopped when the tree is resumed
            keep = plumbing.stopped_ids(self.root_pid)
            held = keep  # of those, the ones still stopped when S1 is taken
            if cr:
                try:
                    snaps = self._snapshots(i, keep) if self.opts.snaps else []
                    parent = snaps[-1][0] if snaps else self._pre_dumps(i)
                except _CrFailed:
                    return  # the expected dump failure ended the C/R part
                self._hook("--pre-dump")
                frozen = self._freeze(Phase.DUMP)
                s0 = self._capture("S0", keep)
                if not self._dump(i, parent):
                    return  # crfail: the expected dump failure ended the C/R part
                if not self.opts.norst:
                    self._restore_snapshots(i, frozen, snaps, keep, s0)
                    held = keep & self._restore(i, frozen, label)
            else:
                self._freeze(Phase.CHECK)
                s0 = self._capture("S0", keep)
            s1 = self._capture("S1", held)
            s1, allowed = allowances.reconcile(s0, s1, self.engine.allowances())
            self.result.allowed += [f"iteration {i}: {d}" for d in allowed]
            problems = self._compare(s0, s1)
            plumbing.thaw(plumbing.tree(self.root_pid), keep)
            if cr and not self.opts.norst:
                self._hook("--post-restore", self._imgdir(f"{i}-dump"))
            if cr and self.opts.lazy:
                self._engine_step(Phase.RESTORE, self.engine.finish, self.opts.engine_timeout)
            problems += self._own_problems(own_a)
            self._kernel_check(Phase.CHECK, f"iteration {i}: ")
            if problems:
                self.result.fail(Phase.CHECK, CHECK_FAILED,
                                 f"iteration {i}: {len(problems)} problem(s): "
                                 f"{problems[0].check}: {problems[0].message}",
                                 _problem_lines(problems))
                raise _Failed
            self.result.iterations = i
            self.progress(f"{label}: checks ok")
            if self.crfail_dumped:
                return  # the test's own verdict at stop says the rest

    def _pre_dumps(self, i: int) -> Path | None:
        parent = None
        for k in range(1, self.opts.pre + 1):
            self.phase = Phase.PRE_DUMP
            d = self._imgdir(f"{i}-pre{k}")
            res = self._pre_dump_step(self.engine.pre_dump, self.root_pid, d,
                                      parent_images=parent, opts=self.cr_opts.dump,
                                      timeout=self.opts.engine_timeout)
            self._timing(f"iter {i}: pre-dump {k}", res)
            self._hook("--post-pre-dump", d)
            if not external.notify_pre_dump(self.test, self.test_pid, self.result):
                raise _Failed
            parent = d
        return parent

    def _snapshots(self, i: int, keep: set[int]) -> list[tuple[Path, Any]]:
        """--snaps: instead of pre-dumps, full dumps that leave the tree running and track
        memory, each against the one before. With "each", the harness freezes the tree
        and captures it first, and thaws it after, also when the snapshot fails (a crfail
        test's expected refusal); ``keep``: the tasks the test keeps stopped. Returns
        (image, S0 of the snapshot or None) per snapshot."""
        taken: list[tuple[Path, Any]] = []
        for k in range(1, self.opts.pre + 1):
            d = self._imgdir(f"{i}-snap{k}")
            s0 = None
            if self.opts.snaps == "each":
                self._freeze(Phase.PRE_DUMP)
                s0 = self._capture(f"S0 of snapshot {k}", keep)
            self.phase = Phase.PRE_DUMP
            try:
                res = self._pre_dump_step(self.engine.snapshot, self.root_pid, d,
                                          parent_images=taken[-1][0] if taken else None,
                                          opts=self.test.opts,
                                          timeout=self.opts.engine_timeout)
            finally:
                if s0 is not None:
                    plumbing.thaw(plumbing.tree(self.root_pid), keep)
            self._timing(f"iter {i}: snapshot {k}", res)
            taken.append((d, s0))
        return taken

    def _restore_snapshots(self, i: int, frozen: list[int], snaps: list[tuple[Path, Any]],
                           keep: set[int], last: Any) -> None:
        """--snaps each: restore every snapshot in turn (the dumped tree is gone), compare
        it with its own S0 while stopped, and kill it; the final dump is restored after.
        Its files on disk are as the tree left them: their disk attributes are expected as
        in ``last`` (the final dump's S0)."""
        for k, (d, s0) in enumerate(snaps, 1):
            if s0 is None:
                continue
            self._wait_dumped_gone(frozen)
            self.phase = Phase.RESTORE
            self.root_pid = self._engine_step(
                Phase.RESTORE, self.engine.restore, d, leave_stopped=self.engine.can_leave_stopped,
                opts=(*self.test.opts, *self.test.ropts), timeout=self.opts.engine_timeout,
                lazy=False)
            # as _restore: the tasks the restore left stopped, before the harness stops all
            held = keep & plumbing.stopped_ids(self.root_pid, settle=STOP_SETTLE)
            frozen = self._freeze(Phase.RESTORE)
            s0 = snapshot.with_disk_of(s0, last)
            s1, allowed = allowances.reconcile(s0, self._capture(f"S1 of snapshot {k}", held),
                                               self.engine.allowances())
            self.result.allowed += [f"iteration {i} snapshot {k}: {d}" for d in allowed]
            problems = self._compare(s0, s1)
            left = plumbing.kill_tree(frozen, CLEANUP_TIMEOUT)
            plumbing.reap_zombie_children()
            if problems or left:
                lines = _problem_lines(problems) + [f"restored task {p} would not die"
                                                    for p in left]
                self.result.fail(Phase.CHECK, CHECK_FAILED, f"iteration {i} snapshot {k}: "
                                 f"{len(lines)} problem(s): {lines[0]}", lines)
                raise _Failed
            self.progress(f"{self.result.ident} iter {i}: snapshot {k} restored, checks ok")

    def _timing(self, what: str, res: Any) -> None:
        """One engine step's time, and the engine's frozen figures when it gives them:
        on the console and in the result."""
        text = f"{what} {res.seconds:.2f}s"
        st = getattr(res, "stats", None) or {}
        if st:
            text += (f" (frozen {st['frozen_s'] * 1000:.1f} ms, {st['pages_frozen']:.0f} of "
                     f"{st['pages_total']:.0f} pages written while frozen)")
        self.result.timings.append(text)
        self.progress(f"{self.result.ident} {text}")

    def _dump(self, i: int, parent: Path | None) -> bool:
        """Dump; False when a crfail test's dump failed as expected."""
        self.phase = Phase.DUMP
        d = self._imgdir(f"{i}-dump")
        crfail = self.crfail
        try:
            res = self.engine.dump(self.root_pid, d, leave_running=self.opts.norst,
                                   parent_images=parent, opts=self.cr_opts.dump,
                                   timeout=self.opts.engine_timeout)
        except EngineFailure as exc:
            if crfail and exc.kind == "error":
                self._note(f"dump failed as expected (crfail): {exc.message}")
                plumbing.thaw(plumbing.tree(self.root_pid))
                return False
            self._engine_failed(Phase.DUMP, exc)
        self._timing(f"iter {i}: dump", res)
        if crfail:
            self.result.fail(Phase.DUMP, CHECK_FAILED, "dump succeeded but the test is crfail")
            self._note("crfail dump succeeded: the tree is restored, checked and stopped "
                       "once, so that what the dump lost is named")
            self.crfail, self.crfail_dumped = False, True
        return True

    def _restore(self, i: int, frozen: list[int], label: str) -> set[int]:
        """Restore iteration i's dump and stop the tree; the tasks (own-namespace pids) the
        restore itself left in group-stop, seen before the harness stops the rest."""
        self.phase = Phase.RESTORE
        self._wait_dumped_gone(frozen)
        d = self._imgdir(f"{i}-dump")
        self._hook("--pre-restore", d)
        stopped = self.engine.can_leave_stopped
        t0 = time.monotonic()
        self.root_pid = self._engine_step(
            Phase.RESTORE, self.engine.restore, d, leave_stopped=stopped,
            opts=self.cr_opts.restore, timeout=self.opts.engine_timeout,
            lazy=self.opts.lazy)
        if not plumbing.pid_alive(self.root_pid):
            self.result.fail(Phase.RESTORE, ENGINE_ERROR,
                             f"restore reported root pid {self.root_pid}, which is not alive")
            raise _Failed
        if not stopped:
            self._note(f"{self.engine.name} cannot leave the restored tree stopped: S1 was "
                       "taken after it ran briefly")
        left_stopped = plumbing.stopped_ids(self.root_pid, settle=STOP_SETTLE)
        self._freeze(Phase.RESTORE)
        try:
            self.test_pid = self.flavor.test_pid_after_restore(self.root_pid, self.ns_pid)
        except StartError as exc:
            self.result.fail(Phase.RESTORE, ENGINE_ERROR, exc.message)
            raise _Failed from None
        self.progress(f"{label}: restore {time.monotonic() - t0:.2f}s")
        return left_stopped

    def _wait_dumped_gone(self, frozen: list[int]) -> None:
        """The engine killed the dumped tree; reap it so its pids are free again."""
        left = plumbing.wait_gone(frozen, CLEANUP_TIMEOUT)
        if left:
            self.result.fail(Phase.DUMP, ENGINE_ERROR,
                             f"dumped tasks {left} still alive after the dump")
            raise _Failed

    def _stop(self) -> None:
        self.phase = Phase.STOP
        outfile = self.workdir / f"{self.test.short}.out" if self.workdir else Path("/")
        try:
            os.kill(self.test_pid, signal.SIGTERM)
        except ProcessLookupError:
            self.result.fail(Phase.STOP, TEST_FAIL, f"test process {self.test_pid} is gone "
                                                    "before SIGTERM", self._outfile_tail())
            raise _Failed from None
        limit = float(self.test.timeout)
        # the test exits after writing its verdict; what it leaves running is for cleanup
        left = plumbing.wait_gone([self.test_pid], limit)
        verdict = _last_verdict(outfile)
        if left or verdict is None:
            what = f"tasks {left} still running" if left else "no verdict in the outfile"
            self.result.fail(Phase.STOP, TIMEOUT,
                             f"{what} {limit:.0f}s after SIGTERM", self._outfile_tail())
            raise _Failed
        if "PASS" in verdict:
            return
        if "SKIP" in verdict:
            self.result.skip(Phase.STOP, f"test says: {verdict}")
            return
        self.result.fail(Phase.STOP, TEST_FAIL, verdict, self._outfile_tail())
        raise _Failed

    def _cleanup(self) -> None:
        """Always: stop engine helpers, kill what is left of the tree, remove the work dir."""
        self.engine.close()
        for note in self.engine.take_notes():
            self._note(note)
        ours = [p for p in plumbing.descendants(os.getpid()) if p not in self.baseline_desc]
        roots = [p for p in (self.root_pid, self.test_pid) if p] + ours
        self._see_cgroups(roots)
        left = plumbing.kill_tree(roots, CLEANUP_TIMEOUT)
        plumbing.reap_zombie_children()
        if left:
            self.result.fail(Phase.STOP, HARNESS_ERROR, f"could not kill tasks {left}")
        if self.workdir is not None:
            self._suite_cleanup(self.workdir)
        keep_logs = self.result.outcome == FAIL and self.workdir is not None
        if self.workdir is not None and not self.opts.keep_img:
            if keep_logs:
                _drop_images(self.workdir)
                self._note(f"failed run: logs kept in {self.workdir}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.result.workdir = None
        if self.tmproot is not None and not self.opts.keep_img and not keep_logs:
            shutil.rmtree(self.tmproot, ignore_errors=True)

    def _suite_cleanup(self, workdir: Path) -> None:
        """The suite's --clean hook (after the test is gone, as CRIU's runner does), then
        whatever that hook left running, and whatever the test or a hook left mounted."""
        self._hook("--clean", fatal=False)
        plumbing.kill_tree([p for p in plumbing.descendants(os.getpid())
                            if p not in self.baseline_desc], CLEANUP_TIMEOUT)
        external.unmount_left(workdir, self.result)

    def _final_leak_check(self, own0: Any) -> None:
        """After cleanup the harness must hold exactly the fds, children and mounts it had
        before; mounts the run left (a test of the h flavour mounts in the harness's
        namespace) are reported, then removed."""
        plumbing.reap_zombie_children()
        own1 = snapshot.own_state()
        problems = checks.compare_own(own0, own1)
        leftovers = [p for p in plumbing.descendants(os.getpid()) if p not in self.baseline_desc]
        lines = _problem_lines(problems) + [f"left behind: process {p}" for p in leftovers]
        lines += cgroups.remove_new(self.cgroups_seen, self.cgroups0)
        left_mounts = set(own1.mounts - own0.mounts)
        if left_mounts:
            failed = mountns.remove(left_mounts)
            lines += failed or [f"the {len(left_mounts)} mount(s) left behind were removed"]
        if lines:
            self.result.fail(Phase.STOP, CHECK_FAILED, f"after cleanup: {lines[0]}", lines)

    def _see_cgroups(self, pids: list[int]) -> None:
        """Remember the cgroups of these tasks (new ones are removed after the run)."""
        for pid in pids:
            for p in plumbing.tree(pid):
                self.cgroups_seen |= cgroups.of_task(p)

    def _kernel_check(self, phase: Phase, prefix: str = "") -> None:
        """New taint or kernel log lines of trouble fail the run with the kind ``kernel``."""
        lines = self.kernel.poll()
        for note in self.kernel.notes:
            self._note(note)
        if lines:
            self.result.fail(phase, KERNEL, f"{prefix}{lines[0]}", lines)
            if phase == Phase.CHECK:
                raise _Failed

    # ---- helpers -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _host_locks(self) -> Iterator[None]:
        """Hold the host resources this test needs by number in this flavour, from start
        to cleanup (other runs on the machine wait; a wait is noted)."""
        names = hostlocks.needed(self.test.flags, self.result.flavor)
        try:
            held = hostlocks.hold(names)
        except TimeoutError as exc:
            self.result.fail(Phase.START, HARNESS_ERROR, f"another run kept a host resource: {exc}")
            raise _Failed from None
        with held:
            if held.waited >= 1.0:
                self._note(f"waited {held.waited:.0f}s for the host {' '.join(names)} lock")
            yield

    def _note(self, text: str) -> None:
        if text not in self.result.notes:
            self.result.notes.append(text)

    def _hook(self, arg: str, images: Path | None = None, *, fatal: bool = True) -> None:
        """Run the suite's NAME.hook ARG (if any) in the work dir; its failure fails the run."""
        env = {"ZDTM_TEST_PID": str(self.test_pid)}
        if images is not None:
            env["ZDTM_IMG_DIR"] = str(images)
        assert self.workdir is not None
        if not external.run_hook(self.test, arg, cwd=self.workdir, result=self.result,
                                 env=env) and fatal:
            raise _Failed

    def _imgdir(self, name: str) -> Path:
        assert self.workdir is not None
        d = self.workdir / "img" / name
        d.mkdir(mode=0o700, exist_ok=True)
        return d

    def _outfile_tail(self) -> list[str]:
        if self.workdir is None:
            return []
        out = _tail(self.workdir / f"{self.test.short}.out")
        return [f"outfile: {ln}" for ln in out]

    def _engine_failed(self, phase: Phase, exc: EngineFailure) -> None:
        self.result.fail(phase, ENGINE_KINDS[exc.kind], exc.message,
                         [f"engine: {ln}" for ln in exc.log.splitlines()])
        raise _Failed

    def _pre_dump_step(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """A pre-dump or snapshot step; a crfail test's refusal there is the expected dump
        failure (_CrFailed), as at the dump."""
        try:
            return fn(*args, **kw)
        except EngineFailure as exc:
            if self.crfail and exc.kind == "error":
                self._note(f"pre-dump failed as expected (crfail): {exc.message}")
                raise _CrFailed from None
            self._engine_failed(Phase.PRE_DUMP, exc)

    def _engine_step(self, phase: Phase, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except EngineFailure as exc:
            self._engine_failed(phase, exc)

    def _freeze(self, phase: Phase) -> list[int]:
        try:
            return plumbing.freeze(self.root_pid, FREEZE_TIMEOUT)
        except plumbing.TaskError as exc:
            self.result.fail(phase, TIMEOUT, f"freeze: {exc}")
            raise _Failed from None

    def _capture(self, label: str, held: set[int] | None = None) -> Any:
        """Snapshot the stopped tree; ``held``: the tasks stopped by the test (see
        snapshot.capture)."""
        self.phase = Phase.CHECK
        try:
            with deadline(SNAPSHOT_TIMEOUT, f"snapshot {label}"):
                self._see_cgroups([self.root_pid])
                return snapshot.capture(self.root_pid, ns=self.flavor.uses_ns, held=held)
        except PhaseTimeout as exc:
            self.result.fail(Phase.CHECK, TIMEOUT, str(exc))
            raise _Failed from None
        except (OSError, ValueError) as exc:
            # the tree is not what it should be (a task vanished, /proc unreadable)
            self.result.fail(Phase.CHECK, CHECK_FAILED, f"snapshot {label} failed: {exc}")
            raise _Failed from None

    def _compare(self, s0: Any, s1: Any) -> list[Any]:
        try:
            with deadline(SNAPSHOT_TIMEOUT, "compare S0/S1"):
                return list(checks.compare(s0, s1))
        except PhaseTimeout as exc:
            self.result.fail(Phase.CHECK, TIMEOUT, str(exc))
            raise _Failed from None

    def _own_problems(self, before: Any) -> list[Any]:
        """The harness's own fds and children: the same as before the iteration.

        The restored tree's root is the one new child allowed (in ns it has a new pid).
        Engine helpers re-parented to us (we are their subreaper) may still be exiting:
        zombies are reaped and the comparison is retried for a short grace period, so only
        what stays is reported.
        """
        end = time.monotonic() + OWN_GRACE
        while True:
            plumbing.reap_zombie_children()
            problems = list(checks.compare_own(before, snapshot.own_state(),
                                                 expected=[self.root_pid]))
            if not problems or time.monotonic() > end:
                return problems
            time.sleep(0.1)


def cr_unavailable(engine: Engine, opts: RunOptions, flavor: str = "h") -> str | None:
    """Why ``engine`` cannot run the C/R steps ``opts`` ask for here; None when it can.

    The steps are engine features: dump and restore (dump only with --norst), pre_dump
    with --pre, lazy_pages with --lazy-pages (and lazy_pages_ns / lazy_pages_uns in those
    flavours), flavor_ns / flavor_uns for those flavours; an
    engine refuses one by reporting it false (with a reason).
    """
    why = engine.available()
    if why:
        return f"{engine.name} engine unavailable: {why}"
    steps = ["dump"] + ([] if opts.norst else ["restore"])
    steps += [] if flavor == "h" else [f"flavor_{flavor}"]
    steps += (["pre_dump"] if opts.pre else []) + (["lazy_pages"] if opts.lazy else [])
    steps += [f"lazy_pages_{flavor}"] if opts.lazy and flavor != "h" else []
    refused = engine.check().refused(steps)
    if refused:
        return f"{engine.name} engine cannot yet: " + ", ".join(refused)
    return None


def run_test(test: TestDesc, flavor: str, engine: Engine, opts: RunOptions,
             progress: Progress | None = None) -> Result:
    """Run one test in one flavour with ``engine``; see Run."""
    return Run(test, flavor, engine, opts, progress).execute()


def prepare_process() -> None:
    """Once per harness process: become the subreaper of restored trees."""
    plumbing.set_subreaper()


def _drop_images(workdir: Path) -> None:
    """Remove the image directories of a failed run; its logs beside them stay."""
    img = workdir / "img"
    for entry in img.iterdir() if img.is_dir() else []:
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def _make_searchable(path: Path) -> None:
    """Create path and its missing parents, each mode 0755 (the ones made here only)."""
    if path.is_dir():
        return
    _make_searchable(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return  # made by a parallel job meanwhile
    os.chmod(path, 0o755)
