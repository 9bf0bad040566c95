"""The dump's memory worker: the engine's second process (engine/worker.py) and the
private memory of a tree read there while the engine injects into the next task
(engine/dump/memworker.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine.dump import dumper, memworker
from engine.dump.dumper import dump
from engine.errors import EngineError
from engine.proc.status import read_status
from engine.worker import Worker
from tests.engine import cr_support as cr
from tests.engine.dump_support import MEMTREE_TASKS as TASKS
from tests.engine.dump_support import run_engine
from tests.engine.image_tools import mm_parts


def _gone(pid: int) -> bool:
    """Whether process pid no longer runs (exited, or a zombie)."""
    try:
        return read_status(pid).state[0] in "ZX"
    except (FileNotFoundError, ProcessLookupError):
        return True


# -- the worker process --------------------------------------------------------------


def _double(job: Any) -> Any:
    if job == "fail":
        raise EngineError("memory", "this job fails")
    if job == "bug":
        raise KeyError("no such thing")
    if job == "die":
        os._exit(9)
    if job == "sleep":
        time.sleep(30)
    return job * 2


def test_results_come_back_in_order_and_an_error_ends_the_worker() -> None:
    w = Worker(_double, "memory", 10.0)
    try:
        for job in (1, 2, 3):
            w.send(job)
        assert w.results() == [2, 4, 6]
        w.send(4)
        w.send("fail")
        with pytest.raises(EngineError) as e:
            w.results()
        assert e.value.phase == "memory" and e.value.message == "this job fails"
    finally:
        pid = w.pid
        w.close()
    assert _gone(pid)


def test_a_worker_told_done_exits_before_it_is_closed() -> None:
    """done() lets the worker end beside the engine's last steps (close() only reaps)."""
    w = Worker(_double, "memory", 10.0)
    pid = w.pid
    try:
        w.send(1)
        assert w.results() == [2]
        w.done()
        deadline = time.monotonic() + 10
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _gone(pid)
    finally:
        w.close()


def test_a_job_sent_after_the_worker_failed_gets_its_error() -> None:
    w = Worker(_double, "memory", 10.0)
    try:
        w.send("fail")
        time.sleep(0.2)  # it has exited: sending finds its error, not a broken pipe
        with pytest.raises(EngineError, match="^memory: this job fails$"):
            w.send(5)
    finally:
        w.close()


def test_an_unexpected_exception_is_reported_with_its_type() -> None:
    w = Worker(_double, "memory", 10.0)
    try:
        w.send("bug")
        with pytest.raises(EngineError, match="worker: KeyError: 'no such thing'"):
            w.results()
    finally:
        w.close()


def test_a_worker_past_its_deadline_is_killed() -> None:
    w = Worker(_double, "memory", 0.3)
    pid = w.pid
    start = time.monotonic()
    try:
        w.send("sleep")
        with pytest.raises(EngineError, match=f"worker {pid} did not answer within 0.3 s"):
            w.results()
    finally:
        w.close()
    assert _gone(pid) and time.monotonic() - start < 5


def test_a_worker_that_dies_is_reported() -> None:
    w = Worker(_double, "memory", 10.0)
    try:
        w.send("die")
        with pytest.raises(EngineError, match="ended without its results"):
            w.results()
    finally:
        w.close()


def test_results_larger_than_the_pipes_never_block_either_side() -> None:
    """20 results of 200 KB each (the pipes hold 64 KiB) sent before any is taken."""
    w = Worker(_double, "memory", 10.0)
    try:
        for i in range(20):
            w.send(b"%02d" % i * 50_000)
        got = w.results()
    finally:
        w.close()
    assert [r[:2] for r in got] == [b"%02d" % i for i in range(20)]
    assert {len(r) for r in got} == {200_000}


# -- a tree's dump -------------------------------------------------------------------


class _Spy:
    """Records each MemoryWorker the dump makes (and its process)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pids: list[int] = []
        real = memworker.MemoryWorker

        def make(*args: Any) -> memworker.MemoryWorker:
            made = real(*args)
            self.pids.append(made._worker.pid)
            return made
        monkeypatch.setattr(memworker, "MemoryWorker", make)


def _runs_untraced(pids: list[int]) -> bool:
    """Whether every task runs on: not traced, not stopped."""
    return all(read_status(p).tracer_pid == 0 and read_status(p).state[0] in "RS"
               for p in pids)


def _image(path: Path) -> dict[str, Any]:
    """Every file of an image but its stats, the inventory parsed (its order is free)."""
    out: dict[str, Any] = {}
    for f in sorted(path.iterdir()):
        if f.name == "stats.json":
            continue
        out[f.name] = f.read_bytes()
    if "inventory.json" in out:  # its order, creation time and own checksum are free
        inventory = json.loads(out["inventory.json"])
        inventory["checksums"].pop("stats.json")
        out["inventory.json"] = {k: v for k, v in inventory.items()
                                 if k not in ("created", "self_crc")}
    return out


def test_the_worker_writes_what_the_engine_would(memtree: list[int], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The same tree dumped with the worker and without (MIN_TASKS past its size): the
    very same files, byte for byte (pages, pagemaps, mm records, checksums). The pages
    a child shares with its parent, found by the engine before the injections, reach the
    worker's mm records; the two dumps compared are made without looking for them (a
    dump that lets the tree run on leaves it fewer pages shared than it found)."""
    spy = _Spy(monkeypatch)
    # The kernel writes the CPU a task runs on into its rseq area: one CPU for all, on
    # which each task runs (injected by the first dump) before the two compared: the
    # worker reads a task before its injection, the engine after it.
    cpu = min(os.sched_getaffinity(0))
    for p in memtree:
        os.sched_setaffinity(p, {cpu})
    dump(memtree[0], str(tmp_path / "first"), leave_running=True)
    assert len(spy.pids) == 1 and _gone(spy.pids[0])
    cow = {p: mm_parts(tmp_path / "first" / f"mm-{p}.img")[0]["cow"] for p in memtree}
    assert not cow[memtree[0]] and all(cow[p] for p in memtree[1:])
    monkeypatch.setattr(dumper.procpagemap, "zero_pfn", lambda: 0)
    dump(memtree[0], str(tmp_path / "worker"), leave_running=True)
    assert len(spy.pids) == 2
    monkeypatch.setattr(memworker, "MIN_TASKS", TASKS + 1)
    dump(memtree[0], str(tmp_path / "engine"), leave_running=True)
    assert len(spy.pids) == 2  # no worker this time
    with_worker, alone = _image(tmp_path / "worker"), _image(tmp_path / "engine")
    assert sorted(with_worker) == sorted(alone)
    assert {f"pages-{p}.img" for p in memtree} <= set(with_worker)
    for name in sorted(alone, key=lambda n: n == "inventory.json"):  # files first
        assert with_worker[name] == alone[name], name
    assert _runs_untraced(memtree)


def test_a_failing_worker_fails_the_dump_and_leaves_nothing(
        memtree: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's error is the dump's; every task runs on, untraced; the image
    directory and the worker are gone."""
    spy = _Spy(monkeypatch)
    calls = {"n": 0}
    real = dumper._read_memory

    def fail_third(*args: Any) -> Any:  # runs in the worker: its first two tasks are read
        calls["n"] += 1
        if calls["n"] == 3:
            raise EngineError("memory", "worker fault")
        return real(*args)
    monkeypatch.setattr(dumper, "_read_memory", fail_third)
    with pytest.raises(EngineError, match="worker fault") as e:
        dump(memtree[0], str(tmp_path / "img"), leave_running=True)
    assert e.value.phase == "memory"
    assert not (tmp_path / "img").exists()
    assert len(spy.pids) == 1 and _gone(spy.pids[0])
    assert _runs_untraced(memtree)


def test_the_worker_dies_with_the_engine(memtree: list[int], tmp_path: Path) -> None:
    """An engine killed after the injections (paused there) takes its worker with it;
    the tree runs on."""
    env = dict(os.environ, ENGINE_PAUSE="sigactions")
    env.pop("ENGINE_FAULT", None)
    eng = subprocess.Popen([sys.executable, "-m", "engine", "dump", "-t", str(memtree[0]),
                            "-D", str(tmp_path / "img"), "--leave-running"], cwd=cr.ROOT,
                           env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert eng.stderr is not None
        assert "paused at sigactions" in eng.stderr.readline()
        children = [int(p) for tid in os.listdir(f"/proc/{eng.pid}/task")
                    for p in Path(f"/proc/{eng.pid}/task/{tid}/children").read_text().split()]
        assert len(children) == 1  # the worker
        eng.kill()
        eng.wait(timeout=10)
        deadline = time.monotonic() + 5
        while not _gone(children[0]):
            assert time.monotonic() < deadline, "the worker outlived the engine"
            time.sleep(0.01)
    finally:
        eng.kill()
        eng.wait(timeout=10)
    deadline = time.monotonic() + 5
    while not _runs_untraced(memtree):  # the kernel detaches a dead tracer's tasks
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _engines_of(images: Path) -> list[int]:
    """Processes (the engine, its worker) whose command line names this image dir."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if str(images).encode() in cmdline.split(b"\0"):
                out.append(int(entry))
    return out


@pytest.mark.parametrize("step", ["sigactions", "memory", "files", "write"])
def test_a_fault_after_the_worker_started_leaves_nothing(memtree: list[int], tmp_path: Path,
                                                         step: str) -> None:
    """A dump of a tree the worker reads, failing at each step from the injections on:
    the error is the step's, every task runs on untraced, and neither the image
    directory nor any process of the engine is left."""
    images = tmp_path / "img"
    res = run_engine("dump", "-t", str(memtree[0]), "-D", str(images),
                     env={"ENGINE_FAULT": step})
    assert res.returncode == 1 and f"error: {step}: fault injected" in res.stderr
    assert not images.exists()
    deadline = time.monotonic() + 5
    while _engines_of(images) or not _runs_untraced(memtree):
        assert time.monotonic() < deadline, (_engines_of(images), memtree)
        time.sleep(0.01)
