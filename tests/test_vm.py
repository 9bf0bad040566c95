"""zdtm/vm.py without booting anything: a fake `vng` plays the VM (boots and runs the
guest script, never boots, hangs, taints the kernel), so the plumbing around a real VM
(results back through --rwdir, kernel tags, deadlines, console tails, health) is checked
in seconds. The real VMs run in .ci/run's kernel matrix."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from zdtm import ROOT_DIR, vm
from zdtm.result import FAIL, PASS, TIMEOUT, Result


@pytest.fixture
def kernel(tmp_path: Path) -> vm.Kernel:
    image = tmp_path / "vmlinuz-9.9.9-test"
    image.write_bytes(b"\0" * 1024)
    return vm.resolve(str(image))


def _fake_vng(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """A `vng` whose behaviour is the shell `body` ($OUT is its --rwdir); its arguments
    are logged to vng.args."""
    fake = tmp_path / "vng"
    fake.write_text("#!/bin/sh\n"
                    f"printf '%s\\n' \"$@\" > {tmp_path}/vng.args\n"
                    'while [ "$1" != "--" ]; do [ "$1" = --rwdir ] && OUT=$2; shift; done\n'
                    f"{body}\n")
    fake.chmod(0o755)
    monkeypatch.setattr(vm, "VNG", str(fake))
    monkeypatch.setattr(vm, "kvm_usable", lambda _image: (False, "probe says no (test)"))
    return fake


def _guest_writes(results: list[Result], taint_after: int = 0, dmesg: str = "") -> str:
    lines = "".join(json.dumps(r.to_dict()) + "\n" for r in results)
    return textwrap.dedent(f"""\
        echo "[    0.000000] Linux version 9.9.9-test"
        echo "zdtm-vm: booted 9.9.9-test uptime 3.25"
        echo 0 > "$OUT/taint.before"
        echo "PASS static/x [h]"
        printf '%s' '{lines}' > "$OUT/results.jsonl"
        echo {taint_after} > "$OUT/taint.after"
        printf '%s\\n' '{dmesg}' > "$OUT/dmesg.txt"
        echo "zdtm-vm: done 0"
        """)


def test_release_is_read_from_a_bzimage_header(tmp_path: Path) -> None:
    head = bytearray(0x1000)
    head[0x202:0x206] = b"HdrS"
    head[0x20E:0x210] = (0x300 - 0x200).to_bytes(2, "little")
    head[0x300:0x340] = b"6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP\0".ljust(64, b"\0")
    img = tmp_path / "bzImage"
    img.write_bytes(bytes(head))
    assert vm.image_release(img) == "6.1.0-57-amd64"
    assert vm.resolve(str(img)).release == "6.1.0-57-amd64"


def test_installed_kernels_resolve_by_release() -> None:
    images = sorted(Path("/boot").glob("vmlinuz-*"))
    if not images:
        pytest.skip("no kernel image in /boot")
    release = images[0].name.removeprefix("vmlinuz-")
    k = vm.resolve(release)
    assert k.image == images[0].resolve() and k.release == release


def test_bad_kernel_arguments_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(vm.KernelError, match="no such kernel image"):
        vm.resolve(str(tmp_path / "nope"))
    assert vm.resolve("host") == vm.Kernel(None, os.uname().release)
    r = subprocess.run([sys.executable, "runner.py", "run", "-t", "static/cwd",
                        "--kernel", str(tmp_path / "nope")], cwd=ROOT_DIR,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "no such kernel image" in r.stderr


def test_guest_argv_drops_kernel_report_and_work_root() -> None:
    argv = ["run", "-t", "static/cwd", "--kernel", "a", "--kernel=b", "--report", "R",
            "--report=S", "-f", "h", "--work-root", "/w", "--work-root=/v", "--keep-going"]
    assert vm.guest_argv(argv) == ["run", "-t", "static/cwd", "-f", "h", "--keep-going"]
    script = vm.guest_script(vm.guest_argv(argv), Path("/tmp/o"))
    assert "--results-out /tmp/o/results.jsonl" in script and "--kernel" not in script


def test_results_come_back_tagged_with_the_kernel(kernel: vm.Kernel, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    sent = [Result("static/x", "h", "bundled", iterations=1, duration=2.5)]
    _fake_vng(tmp_path, monkeypatch, _guest_writes(sent))
    lines: list[str] = []
    run = vm.run_guest(kernel, ["run", "-t", "static/x"], lines.append, silence=30)
    assert [(r.test, r.outcome, r.kernel) for r in run.results] == [
        ("static/x", PASS, "9.9.9-test")]
    assert run.results[0].ident == "static/x [h] @9.9.9-test"
    assert run.guest_uptime == 3.25 and run.boot_seconds is not None
    # progress is streamed with the kernel's tag; the boot log before the mark is not
    assert "[9.9.9-test] PASS static/x [h]" in lines
    assert not any("Linux version" in ln for ln in lines)
    args = (tmp_path / "vng.args").read_text().splitlines()
    assert "--disable-kvm" in args and args[args.index("--run") + 1] == str(kernel.image)


def test_a_kernel_that_does_not_boot_is_a_result_with_its_console(
        kernel: vm.Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_vng(tmp_path, monkeypatch, 'echo "Kernel panic - not syncing: VFS"; exit 1')
    run = vm.run_guest(kernel, ["run"], lambda _: None, silence=30)
    (r,) = run.results
    assert (r.test, r.outcome, r.kernel) == ("kernel/boot", FAIL, "9.9.9-test")
    assert "ended before the guest ran" in r.message
    assert any("Kernel panic" in d for d in r.details)


def test_a_boot_that_never_ends_hits_the_boot_deadline(
        kernel: vm.Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_vng(tmp_path, monkeypatch, 'echo "early console"; exec sleep 600')
    monkeypatch.setattr(vm, "BOOT_TIMEOUT", 1.0)
    start = time.monotonic()
    run = vm.run_guest(kernel, ["run"], lambda _: None, silence=30)
    assert time.monotonic() - start < 30
    (r,) = run.results
    assert (r.test, r.kind) == ("kernel/boot", TIMEOUT)
    assert any("early console" in d for d in r.details)
    _assert_fake_gone(tmp_path)


def test_a_silent_guest_is_killed_and_keeps_what_it_ran(
        kernel: vm.Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    done = Result("static/x", "h", "bundled", iterations=1)
    body = _guest_writes([done]).replace('echo "zdtm-vm: done 0"', "exec sleep 600")
    _fake_vng(tmp_path, monkeypatch, body)
    run = vm.run_guest(kernel, ["run"], lambda _: None, silence=1.0)
    assert [(r.test, r.outcome) for r in run.results] == [("static/x", PASS),
                                                          ("kernel/hang", FAIL)]
    assert run.results[1].kind == TIMEOUT and "no output for 1s" in run.results[1].message
    _assert_fake_gone(tmp_path)


def _assert_fake_gone(tmp_path: Path) -> None:
    """The fake VM's process group was killed: no process runs its script any more."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert str(tmp_path / "vng").encode() not in cmd, f"pid {pid} still runs"


@pytest.mark.parametrize(("taint", "dmesg", "expect"), [
    (512, "", r"tainted during the run: - -> W"),
    (0, "[  9.1] WARNING: CPU: 0 PID: 1 at mm/x.c:1 f+0x1/0x2", r"1 kernel log line"),
])
def test_a_run_that_hurts_the_kernel_fails_its_health(
        kernel: vm.Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taint: int,
        dmesg: str, expect: str) -> None:
    _fake_vng(tmp_path, monkeypatch, _guest_writes([], taint, dmesg))
    run = vm.run_guest(kernel, ["run"], lambda _: None, silence=30)
    (r,) = run.results
    assert (r.test, r.outcome) == ("kernel/health", FAIL)
    assert re.search(expect, r.message), r.message
    if dmesg:
        assert any("WARNING: CPU" in d for d in r.details)


def test_a_clean_run_has_no_health_result(kernel: vm.Kernel, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_vng(tmp_path, monkeypatch, _guest_writes([], 0, "[ 1.0] virtio_net: ok"))
    run = vm.run_guest(kernel, ["run"], lambda _: None, silence=30, logs=tmp_path / "rep")
    assert run.results == []
    assert "virtio_net: ok" in (tmp_path / "rep" / "dmesg-9.9.9-test.txt").read_text()


def test_vng_temp_files_go_with_the_run(kernel: vm.Kernel, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """vng's return-code file (left when the VM is killed, as every run ends) is made in
    the run's own temp dir and removed with it, not left in /tmp."""
    body = ('mktemp "${TMPDIR:-/tmp}/virtme_retXXXXXX" > ' + f"{tmp_path}/made\n"
            + _guest_writes([]))
    _fake_vng(tmp_path, monkeypatch, body)
    vm.run_guest(kernel, ["run"], lambda _: None, silence=30)
    made = Path((tmp_path / "made").read_text().strip())
    assert made.name.startswith("virtme_ret") and made.parent.name == "vng"
    assert not made.exists() and not made.parent.parent.exists()


def test_runner_reports_every_kernel_and_its_times(
        kernel: vm.Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = [Result("static/x", "h", "bundled", iterations=1, duration=2.5)]
    _fake_vng(tmp_path, monkeypatch, _guest_writes(sent))
    host = Result("static/x", "h", "bundled", iterations=1, duration=0.5)
    lines: list[str] = []
    results = vm.run_kernels([vm.resolve("host"), kernel], ["run"], lines.append,
                             lambda: [host], keep_going=True, silence=30)
    assert [r.kernel for r in results] == [os.uname().release, "9.9.9-test"]
    text = "\n".join(lines)
    assert re.search(r"9\.9\.9-test: tcg .*boot \d+\.\ds", text)
    assert re.search(r"static/x \[h\] +0\.5 +2\.5", text)
    assert "kernel 9.9.9-test: 1 passed, 0 failed, 0 skipped" in text


def test_the_guest_runner_records_each_result(tmp_path: Path) -> None:
    """What the guest runs: --results-out gets one JSON line per result as it ends."""
    out = tmp_path / "results.jsonl"
    r = subprocess.run([sys.executable, "runner.py", "run", "-t", "static/cwd", "-f", "h",
                        "--nocr", "--results-out", str(out)], cwd=ROOT_DIR,
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    (got,) = [Result.from_dict(json.loads(ln)) for ln in out.read_text().splitlines()]
    assert (got.test, got.flavor, got.outcome) == ("static/cwd", "h", PASS)


def test_kvm_probe_gives_a_reason(kernel: vm.Kernel) -> None:
    ok, why = vm._probe_kvm(str(kernel.image))
    assert ok or why


@pytest.mark.parametrize("qemu, usable, why", [
    ("echo 'Booting from ROM...'; echo 'Linux version 6.1.0 (x)'; exit 0", True, ""),
    # firmware runs, then the kernel hangs as it starts (seen on a host where KVM works
    # for qemu's own checks): no banner by the deadline
    ("echo 'Booting from ROM...'; exec sleep 60", False,
     "qemu with KVM: vmlinuz-9.9.9-test printed nothing within 2s (the guest hangs)"),
    ("echo 'qemu-system-x86_64: error: failed to set MSR 0x10a' >&2; exit 1", False,
     "qemu with KVM: error: failed to set MSR 0x10a"),
])
def test_kvm_probe_boots_the_kernel(kernel: vm.Kernel, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch, qemu: str,
                                    usable: bool, why: str) -> None:
    """KVM counts as usable only when the kernel itself prints its banner under it."""
    (tmp_path / vm.QEMU).write_text(f"#!/bin/sh\n{qemu}\n")
    (tmp_path / vm.QEMU).chmod(0o755)
    device = tmp_path / "kvm"
    device.touch()
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(vm, "KVM_DEVICE", str(device))
    monkeypatch.setattr(vm, "KVM_PROBE_TIMEOUT", 2.0)
    assert vm._probe_kvm(str(kernel.image)) == (usable, why)


def test_pytest_items_take_their_kernels_results(kernel: vm.Kernel, tmp_path: Path) -> None:
    """pytest --zdtm-kernel end to end, with a `vng` on PATH that runs the guest script
    right here (no VM): items are FLAVOUR@RELEASE and pass or fail by the guest's results."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fakes = {
        "vng": 'while [ "$1" != "--" ]; do shift; done\nexec sh -c "$2"',
        "qemu-system-x86_64": "exit 1",  # the KVM probe fails: the 'VM' is TCG
        "busybox": "exit 0",
        "dmesg": 'echo "[ 0.1] a quiet kernel"',  # not this machine's own log
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")

    def pytest_run() -> str:
        r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p",
                            "no:xdist", "-q", "-rA", "zdtm/static/cwd.c", "zdtm/static/umask.c",
                            "--zdtm-kernel", str(kernel.image), "--zdtm-flavors", "h",
                            "--zdtm-nocr", "--zdtm-iters", "1"],
                           cwd=ROOT_DIR, env=env, capture_output=True, text=True,
                           timeout=600, check=False)
        return f"rc={r.returncode}\n{r.stdout}{r.stderr}"

    out = pytest_run()
    assert out.startswith("rc=0"), out
    for name in ("cwd", "umask"):
        assert re.search(rf"PASSED.* zdtm/static/{name}.c::h@9\.9\.9-test", out), out
    # a kernel that does not boot fails every item of it, with the console tail
    (bin_dir / "vng").write_text("#!/bin/sh\necho 'Kernel panic - not syncing'\nexit 1\n")
    out = pytest_run()
    assert out.startswith("rc=1") and "2 failed" in out, out
    assert "kernel/boot: the VM ended before the guest ran anything" in out
    assert "Kernel panic - not syncing" in out


def test_an_interrupt_keeps_the_results_of_the_kernels_that_ended(
        kernel: vm.Kernel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted under the second kernel, the first kernel's results are in `done` (the
    report of an interrupted multi-kernel run lost them all)."""
    sent = [Result("static/x", "h", "bundled", iterations=1, duration=2.5)]
    _fake_vng(tmp_path, monkeypatch, _guest_writes(sent))

    def interrupted() -> list[Result]:
        raise KeyboardInterrupt

    done: list[Result] = []
    with pytest.raises(KeyboardInterrupt):
        vm.run_kernels([kernel, vm.resolve("host")], ["run"], lambda _: None, interrupted,
                       keep_going=True, silence=30, done=done)
    assert [(r.test, r.kernel) for r in done] == [("static/x", "9.9.9-test")]
