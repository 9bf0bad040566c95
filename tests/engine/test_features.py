"""``python -m engine check``, the CLI skeleton, EngineError reporting and ENGINE_FAULT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import __main__ as cli
from engine import faults, features
from engine.errors import EngineError
from zdtm import plumbing

ROOT = Path(__file__).resolve().parents[2]


def _engine(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, check=False,
                          capture_output=True, text=True, timeout=120)


def test_check_json_schema_and_probes() -> None:
    before = set(plumbing.children(os.getpid()))
    res = _engine("check", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    feats, reasons = doc["features"], doc["reasons"]
    assert all(isinstance(v, bool) for v in feats.values())
    # every missing feature says why; reasons only name known features
    assert {k for k, v in feats.items() if not v} <= set(reasons)
    assert set(reasons) <= set(feats)
    for name in ("ptrace_seize", "syscall_inject", "pagemap_scan", "uffd_wp_async",
                 "soft_dirty", "clone3_set_tid", "map_files", "dump", "restore"):
        assert name in feats
    # facts of this machine (DESIGN.md section 7), found by probing, not by version
    assert feats["soft_dirty"] is False
    assert feats["mem_track"] == feats["uffd_wp_async"]
    # the probes left no child behind (other tests of this worker may have left some)
    assert set(plumbing.children(os.getpid())) <= before


def test_check_text_output() -> None:
    res = _engine("check")
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert any(line.split()[:2] == ["ptrace_seize", "yes"] for line in lines)
    assert any(line.startswith("soft_dirty") and "no" in line and "(" in line for line in lines)


def test_probe_in_process_reaps_helpers() -> None:
    before = set(plumbing.children(os.getpid()))
    results = features.probe()
    assert results["ptrace_seize"] == (True, "")
    assert results["syscall_inject"][0] is True
    assert set(plumbing.children(os.getpid())) <= before


def test_package_features_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """dump/restore declare themselves through features(); absent or broken -> False."""
    import types

    good = types.ModuleType("engine.fakepkg")
    good.features = lambda: {"fakepkg": (True, ""), "fakepkg_threads": (False, "later")}
    monkeypatch.setitem(sys.modules, "engine.fakepkg", good)
    assert features._package_features("fakepkg") == {
        "fakepkg": (True, ""), "fakepkg_threads": (False, "later")}
    silent = types.ModuleType("engine.fakepkg2")
    monkeypatch.setitem(sys.modules, "engine.fakepkg2", silent)
    ok, why = features._package_features("fakepkg2")["fakepkg2"]
    assert not ok and "declares no features()" in why
    ok, why = features._package_features("no_such_pkg")["no_such_pkg"]
    assert not ok and "not importable" in why


def test_cli_missing_subcommand_module(capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.HANDLERS, "dump", cli._dispatch("engine.no_such_module", "dump"))
    rc = cli.main(["dump", "-t", "1", "-D", "/nonexistent"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_ERROR
    assert err.startswith("engine: error: cli: 'dump' is not available: engine.no_such_module")


def test_cli_engine_error_and_crash(capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(args: object) -> int:
        raise EngineError("seize", "pid 42: no such process")

    def crashes(args: object) -> int:
        raise KeyError("boom")

    monkeypatch.setitem(cli.HANDLERS, "dump", fails)
    assert cli.main(["dump", "-t", "42", "-D", "x"]) == 1
    assert capsys.readouterr().err == "engine: error: seize: pid 42: no such process\n"
    monkeypatch.setitem(cli.HANDLERS, "restore", crashes)
    assert cli.main(["restore", "-D", "x"]) == cli.EXIT_CRASH
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1] == "engine: error: internal: KeyError: 'boom'"


def test_cli_deadline_is_an_error_not_a_crash(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def waits(args: object) -> int:
        raise TimeoutError("task 7 did not stop within 60.0s")

    monkeypatch.setitem(cli.HANDLERS, "restore", waits)
    assert cli.main(["restore", "-D", "x"]) == 1
    assert capsys.readouterr().err == ("engine: error: timeout: task 7 did not stop "
                                       "within 60.0s\n")


def test_cli_arguments_reach_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def grab(args: object) -> int:
        seen.update(vars(args))
        return 0

    for name in ("dump", "restore"):
        monkeypatch.setitem(cli.HANDLERS, name, grab)
    assert cli.main(["dump", "-t", "5", "-D", "img", "--leave-running", "--track-mem"]) == 0
    assert (seen["pid"], seen["images_dir"], seen["leave_running"], seen["track_mem"],
            seen["prev_images_dir"]) == (5, "img", True, True, None)
    seen.clear()
    assert cli.main(["restore", "-D", "img", "--leave-stopped", "-d", "--pidfile", "p"]) == 0
    assert (seen["leave_stopped"], seen["detach"], seen["pidfile"], seen["lazy_pages"]) == (
        True, True, "p", False)


def test_cli_usage_error() -> None:
    res = _engine("dump", "-D", "x")  # -t missing
    assert res.returncode == 1
    assert res.stderr.startswith("engine: error: usage: python -m engine dump: ")
    assert "-t/--tree" in res.stderr and len(res.stderr.splitlines()) == 1
    res = _engine("restore", "-D", "x", "--link-remap")  # a CRIU option we do not have
    assert res.returncode == 1
    assert res.stderr == ("engine: error: usage: python -m engine: unrecognized arguments: "
                          "--link-remap\n")
    assert _engine("dump", "--help").returncode == 0


def test_fault_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.fault_point("seize")  # unset: nothing happens
    monkeypatch.setenv(faults.ENV, "regs, memory")
    faults.fault_point("seize")
    with pytest.raises(EngineError) as info:
        faults.fault_point("memory")
    assert info.value.phase == "memory" and "fault injected" in info.value.message
    monkeypatch.setenv(faults.ENV, "memroy")
    with pytest.raises(EngineError) as info:
        faults.fault_point("seize")
    assert "unknown step" in info.value.message and "memroy" in info.value.message
    with pytest.raises(ValueError):
        faults.fault_point("not-a-step")
    assert set(faults.DUMP_STEPS) | set(faults.RESTORE_STEPS) == faults.STEPS


def test_probe_reports_every_name_when_ptrace_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel (or LSM) that refuses ptrace: every ptrace-based feature is reported
    missing with the kernel's reason; features that need no ptrace are unaffected."""
    from engine.kernel import ptrace

    def refuse(tid: int, options: int = 0) -> None:
        raise PermissionError(1, "ptrace: Operation not permitted")

    monkeypatch.setattr(ptrace, "seize", refuse)
    results = features.probe()
    for name in ("ptrace_seize", "ptrace_regs", "ptrace_xstate", "ptrace_sigmask",
                 "ptrace_peeksiginfo", "ptrace_rseq_config", "syscall_inject", "proc_mem"):
        ok, why = results[name]
        assert not ok and "Operation not permitted" in why, name
    assert results["process_vm_readv"] == (True, "")
    assert results["pagemap_scan"] == (True, "")


def test_incremental_dumps_need_wp_async_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel before 6.7 (no UFFD WP_ASYNC, no PAGEMAP_SCAN): pre_dump is reported
    missing with the probed reasons, so the harness SKIPs --pre runs instead of failing."""
    monkeypatch.setattr(features, "_uffd_wp_async_probe",
                        lambda: (False, "OSError: [Errno 22] ioctl: Invalid argument"))
    results = features.probe()
    for name in ("pre_dump", "dump_incremental"):
        ok, why = results[name]
        assert not ok, name
        assert "WP_ASYNC" in why and "uffd_wp_async: OSError: [Errno 22]" in why, why
    assert results["dump"] == (True, "")


def test_direct_io_is_probed_with_real_io(monkeypatch: pytest.MonkeyPatch) -> None:
    """direct_io is no, with the buffered fallback named, where the temp dir's filesystem
    does not do O_DIRECT (forced here as on tmpfs before 6.6)."""
    monkeypatch.setenv("ENGINE_FAULT", "no-direct-io")
    ok, why = features._direct_io_probe()
    assert not ok and "buffered" in why
