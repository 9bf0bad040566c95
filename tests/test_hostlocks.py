"""Machine-wide host-resource locks: what a test needs in which flavour, and two holders
meeting on one lock (the second waits, then gets it; past its wait it fails cleanly)."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from zdtm import hostlocks


def test_only_flagged_tests_in_h_need_host_locks() -> None:
    assert hostlocks.needed(frozenset({"pty"}), "h") == ["pty"]
    assert hostlocks.needed(frozenset({"pty"}), "ns") == []
    assert hostlocks.needed(frozenset({"pty"}), "uns") == []
    assert hostlocks.needed(frozenset({"excl"}), "h") == []
    assert hostlocks.needed(frozenset({"rawnet", "pty"}), "h") == ["pty", "rawnet"]
    assert hostlocks.needed(frozenset({"rawnet"}), "ns") == []


def _hold_for(seconds: float, ready: multiprocessing.synchronize.Event) -> None:
    with hostlocks.hold(["selftest"]):
        ready.set()
        time.sleep(seconds)


def test_second_holder_waits_then_times_out_or_gets_it() -> None:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    other = ctx.Process(target=_hold_for, args=(1.5, ready))
    other.start()
    try:
        assert ready.wait(10)
        with pytest.raises(TimeoutError, match="zdtm-host-selftest.lock"):
            hostlocks.hold(["selftest"], wait=0.2)
        with hostlocks.hold(["selftest"], wait=30) as held:
            assert held.waited > 0.5  # it got the lock once the other let go
            assert held.fds
        assert held.fds == []
    finally:
        other.join(10)
    assert other.exitcode == 0


def test_no_names_holds_nothing() -> None:
    with hostlocks.hold([]) as held:
        assert held.fds == [] and held.waited < 1
