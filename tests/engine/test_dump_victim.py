"""The dump tests' victim (dump_support.py, the ``victim`` fixture of conftest.py) passes its
own self-check when left alone, and that self-check can fail."""

from __future__ import annotations

import os

from tests.engine.dump_support import Victim


def test_victim_passes_its_own_check_untouched(victim: Victim) -> None:
    """Control: left alone, the victim runs and its final check passes."""
    assert victim.is_running()
    assert victim.finish() == (0, "")


def test_victim_check_catches_a_consumed_pipe(victim: Victim) -> None:
    """The self-check can fail: stealing the pipe data (as a careless dumper would)
    makes it exit with the pipe check's code."""
    fd = os.open(f"/proc/{victim.pid}/fd/3", os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert os.read(fd, 64) == b"pipe-data-123"
    finally:
        os.close(fd)
    code, err = victim.finish()
    assert code == 5 and "pipe data" in err


def test_victim_check_catches_changed_memory(victim: Victim) -> None:
    """The self-check can fail: one flipped byte of anonymous memory is seen."""
    fd = os.open(f"/proc/{victim.pid}/mem", os.O_RDWR)
    try:
        os.pwrite(fd, b"\xee", victim.anon + 4096 * 3 + 512)
    finally:
        os.close(fd)
    code, err = victim.finish()
    assert code == 1 and "anon memory" in err
