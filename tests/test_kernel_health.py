"""The kernel health watch: taint bits and kernel log lines around a run."""

from __future__ import annotations

import os
import uuid

import pytest

from zdtm import kernel_health
from zdtm.kernel_health import KernelWatch, describe_taint, parse_record

needs_kmsg = pytest.mark.skipif(not os.access(kernel_health.KMSG, os.W_OK),
                                reason="/dev/kmsg is not writable here")


def _inject(text: str) -> None:
    with open(kernel_health.KMSG, "w") as f:
        f.write(f"<4>{text}\n")


def test_parse_record() -> None:
    rec = parse_record(b"4,1234,5678,-;WARNING: CPU: 1 PID: 7 at mm/x.c:1\n SUBSYSTEM=x\n")
    assert rec is not None
    assert (rec.facility, rec.level, rec.seq) == (0, 4, 1234)
    assert rec.text == "WARNING: CPU: 1 PID: 7 at mm/x.c:1"
    assert parse_record(b"garbage") is None


def test_describe_taint() -> None:
    assert describe_taint(0) == "0x0 (-)"
    assert describe_taint(1 << 9 | 1) == "0x201 (PW)"


@needs_kmsg
def test_only_this_runs_user_space_lines_count() -> None:
    """A line another run injected (other token) is not this run's; its own is, once."""
    mine, theirs = f"/tmp/zdtm-test-{uuid.uuid4()}", f"/tmp/zdtm-test-{uuid.uuid4()}"
    watch = KernelWatch(tokens=[mine])
    watch.start()
    try:
        _inject(f"selftest[{theirs}]: WARNING: not ours")
        _inject(f"selftest[{mine}]: all is fine")
        _inject(f"selftest[{mine}]: BUG: ours")
        found = [p for p in watch.poll() if "selftest[" in p]
        assert len(found) == 1 and found[0].endswith(f"selftest[{mine}]: BUG: ours"), found
        assert [p for p in watch.poll() if "selftest[" in p] == []  # reported once
    finally:
        watch.close()


def test_taint(monkeypatch: pytest.MonkeyPatch) -> None:
    """New taint bits fail; a taint present at start fails unless tolerated."""
    taint = [1 << 12]  # O: out-of-tree module, present at start
    monkeypatch.setattr(kernel_health, "read_taint", lambda: taint[0])
    strict, tolerant = KernelWatch(), KernelWatch(tolerate_taint=True)
    for w in (strict, tolerant):
        w.start()
        w._fd, fd = None, w._fd  # the log is not the point here
        if fd is not None:
            os.close(fd)
    start = "kernel was already tainted at start: 0x1000 (O) (tolerate with --tolerate-taint)"
    assert strict.poll() == [start]
    assert tolerant.poll() == []
    taint[0] |= 1 << 9  # W: a kernel warning
    new = "kernel taint 0x1000 (O) -> 0x1200 (WO): new 0x200 (W)"
    assert strict.poll() == [new] and tolerant.poll() == [new]
    assert strict.poll() == [] and tolerant.poll() == []
