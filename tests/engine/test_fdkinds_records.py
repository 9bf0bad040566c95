"""files.json records of eventfd, signalfd, timerfd, epoll, inotify, fanotify and pidfd
files: read back as written, and refused (one RecordError naming the field) when out of range."""

from __future__ import annotations

from typing import Any

import pytest

from engine.images import codec
from engine.images.records import FdEntry, FileRecord, RecordError, SigactionRecord

BASE: dict[str, Any] = {"id": 3, "type": "anon_inode", "flags": 2}
GOOD = {
    "eventfd": {"count": (1 << 64) - 2, "semaphore": True},
    "signalfd": {"sigmask": 0x3 << 9},
    "timerfd": {"clockid": 1, "settime_flags": 1, "value_ns": 5, "interval_ns": 0,
                "ticks": 2},
    "epoll": [{"tfd": 4, "file_id": 1, "events": 0x80000019, "data": (1 << 64) - 1}],
    "inotify": [{"wd": 3, "mask": 0x84000300, "path": "/tmp/d", "dev": 0xFE00000,
                 "ino": 77}],
    "fanotify": {"flags": 0x203, "event_flags": 0x8000,
                 "marks": [{"kind": "mount", "path": "/", "mflags": 0x40, "mask": 0,
                            "ignored_mask": 0x20}]},
    "pidfd": {"pid": 42},
}
BAD = {
    "eventfd at 2^64-1": {"eventfd": {"count": (1 << 64) - 1, "semaphore": False}},
    "timerfd clock 3 (process cputime)": {"timerfd": dict(GOOD["timerfd"], clockid=3)},
    "timerfd unknown settime flag": {"timerfd": dict(GOOD["timerfd"], settime_flags=4)},
    "timerfd negative interval": {"timerfd": dict(GOOD["timerfd"], interval_ns=-1)},
    "epoll unknown event bit": {"epoll": [dict(GOOD["epoll"][0], events=1 << 20)]},
    "epoll negative fd": {"epoll": [dict(GOOD["epoll"][0], tfd=-1)]},
    "inotify wd 0": {"inotify": [dict(GOOD["inotify"][0], wd=0)]},
    "inotify mask without events": {"inotify": [dict(GOOD["inotify"][0], mask=0x80000000)]},
    "inotify relative path": {"inotify": [dict(GOOD["inotify"][0], path="tmp/d")]},
    "fanotify mark of unknown kind": {"fanotify": dict(GOOD["fanotify"], marks=[
        dict(GOOD["fanotify"]["marks"][0], kind="cgroup")])},
    "fanotify 64-bit mask": {"fanotify": dict(GOOD["fanotify"], marks=[
        dict(GOOD["fanotify"]["marks"][0], mask=1 << 40)])},
    "pidfd of pid 0": {"pidfd": {"pid": 0}},
    "two states in one file": {"eventfd": GOOD["eventfd"], "signalfd": GOOD["signalfd"]},
    "anon_inode without state": {},
}


def _load(extra: dict[str, Any]) -> FileRecord:
    return codec.from_dict(FileRecord, {**BASE, **extra})  # validates every nested record


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_each_kind_round_trips(kind: str) -> None:
    rec = _load({kind: GOOD[kind]})
    assert codec.from_dict(FileRecord, codec.to_dict(rec)) == rec


@pytest.mark.parametrize("case", sorted(BAD))
def test_out_of_range_state_is_refused(case: str) -> None:
    with pytest.raises(RecordError):
        _load(BAD[case])


def test_unix_socket_state_is_checked() -> None:
    good = {"type": 5, "peer": 77, "shutdown": 3, "queued": [3, 14]}
    assert _load({"type": "socket", "unix": good}).unix is not None
    assert _load({"type": "socket", "unix": {**good, "peer": 0, "name": "\0x", "state": 10,
                                             "backlog": 4, "icons": [78]}}).unix is not None
    for bad in ({"type": 3}, {"peer": -1}, {"shutdown": 4}, {"queued": [-1]}, {"state": 2},
                {"icons": [78]}, {"rights": [[1]]}, {"senders": ["a", "b", "c"]},
                {"name": "x" * 109}, {"name": "/abs", "dir": "/tmp"}):
        with pytest.raises(RecordError):
            _load({"type": "socket", "unix": {**good, **bad}})
    with pytest.raises(RecordError):
        _load({"type": "socket"})  # a socket without its state


@pytest.mark.parametrize("row, message", [
    ([99, 0, 0, 0, 0], "[3]: bad signal 99"),
    ([4, True, 0, 0, 0], "[3].handler: expected an integer, got True"),
    ([4, 0, 0, 0], "[3]: expected an array of the 5 fields"),
    ([4, 0, 0, 0, -1], "[3]: sigaction 4 mask"),
])
def test_sigaction_rows_checked_in_bulk_name_a_bad_row(row: list[Any], message: str) -> None:
    """A task's sigactions, int-only rows, are checked all at once; a bad one is still
    refused naming its index and field."""
    rows = [[s, 0, 0, 0, 0] for s in range(1, 9)]
    convert = codec._converter(list[SigactionRecord])
    got = convert(rows)
    assert [r.signo for r in got] == list(range(1, 9))
    rows[3] = row
    with pytest.raises(codec._PathError) as e:
        convert(rows)
    assert message in f"{e.value.path}: {e.value.message}"


@pytest.mark.parametrize("change, message", [
    ({}, None),
    ({"cloexec": True}, None),
    ({"fd": "3"}, ".fd: expected an integer, got '3'"),
    ({"fd": True}, ".fd: expected an integer, got True"),
    ({"fd": -1}, ": bad fd entry -1"),
    ({"extra": 1}, ": unknown field(s) ['extra']"),
    ({"file_id": None}, ".file_id: expected an integer, got None"),
])
def test_compiled_converter_agrees_with_the_general_one(change: dict[str, Any],
                                                        message: str | None) -> None:
    """A record's compiled converter makes what the general one makes, defaults
    included, and leaves every refusal to it (the same located message)."""
    data = {"fd": 3, "file_id": 7, **change}
    compiled = codec._converter(FdEntry)
    general = codec._general_record_converter(FdEntry)
    assert compiled is not general
    if message is None:
        assert compiled(data) == general(data) == FdEntry(3, 7, change.get("cloexec", False))
        return
    for convert in (compiled, general):
        with pytest.raises(codec._PathError) as e:
            convert(data)
        assert f"{e.value.path}: {e.value.message}" == message
