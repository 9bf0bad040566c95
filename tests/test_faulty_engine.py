"""Self-tests of the harness: a deliberately faulty engine must make the right check fail,
with a message naming the fd/VMA/pid, and leave nothing behind.

The runs go through the real lifecycle (zdtm/lifecycle.py) with the faulty driver of
tests/faulty_engine.py plugged in. The fake mode needs no working engine (the lifecycle runs
with --norst, the fault is applied where the dump would have left the tree); the wrapped mode
puts the fault after a real restore by the bundled engine and runs when that engine can
dump and restore here.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import faulty_engine
import pytest
from faulty_engine import EngineFault, FaultyEngine, lsm_unavailable

from tests.fake_support import open_workroot
from zdtm import ROOT_DIR, checks, lifecycle, plumbing, snapshot
from zdtm.desc import TestDesc, discover
from zdtm.drivers.bundled import BundledEngine
from zdtm.proc import PAGE_SIZE
from zdtm.result import CHECK_FAILED, FAIL, KERNEL, PASS, SKIP, TIMEOUT, Kind, Result

SUBJECT = "static/mem_anon"  # one process, private anonymous data, stdout/err on a file


@pytest.fixture(scope="module")
def subject() -> TestDesc:
    lifecycle.prepare_process()
    return next(t for t in discover() if t.name == SUBJECT)


@pytest.fixture
def clean() -> Iterator[Path]:
    """A work root (below a dir uid 100000 can enter, for uns; pytest's own tmp dirs are
    0700); afterwards: no new child process, fd or mount, no image left in it (a failed
    run keeps its work dir for its logs, never its images)."""
    before = snapshot.own_state()
    kids = set(plumbing.descendants(os.getpid()))
    with open_workroot("zdtm-selftest-") as root:
        yield root
        assert [p for p in plumbing.descendants(os.getpid()) if p not in kids] == []
        assert checks.compare_own(before, snapshot.own_state()) == []
        assert not root.exists() or [p for p in root.glob("*/img/*") if p.is_dir()] == []


def _run(test: TestDesc, engine: FaultyEngine, workroot: Path, flavor: str = "h",
         **opts: object) -> Result:
    options = lifecycle.RunOptions(workroot=workroot, **opts)
    return lifecycle.Run(test, flavor, engine, options).execute()


def _problems(result: Result) -> list[str]:
    return [line for line in result.details
            if line.split(":", 1)[0] in ("tree", "task", "rseq", "fds", "maps", "memory", "ns",
                                           "sharing", "taskattrs", "files", "tty", "ipc",
                                           "leak")]


def _expect(result: Result, check: str) -> list[str]:
    """The run failed in the check phase, from ``check`` and from no other check."""
    assert result.outcome == FAIL, result.summary()
    assert (result.phase, result.kind) == ("check", CHECK_FAILED), result.summary()
    problems = _problems(result)
    assert problems and {p.split(":", 1)[0] for p in problems} == {check}, problems
    assert result.message.startswith(f"iteration 1: {len(problems)} problem(s): {check}: ")
    return problems


def _check_fault(fault: str, result: Result, record: dict) -> None:
    pid, inner = record["pid"], record["inner_pid"]
    who = f"pid {inner} (mem_anon)" if pid == inner else f"pid {inner} [{pid}] (mem_anon)"
    if fault == "leak-fd":
        problems = _expect(result, "fds")
        assert problems == [(f"fds: {who}: fd {record['fd']} leaked after restore: "
                            f"{record['path']} (flags O_RDONLY, pos 0)")]
    elif fault == "move-offset":
        problems = _expect(result, "fds")
        line = (f"fds: {who}: fd {record['fd']} {record['path']}: "
                f"pos {record['pos_before']} -> {record['pos_after']}")
        assert line in problems
    elif fault == "flip-byte":
        problems = _expect(result, "memory")
        start, end = record["vma"]
        page = record["addr"] & ~(PAGE_SIZE - 1)
        assert problems == [(f"memory: {who}: VMA {start:x}..{end:x} rw-p anon: "
                            f"page {page:#x} differs (data before, data after)")]
    elif fault == "drop-vma":
        problems = _expect(result, "maps")
        start, end = record["vma"]
        assert problems == [f"maps: {who}: VMA {start:x}..{end:x} rw-p anon missing after restore"]
    else:
        raise AssertionError(fault)


@pytest.mark.parametrize("flavor", ["h", "ns", "uns"])
@pytest.mark.parametrize("fault", ["leak-fd", "move-offset", "flip-byte", "drop-vma"])
def test_fake_fault_fails_the_right_check(fault: str, flavor: str, subject: TestDesc,
                                          clean: Path, tmp_path: Path) -> None:
    engine = FaultyEngine(fault, tmp_path)
    result = _run(subject, engine, clean, flavor, norst=True)
    assert engine.record["fault"] == fault
    _check_fault(fault, result, engine.record)


@pytest.mark.parametrize("flavor", ["ns", "uns"])
def test_wrong_ppid_fails_the_tree_check(flavor: str, clean: Path, tmp_path: Path) -> None:
    """The middle task of init -> fork_child -> child dies; the child ends up under init."""
    test = next(t for t in discover() if t.name == "static/fork_child")
    engine = FaultyEngine("wrong-ppid", tmp_path)
    result = _run(test, engine, clean, flavor, norst=True)
    rec = engine.record
    assert result.outcome == FAIL and (result.phase, result.kind) == ("check", CHECK_FAILED)
    problems = _problems(result)
    child = f"pid {rec['inner_pid']} [{rec['pid']}] (fork_child)"
    parent = f"pid {rec['ppid_before']} [{rec['killed']}] (fork_child)"
    assert f"tree: {child}: ppid {rec['ppid_before']} -> 1" in problems
    assert f"tree: {parent}: state T -> Z" in problems
    assert rec["ppid_after"] == 1
    # the dead parent lost its fds and memory, and the child's shared pipe/descriptions are
    # no longer shared with it; nothing of the tree's init changed
    assert all(p.split(": ", 2)[1] in (parent, child) for p in problems), problems


def test_hanging_engine_is_killed(subject: TestDesc, clean: Path, tmp_path: Path) -> None:
    engine = FaultyEngine("hang", tmp_path)
    result = _run(subject, engine, clean, norst=True, engine_timeout=2.0)
    assert result.outcome == FAIL, result.summary()
    assert (result.phase, result.kind) == ("dump", TIMEOUT), result.summary()
    assert "no result after 2s, killed" in result.message
    # the engine's own process group is gone too (checked by ``clean``): nothing hangs on


def test_fake_engine_refuses_a_real_dump(subject: TestDesc, clean: Path, tmp_path: Path) -> None:
    """Without --norst the fake engine cannot pretend: the run fails in dump, clearly."""
    result = _run(subject, FaultyEngine("leak-fd", tmp_path), clean)
    assert (result.outcome, result.phase) == (FAIL, "dump"), result.summary()
    assert "cannot kill and re-create a tree" in result.message


@pytest.fixture(scope="module")
def bundled(subject: TestDesc, tmp_path_factory: pytest.TempPathFactory) -> BundledEngine:
    """The bundled engine, once it passes a control run of the subject without a fault:
    only then does a failure of the faulty run prove the checks, not an engine bug."""
    engine = BundledEngine()
    why = engine.available()
    if why:
        pytest.skip(f"bundled engine cannot dump/restore here: {why}")
    root = tmp_path_factory.mktemp("control")
    control = lifecycle.Run(subject, "h", engine, lifecycle.RunOptions(workroot=root)).execute()
    if control.outcome != PASS:
        pytest.skip(f"control run without a fault does not pass yet: {control.summary()}")
    return engine


@pytest.mark.parametrize("fault", ["leak-fd", "move-offset", "flip-byte", "drop-vma"])
def test_fault_after_real_restore(fault: str, subject: TestDesc, bundled: BundledEngine,
                                  clean: Path, tmp_path: Path) -> None:
    engine = FaultyEngine(fault, tmp_path, inner=bundled)
    result = _run(subject, engine, clean)
    assert engine.record, f"the fault was never applied: {result.summary()}"
    _check_fault(fault, result, engine.record)


def test_dropped_inotify_watch_after_real_restore(clean: Path, tmp_path: Path) -> None:
    """A restore that loses an inotify watch fails the fds check, which names the watch
    line (static/inotify carries the feature the fake engine lacks: a real C/R here)."""
    lifecycle.prepare_process()
    test = next(t for t in discover() if t.name == "static/inotify")
    engine = FaultyEngine("drop-watch", tmp_path, inner=BundledEngine())
    result = _run(test, engine, clean)
    assert engine.record, f"the fault was never applied: {result.summary()}"
    problems = _expect(result, "fds")
    assert any(f"fd {engine.record['fd']} anon_inode:inotify" in p
               and "fdinfo lost 'inotify wd:" in p for p in problems), problems


def test_socket_byte_taken_after_real_restore(clean: Path, tmp_path: Path) -> None:
    """A restore that takes a byte out of a unix stream socket's queue fails the files
    check, which names the fd and its queued bytes before and after (static/unix_socketpair
    carries a feature the fake engine lacks: a real C/R here)."""
    lifecycle.prepare_process()
    test = next(t for t in discover() if t.name == "static/unix_socketpair")
    engine = FaultyEngine("take-socket-byte", tmp_path, inner=BundledEngine())
    result = _run(test, engine, clean)
    rec = engine.record
    assert rec, f"the fault was never applied: {result.summary()}"
    problems = _expect(result, "files")
    change = f"queued bytes {rec['queued']} -> {rec['queued'] - 1}"
    assert any(f"fd {rec['fd']} socket[" in p and change in p for p in problems), problems


def test_hang_after_real_restore(subject: TestDesc, bundled: BundledEngine, clean: Path,
                                 tmp_path: Path) -> None:
    """The restore step hangs with a restored, stopped tree in place: the deadline kills
    the engine, and the lifecycle's cleanup still removes the restored tree (``clean``)."""
    engine = FaultyEngine("hang", tmp_path, inner=bundled)
    result = _run(subject, engine, clean, engine_timeout=8.0)
    assert result.outcome == FAIL, result.summary()
    assert (result.phase, result.kind) == ("restore", TIMEOUT), result.summary()
    assert "no result after 8s, killed" in result.message


def test_kernel_log_line_fails_with_kind_kernel(subject: TestDesc, clean: Path,
                                                tmp_path: Path) -> None:
    """A WARNING line written into /dev/kmsg mid-test (by the fault, carrying the run's
    token) fails the run with the kind ``kernel``, and the line is in the report."""
    engine = FaultyEngine("kmsg-warning", tmp_path)
    result = _run(subject, engine, clean, norst=True)
    assert result.outcome == FAIL, result.summary()
    assert (result.phase, result.kind) == ("check", KERNEL), result.summary()
    line = engine.record["line"]
    assert result.message.startswith("iteration 1: kernel log (user space, seq ")
    assert result.message.endswith(line)
    assert any(d.endswith(line) for d in result.details), result.details


# fault -> (subject test, the one check that must fail, text one of its problems contains)
PROPERTY_FAULTS = {
    "unshare-files": ("static/shared_tables", "sharing", "fd table (CLONE_FILES) files[pid "),
    "unshare-fs": ("static/shared_tables", "sharing", "fs info (CLONE_FS) fs[pid "),
    "break-cow": ("static/fork_child", "sharing", "private pages shared copy-on-write before"),
    "set-dumpable": (SUBJECT, "taskattrs", "dumpable 1 -> 0"),
    "set-subreaper": (SUBJECT, "taskattrs", "child_subreaper 0 -> 1"),
    "set-pdeathsig": (SUBJECT, "taskattrs", "pdeathsig 0 -> 12"),
    "thp-disable": (SUBJECT, "taskattrs", "thp_disable no -> yes"),
    "timer-slack": (SUBJECT, "taskattrs", "timer_slack_ns 50000 -> 123457"),
    "oom-score": (SUBJECT, "taskattrs", "oom_score_adj 0 -> 345"),
    "ioprio": (SUBJECT, "taskattrs", "-> class 3 level 0"),
    "chmod-file": ("static/file_unlinked", "files", "mode 0o600 -> 0o644"),
    "chown-file": ("static/file_unlinked", "files", "owner uid:gid 0:0 -> 1:0"),
    "touch-file": ("static/file_unlinked", "files", ": mtime "),
    "grow-file": ("static/file_unlinked", "files", "size 20000 -> 20001"),
    "punch-hole": ("static/file_unlinked", "files", "data layout 0-20000 -> 4096-20000"),
    "set-owner": ("static/file_unlinked", "files", "owner absent -> pid pid "),
    "set-sig": ("static/file_unlinked", "files", "owner signal absent -> 10"),
    "set-async": ("static/fork_child", "fds", "|O_ASYNC"),
    "grow-pipe": ("static/fork_child", "files", "pipe size 65536 -> 131072"),
    "take-pipe-byte": ("static/pipe_data", "files", "queued bytes 3000 -> 2999"),
    "set-winsize": ("static/tty_state", "tty", "winsize 33x77 (0x0 px) -> 12x34 (0x0 px)"),
    "set-termios": ("static/tty_state", "tty", "termios iflag "),
    "set-nnp": (SUBJECT, "task", "NoNewPrivs 0 -> 1"),
    "renice": (SUBJECT, "task", ": nice "),  # the niceness pytest runs with, +-7
    "sched-batch": (SUBJECT, "task", "policy 0 -> 3"),
    "write-file": ("static/file_unlinked", "files", "content sha256 "),
    "rename-unlinked": ("static/file_unlinked", "fds", "/fault-renamed (deleted)"),
    "drop-ctty": ("static/tty_job", "tty", "controlling tty tty[pid "),
    "set-fgpgrp": ("static/tty_job", "tty", "foreground pgrp "),
    "membarrier-register": (SUBJECT, "taskattrs", "membarrier private expedited no -> yes"),
    "membarrier-global": (SUBJECT, "taskattrs", "membarrier global expedited no -> yes"),
}


def _membarrier_registrations_visible() -> bool:
    query = ctypes.CDLL(None, use_errno=True).syscall(324, 0, 0, 0)  # MEMBARRIER_CMD_QUERY
    return query >= 0 and bool(query & (1 << 9))


@pytest.mark.parametrize("fault", sorted(PROPERTY_FAULTS))
def test_property_fault_fails_exactly_its_check(fault: str, clean: Path,
                                                tmp_path: Path) -> None:
    """Each fault changes one property the new checks watch; exactly that check fails,
    naming the process (and fd) and the value before and after."""
    name, check, text = PROPERTY_FAULTS[fault]
    if fault == "membarrier-global" and not _membarrier_registrations_visible():
        pytest.skip("membarrier QUERY lacks GET_REGISTRATIONS (before 6.6): the global "
                    "registration is not visible")
    test = next(t for t in discover() if t.name == name)
    engine = FaultyEngine(fault, tmp_path)
    result = _run(test, engine, clean, norst=True)
    assert engine.record["fault"] == fault
    problems = _expect(result, check)
    who = f"pid {engine.record['inner_pid']} ("
    assert any(who in p and text in p for p in problems), problems


def _ipc_semval_problems(result: Result, record: dict) -> None:
    """Exactly the ipc check fails, naming the set, its values and its last pids."""
    problems = _expect(result, "ipc")
    where = f"ipc: ipc[pid 1]: sem {record['semid']}: "
    assert problems == [(f"{where}last pids none, pid 3, pid 3, pid 3, outside -> outside, "
                        "pid 3, pid 3, pid 3, outside"),
                        f"{where}values 0 1 7 32767 3 -> 1 1 7 32767 3"], problems


def _control_then_fault(name: str, flavor: str, fault: str, clean: Path,
                        tmp_path: Path) -> tuple[Result, dict]:
    """A run of test `name` by the bundled engine that must pass, then one with `fault`
    applied to the restored tree (these tests declare engine features, which the fake
    engine does not report: a real C/R)."""
    lifecycle.prepare_process()
    test = next(t for t in discover() if t.name == name)
    control = _run(test, BundledEngine(), clean, flavor)
    if control.outcome == SKIP:  # the feature is missing here: the probed reason
        pytest.skip(control.message)
    assert control.outcome == PASS, control.summary()
    engine = FaultyEngine(fault, tmp_path, inner=BundledEngine())
    result = _run(test, engine, clean, flavor)
    assert engine.record, f"the fault was never applied: {result.summary()}"
    return result, engine.record


@pytest.mark.parametrize("flavor", ["ns", "uns"])
def test_ipc_fault_fails_exactly_the_ipc_check(flavor: str, clean: Path,
                                               tmp_path: Path) -> None:
    """A semaphore of the restored tree's ipc namespace changed: the run that passes
    without the fault fails exactly the ipc check, naming the set, its values and its
    last pids (the fault's SETVAL comes from outside the tree)."""
    result, rec = _control_then_fault("static/ipc_sysv_sem", flavor, "ipc-semval", clean,
                                      tmp_path)
    where = f"ipc: ipc[pid 1]: sem {rec['semid']}: "
    assert _expect(result, "ipc") == [
        (f"{where}last pids none, pid 3, pid 3, pid 3, outside -> outside, pid 3, pid 3, "
        "pid 3, outside"),
        f"{where}values 0 1 7 32767 3 -> 1 1 7 32767 3"]


@pytest.mark.parametrize(("flavor", "name", "attrs"), [
    ("h", "static/posix_mqueue_unlinked", ("maxmsg 5 msgsize 64 messages 5", "messages 4")),
    ("ns", "static/posix_mqueue", ("maxmsg 8 msgsize 128 messages 6", "messages 5"))])
def test_mqueue_fault_fails_the_files_check(flavor: str, name: str, attrs: tuple[str, str],
                                            clean: Path, tmp_path: Path) -> None:
    """A message taken from a restored POSIX queue: the files check names the fd, its
    message count and queued bytes (and the time the receive stamped)."""
    result, rec = _control_then_fault(name, flavor, "mq-take-message", clean, tmp_path)
    problems = _expect(result, "files")
    fd = f"fd {rec['fd']} {rec['queue']}: "
    before, after = attrs
    assert any(f"{fd}mq attributes {before} -> {before.rsplit(' ', 2)[0]} {after}" in p
               for p in problems), problems
    assert any(fd + "mq status QSIZE:" in p for p in problems), problems


@pytest.mark.parametrize("fault", ["mount-left", "cgroup-left"])
def test_left_kernel_objects_are_reported_and_removed(fault: str, subject: TestDesc,
                                                      clean: Path, tmp_path: Path) -> None:
    """A mount in the run's namespace or a cgroup the test sat in: named in the result,
    then removed (``clean`` checks the harness's mounts are as before)."""
    engine = FaultyEngine(fault, tmp_path)
    result = _run(subject, engine, clean, norst=True)
    assert result.outcome == FAIL, result.summary()
    if fault == "mount-left":
        where = engine.record["mount"]
        assert result.message.startswith(f"iteration 1: 1 problem(s): leak: mount {where} ")
        assert f"leak: mount {where} (tmpfs, source zdtm-fault) left behind" in result.details
        assert "the 1 mount(s) left behind were removed" in result.details
        assert where not in Path("/proc/self/mountinfo").read_text()
    else:
        group = engine.record["cgroup"]
        assert (result.phase, result.kind) == ("stop", CHECK_FAILED), result.summary()
        assert f"leak: cgroup {group} left behind (removed)" in result.details
        assert not Path(group).exists()


@pytest.mark.parametrize("flavor", ["ns", "uns"])
@pytest.mark.parametrize("fault", ["unshare-files", "break-cow", "set-dumpable", "set-owner",
                                   "set-winsize", "drop-ctty", "set-fgpgrp",
                                   "membarrier-register", "rename-unlinked"])
def test_property_faults_in_namespaces(fault: str, flavor: str, clean: Path,
                                       tmp_path: Path) -> None:
    """The new checks see through the ns flavours too: pids as the tree sees them, in-task
    reads inside a user namespace, pidfd_getfd copies of its fds."""
    name, check, text = PROPERTY_FAULTS[fault]
    test = next(t for t in discover() if t.name == name)
    engine = FaultyEngine(fault, tmp_path)
    result = _run(test, engine, clean, flavor, norst=True)
    problems = _expect(result, check)
    rec = engine.record
    who = f"pid {rec['inner_pid']} [{rec['pid']}] ("
    assert any(who in p and text in p for p in problems), problems
    if fault == "set-owner":  # the owner is named by its pid inside the namespace
        assert any(f"owner absent -> pid pid {rec['inner_pid']}" in p for p in problems)


def _loaded_lsm_profiles() -> list[str]:
    """The AppArmor profiles in the kernel, read by the fault tool (which mounts securityfs
    in a namespace of its own when it is not mounted)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT_DIR), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, faulty_engine.__file__, "lsm-profiles"], env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.split()


@pytest.mark.parametrize("flavor", ["h", "ns", "uns"])
def test_lsm_label_fault_fails_taskattrs(flavor: str, subject: TestDesc, clean: Path,
                                         tmp_path: Path) -> None:
    """A task left under another LSM label (an AppArmor profile of the run's own, in
    complain mode, changed to from inside the task) fails exactly ``taskattrs``, naming the
    process and both labels; the profile is gone when the run has ended."""
    why = lsm_unavailable()
    if why:
        pytest.skip(why)
    engine = FaultyEngine("set-lsm-label", tmp_path)
    result = _run(subject, engine, clean, flavor, norst=True)
    rec = engine.record
    assert rec, f"the fault was never applied: {result.summary()}"
    name = rec["profile"]
    assert name.startswith("zdtm-fault-") and rec["label_after"] == f"{name} (complain)"
    who = (f"pid {rec['inner_pid']}" if flavor == "h"
           else f"pid {rec['inner_pid']} [{rec['pid']}]") + " (mem_anon)"
    assert _expect(result, "taskattrs") == [
        f"taskattrs: {who}: lsm label {rec['label_before']} -> {name} (complain)"]
    assert engine.cleanup_error is None
    assert name not in _loaded_lsm_profiles()


def test_lsm_probe_names_what_is_missing(tmp_path: Path) -> None:
    """The probe behind the LSM fault's SKIP, on a made-up root: no LSM, an LSM that is not
    AppArmor, AppArmor without apparmor_parser, without securityfs; each says which."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    def probe() -> str | None:
        return lsm_unavailable(tmp_path, search_path=str(bin_dir))

    assert probe() == "no LSM: /proc/self/attr/current: No such file or directory"
    (tmp_path / "proc/self/attr").mkdir(parents=True)
    (tmp_path / "proc/self/attr/current").write_text("unconfined\n")
    assert probe() == ("the LSM (label 'unconfined') is not AppArmor: "
                       "/sys/module/apparmor/parameters/enabled: No such file or directory")
    enabled = tmp_path / "sys/module/apparmor/parameters/enabled"
    enabled.parent.mkdir(parents=True)
    enabled.write_text("N\n")
    assert probe() == ("the LSM (label 'unconfined') is not AppArmor: "
                       "/sys/module/apparmor/parameters/enabled is N")
    enabled.write_text("Y\n")
    assert probe() == ("AppArmor is enabled but apparmor_parser is not installed "
                       "(apt-get install apparmor)")
    parser = bin_dir / "apparmor_parser"
    parser.write_text("#!/bin/sh\n")
    parser.chmod(0o755)
    (tmp_path / "proc/filesystems").write_text("nodev\tsysfs\nnodev\tproc\n")
    assert probe() == ("AppArmor is enabled but securityfs is not available (not mounted on "
                       "/sys/kernel/security, and the kernel cannot mount it there)")
    (tmp_path / "proc/filesystems").write_text("nodev\tsysfs\nnodev\tsecurityfs\n")
    (tmp_path / "sys/kernel/security").mkdir(parents=True)
    assert probe() is None  # the fault mounts securityfs itself
    (tmp_path / "proc/self/attr/apparmor").mkdir()
    (tmp_path / "proc/self/attr/apparmor/current").write_text("other\n")
    assert probe() == ("AppArmor is enabled but /proc/self/attr/current is another LSM's "
                       "(label 'unconfined')")


@pytest.mark.parametrize("flavor", ["h", "ns", "uns"])
def test_restore_resuming_a_stopped_task_fails_taskattrs(flavor: str, bundled: BundledEngine,
                                                         clean: Path, tmp_path: Path) -> None:
    """A task the test stopped that runs after a real restore: only ``taskattrs`` fails,
    naming it (the harness's own freeze after the restore would otherwise hide it)."""
    test = next(t for t in discover() if t.name == "static/task_stopped")
    engine = FaultyEngine("resume-stopped", tmp_path, inner=bundled)
    result = _run(test, engine, clean, flavor)
    rec = engine.record
    assert rec, f"the fault was never applied: {result.summary()}"
    who = (f"pid {rec['inner_pid']}" if flavor == "h"
           else f"pid {rec['inner_pid']} [{rec['pid']}]") + " (task_stopped)"
    assert _expect(result, "taskattrs") == [f"taskattrs: {who}: stopped by signal yes -> no"]


_SIGHAND_ROW = re.compile(r"sharing: pid (\d+)(?: \[\d+\])? \(shared_tables\): signal handlers "
                          r"\(CLONE_SIGHAND\) sighand\[pid (\d+)\] -> not shared")


@pytest.fixture(scope="module")
def shared_tables(tmp_path_factory: pytest.TempPathFactory) -> TestDesc:
    """static/shared_tables, once a control run by the bundled engine passes (so the
    faulty run's failure is the fault's)."""
    test = next(t for t in discover() if t.name == "static/shared_tables")
    engine = BundledEngine()
    why = engine.available()
    if why:
        pytest.skip(f"bundled engine cannot dump/restore here: {why}")
    root = tmp_path_factory.mktemp("control")
    control = lifecycle.Run(test, "h", engine, lifecycle.RunOptions(workroot=root)).execute()
    assert control.outcome == PASS, control.summary()
    return test


@pytest.mark.parametrize("flavor", ["h", "ns", "uns"])
def test_engine_unsharing_the_signal_handlers_fails_that_row(flavor: str,
                                                              shared_tables: TestDesc,
                                                              clean: Path) -> None:
    """ENGINE_FAULT=unshare-sighand: the engine creates the task that shares its
    parent's address space and signal handlers with CLONE_VM only. Exactly the signal
    handlers row of ``sharing`` fails, for the parent and that child, each named with the
    class they were in and "not shared"; the fd table, fs and address space rows hold."""
    result = _run(shared_tables, EngineFault("unshare-sighand"), clean, flavor)
    problems = _expect(result, "sharing")
    rows = [_SIGHAND_ROW.fullmatch(p) for p in problems]
    assert len(problems) == 2 and all(rows), problems
    pids = [int(m.group(1)) for m in rows if m]
    labels = {int(m.group(2)) for m in rows if m}
    assert labels == {pids[0]} and pids[0] != pids[1], problems


# fault -> (subject test, a line of its own FAIL verdict): state no harness check sees
VERDICT_FAULTS = {
    ("drop-timer", "static/posix_timers"): "timer_gettime cpu (id ",
    ("set-rcvbuf", "static/netlink_route"): "bound: SO_RCVBUF 8192, set to 65536",
    ("set-rcvbuf", "static/raw_socket"): "rx: proto 253 tos 0 prio 0 hdrincl 0 rcvbuf 8192",
    ("set-rcvbuf", "static/udp_options"): "a: SO_RCVBUF 8192, was 100000",
    ("set-rcvbuf", "static/packet_socket"): " rcvbuf 8192 sndbuf ",
}


@pytest.mark.parametrize(("fault", "name"), sorted(VERDICT_FAULTS))
def test_fault_fails_the_tests_own_verdict(fault: str, name: str, clean: Path,
                                           tmp_path: Path) -> None:
    """POSIX timers and socket options are judged by the test itself. A restore that
    loses one (the fault changes it in the restored task) fails the test's verdict,
    where the same run without the fault passes."""
    test = next(t for t in discover() if t.name == name)
    bundled = BundledEngine()
    why = bundled.available()
    if why:
        pytest.skip(f"bundled engine cannot dump/restore here: {why}")
    control = lifecycle.Run(test, "h", bundled,
                            lifecycle.RunOptions(workroot=clean)).execute()
    if control.outcome == SKIP:  # a feature the engine lacks here (the probed why)
        pytest.skip(control.message)
    assert control.outcome == PASS, control.summary()
    engine = FaultyEngine(fault, tmp_path, inner=bundled)
    result = _run(test, engine, clean)
    assert engine.record["fault"] == fault
    assert result.outcome == FAIL, result.summary()
    assert (result.phase, result.kind) == ("stop", Kind.TEST_FAIL), result.summary()
    text = VERDICT_FAULTS[(fault, name)]
    assert any(text in d for d in result.details), result.details


@pytest.mark.parametrize("fault", ["set-winsize", "set-termios"])
def test_tty_fault_after_real_restore(fault: str, clean: Path, tmp_path: Path) -> None:
    """A pty pair the bundled engine made again (its master in the tree) is what the tty
    check reads: the run passes without a fault, and a fault on the restored terminal
    fails exactly that check."""
    name, check, text = PROPERTY_FAULTS[fault]
    test = next(t for t in discover() if t.name == name)
    (tmp_path / "control").mkdir()
    control = _run(test, BundledEngine(), tmp_path / "control")
    assert control.outcome == PASS, control.summary()
    engine = FaultyEngine(fault, tmp_path, inner=BundledEngine())
    problems = _expect(_run(test, engine, clean), check)
    assert any(text in p for p in problems), problems


def test_a_fault_names_an_anonymous_vma_as_the_harness_merges_it() -> None:
    """Two kernel VMAs the harness shows as one (private anonymous, same flags: here cut
    apart by their mapping history, one mremap'd next to the other): the VMA a fault
    records is the merged one, as the checks name it. PROT_NONE guards on both sides keep
    the process's other mappings out of the merge."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = libc.mremap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int,
                            ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = 4 * PAGE_SIZE
    rw, anon, fixed = 0x3, 0x22, 0x10  # PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS
    guarded = libc.mmap(None, 4 * size, 0, anon, -1, 0)  # PROT_NONE: guard, A, B, guard
    assert guarded not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    try:
        low = guarded + size
        assert libc.mmap(low, size, rw, anon | fixed, -1, 0) == low, ctypes.get_errno()
        other = libc.mmap(None, size, rw, anon, -1, 0)
        assert other not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        ctypes.memset(low, 1, size)  # each its own anon_vma: the kernel cannot merge them
        ctypes.memset(other, 2, size)
        moved = libc.mremap(other, size, size, 0x3, low + size)  # MAYMOVE|FIXED
        assert moved == low + size, ctypes.get_errno()
        kernel = [(s, e) for s, e, _p, _n in faulty_engine._maps(os.getpid())
                  if low <= s < low + 2 * size]
        assert kernel == [(low, low + size), (low + size, low + 2 * size)]
        assert faulty_engine._as_merged(os.getpid(), (low, low + size, low)) == \
            (low, low + 2 * size, low)
    finally:
        libc.munmap(guarded, 4 * size)
