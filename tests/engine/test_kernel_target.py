"""The ktarget (target_support.py, started by the ``spawn`` fixture of conftest.py) itself:
it reports ready and a result, and reads what it is sent."""

from __future__ import annotations


def test_target_reports_ready_and_result(spawn) -> None:
    """The harness of these tests itself: a short nanosleep ends with a clean result."""
    t = spawn("nanosleep", "10")
    r = t.result()
    assert r[0] == "0" and r[1] == "0", r
    assert float(r[2]) >= 10.0
    assert t.exit_status() == 0


def test_target_read_sees_data(spawn) -> None:
    """read mode returns what we write to its stdin."""
    t = spawn("read")
    assert t.proc.stdin is not None
    t.proc.stdin.write(b"abc")
    t.proc.stdin.flush()
    assert t.result() == ["3", "0", "abc"]
