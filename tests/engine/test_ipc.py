"""SysV IPC and POSIX message queues in the engine: the /proc/sysvipc parser, the records
of ipc.json and of a queue (read back as written, hostile values refused), what the dump
refuses while the task runs on, a failed dump that loses no queued message, and forged
ipc images refused by restore before any task exists."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.images import codec
from engine.images.fdkinds import MqueueState
from engine.images.ipcns import IpcImage, attaches
from engine.images.records import VMA_KINDS, RecordError, Vma
from engine.proc import sysvipc
from tests.engine import cr_support as cr
from tests.engine.dump_support import run_engine
from tests.engine.image_tools import V_INODE, V_KIND, edit_vma_rows, reseal


def test_sysvipc_tables_parse() -> None:
    text = ("       key      semid perms      nsems   uid   gid  cuid  cgid      otime      "
            "ctime\n1073741873          0   660          5  1234  2345     0     0 1796401800 "
            "1796401799\n         0          1   600          2     0     0     0     0     "
            "     0 1796401799\n")
    rows = sysvipc.parse("sem", text)
    assert [(r["id"], r["key"], r["perms"], r["nsems"], r["uid"]) for r in rows] == [
        (0, 0x40000031, 0o660, 5, 1234), (1, 0, 0o600, 2, 0)]
    with pytest.raises(ValueError, match="unexpected header"):
        sysvipc.parse("shm", text)


GOOD_IPC: dict[str, Any] = {
    "sysctls": {"kernel/msgmnb": "20000", "kernel/sem": "32000 1024000000 500 32000"},
    "shm": [{"id": 0, "key": 0, "mode": 0o1600, "uid": 1, "gid": 2, "cuid": 0, "cgid": 0,
             "size": 20580, "pagemap": "pagemap-sysv-0.img", "pages": "pages-sysv-0.img"}],
    "sem": [{"id": 3, "key": 0x40000031, "mode": 0o660, "uid": 0, "gid": 0, "cuid": 0,
             "cgid": 0, "sems": [[0, "none", 0], [7, "task", 12], [3, "gone", 4],
                                 [1, "outside", 0]], "operated": True}],
    "msg": [{"id": 5, "key": 0x40000032, "mode": 0o620, "uid": 0, "gid": 0, "cuid": 0,
             "cgid": 0, "qbytes": 3000, "types": [1, 5], "sizes": [0, 100],
             "content": "msg-5.data"}],
}


def _ipc(**change: Any) -> dict[str, Any]:
    """GOOD_IPC with one object's fields changed: change={"sem": {"sems": [...]}}."""
    out = json.loads(json.dumps(GOOD_IPC))
    for kind, fields in change.items():
        if kind == "sysctls":
            out["sysctls"] = fields
        else:
            out[kind][0].update(fields)
    return out


BAD_IPC = {
    "unknown sysctl": _ipc(sysctls={"kernel/hostname": "1"}),
    "sysctl not a number": _ipc(sysctls={"kernel/msgmax": "8192; rm"}),
    "segment mode with other bits": _ipc(shm={"mode": 0o4600}),
    "segment marked for removal with a key": _ipc(shm={"key": 7}),
    "segment of size 0": _ipc(shm={"size": 0}),
    "segment pages outside the image": _ipc(shm={"pages": "../pages-1.img"}),
    "semaphore above SEMVMX": _ipc(sem={"sems": [[32768, "task", 12]]}),
    "semaphore gone without a pid": _ipc(sem={"sems": [[1, "gone", 0]]}),
    "semaphore of an unknown kind of last process": _ipc(sem={"sems": [[1, "ghost", 1]]}),
    "semaphore set without semaphores": _ipc(sem={"sems": []}),
    "semaphore with a value nothing set": _ipc(sem={"sems": [[2, "none", 0]]}),
    "set mode with SHM_DEST": _ipc(sem={"mode": 0o1660}),
    "message type 0": _ipc(msg={"types": [0, 5]}),
    "one type too few": _ipc(msg={"types": [1]}),
    "messages beyond msg_qbytes": _ipc(msg={"qbytes": 50}),
    "negative owner": _ipc(msg={"uid": -1}),
    "id beyond 2^31": _ipc(msg={"id": 1 << 31}),
}


def test_ipc_image_round_trips() -> None:
    rec = codec.from_dict(IpcImage, GOOD_IPC)
    assert codec.from_dict(IpcImage, json.loads(json.dumps(codec.to_dict(rec)))) == rec


@pytest.mark.parametrize("case", sorted(BAD_IPC))
def test_hostile_ipc_values_are_refused(case: str) -> None:
    with pytest.raises(RecordError):
        codec.from_dict(IpcImage, BAD_IPC[case])


GOOD_MQ: dict[str, Any] = {"name": "zdtm-mq", "maxmsg": 8, "msgsize": 128, "mode": 0o640,
                           "uid": 0, "gid": 0, "atime_ns": 1, "mtime_ns": 2,
                           "prios": [31, 5, 5, 0], "sizes": [0, 128, 1, 40]}
BAD_MQ = {
    "name with a slash": {"name": "a/b"},
    "empty name": {"name": ""},
    "maxmsg 0": {"maxmsg": 0},
    "msgsize beyond the kernel's": {"msgsize": (1 << 24) + 1},
    "more messages than maxmsg": {"maxmsg": 3},
    "message larger than msgsize": {"sizes": [0, 129, 1, 40]},
    "priorities out of receive order": {"prios": [5, 31, 5, 0]},
    "priority 32768": {"prios": [32768, 5, 5, 0]},
    "one size too few": {"sizes": [0, 1, 2]},
}


def test_mqueue_state_round_trips() -> None:
    rec = codec.from_dict(MqueueState, GOOD_MQ)
    assert codec.from_dict(MqueueState, codec.to_dict(rec)) == rec


@pytest.mark.parametrize("case", sorted(BAD_MQ))
def test_hostile_mqueue_values_are_refused(case: str) -> None:
    with pytest.raises(RecordError):
        codec.from_dict(MqueueState, {**GOOD_MQ, **BAD_MQ[case]})


def _vma(start: int, end: int, pgoff: int, shmid: int) -> Vma:
    return Vma(start, end, 3, 1, pgoff, "sysv", "/SYSV00000000", "00:01", shmid)


def test_attaches_are_whole_segments() -> None:
    """VMAs split by mprotect form one attach; a part of a segment does not."""
    p = 0x1000
    split = [_vma(0x10000, 0x10000 + p, 0, 4), _vma(0x10000 + p, 0x10000 + 3 * p, p, 4),
             _vma(0x10000 + 3 * p, 0x10000 + 6 * p, 0, 4)]
    found = attaches(split, {4: 3 * p})
    assert [(a.shmid, a.start, len(a.vmas)) for a in found] == [
        (4, 0x10000, 2), (4, 0x10000 + 3 * p, 1)]
    for vmas, why in (([_vma(0x10000, 0x10000 + p, p, 4)], "from offset"),
                      ([_vma(0x10000, 0x10000 + p, 0, 4)], "only part"),
                      ([_vma(0x10000, 0x10000 + p, 0, 9)], "not in the tree's ipc")):
        with pytest.raises(ValueError, match=why):
            attaches(vmas, {4: 3 * p})


@pytest.fixture(autouse=True)
def _subreaper() -> None:
    cr.become_subreaper()


# Each holder sets something up the dump must refuse, says "ready", waits; libc through
# ctypes. Namespaces are the holder's own where the case needs one (it is root here).
_PRELUDE = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
def ok(res, what):
    if res == -1 or res is None:
        raise OSError(ctypes.get_errno(), what)
    return res
"""
REFUSED = {
    "SysV attach in the engine's ipc namespace": (
        ("s = ok(libc.shmget(0, 8192, 0o1600), 'shmget'); ok(libc.shmat(s, None, 0), 'shmat');"
        " ok(libc.shmctl(s, 0, None), 'IPC_RMID')"),
        "SysV shared memory of the engine's own ipc namespace"),
    "a part of a segment attached": (
        ("ok(libc.unshare(0x08000000), 'unshare'); s = ok(libc.shmget(0, 3 * 4096, 0o1600), "
        "'shmget'); a = ok(libc.shmat(s, None, 0), 'shmat'); ok(libc.munmap(ctypes.c_void_p("
        "a + 4096), 4096), 'munmap')"),
        "maps only part of SysV segment 0: cannot be attached so again"),
    "a task below the root's ipc namespace": (
        ("if os.fork() == 0:\n    libc.prctl(1, 9); ok(libc.unshare(0x08000000), 'unshare'); "
        "time.sleep(60)\ntime.sleep(0.3)"),
        "an ipc namespace below the root's is not supported"),
    "a queue with a notification registered": (
        ("name = b'/zdtm-notify-%d' % os.getpid(); q = ok(libc.mq_open(name, 0o102, 0o600, "
        "None), 'mq_open'); libc.mq_unlink(name); ev = (ctypes.c_int * 16)(); ev[3] = 1; "
        "ok(libc.mq_notify(q, ev), 'mq_notify')"),  # sigev_notify (offset 12) SIGEV_NONE
        "a notification is registered (mq_notify by pid"),
}


@pytest.mark.parametrize("what", sorted(REFUSED))
def test_ipc_state_is_refused_at_dump(what: str, tmp_path: Path) -> None:
    """One line naming the object; the task runs on untraced, its fds as they were."""
    setup, expected = REFUSED[what]
    code = f"{_PRELUDE}\n{setup}\nprint('ready', flush=True)\ntime.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-S", "-c", code], stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        fds = sorted(os.listdir(f"/proc/{holder.pid}/fd"))
        images = tmp_path / "img"
        res = run_engine("dump", "-t", str(holder.pid), "-D", str(images))
        assert res.returncode == 1, res.stderr
        line = res.stderr.strip()
        assert line.startswith("engine: error: ") and "\n" not in line, line
        assert expected in line, line
        print(line, file=sys.stderr)
        assert not images.exists()
        status = Path(f"/proc/{holder.pid}/status").read_text()
        assert "TracerPid:\t0\n" in status and "State:\tS" in status
        assert sorted(os.listdir(f"/proc/{holder.pid}/fd")) == fds
    finally:
        for pid in reversed(cr.tree_of(holder.pid)):
            cr.kill_reap(pid)


@pytest.mark.parametrize("step", ["files", "write"])
def test_failed_dump_loses_no_queued_message(step: str, tmp_path: Path) -> None:
    """The dump takes every message of a queue and sends it back; failing after that
    (a fault at the end of the files step, or at the write) leaves the queue as it was:
    the test's own verdict checks each message, its priority and order."""
    t = cr.ZdtmTest.start("posix_mqueue_unlinked", tmp_path / "w")
    try:
        images = tmp_path / "img"
        res = cr.engine("dump", "-t", str(t.pid), "-D", str(images),
                        env={"ENGINE_FAULT": step})
        assert res.returncode == 1 and f"fault injected (ENGINE_FAULT={step})" in res.stderr
        assert not images.exists()
        assert t.stop() == "PASS"
    finally:
        t.cleanup()


def test_linked_queue_of_the_engines_namespace_is_opened_again(tmp_path: Path) -> None:
    """A linked queue of the engine's own ipc namespace outlives the dumped tree, with the
    messages the dump gave back: restore opens it again by name (and makes the unlinked
    one anew); the restored test finds both as they were. The queue is unlinked whatever
    happens (it is the host's)."""
    libc = ctypes.CDLL(None, use_errno=True)
    t = cr.ZdtmTest.start("posix_mqueue", tmp_path / "w")
    linked = f"/zdtm-mq-{t.pid}-1".encode()
    try:
        r = cr.dump_restore(t, tmp_path / "img")
        assert r.returncode == 0, r.stderr
        assert t.stop() == "PASS"
    finally:
        t.cleanup()
        libc.mq_unlink(linked)


# ---- forged images of a tree in an ipc namespace of its own -----------------------------

OWN_NS_HOLDER = _PRELUDE + """
ok(libc.unshare(0x08000000), 'unshare')
s = ok(libc.shmget(0, 20000, 0o1600), 'shmget'); a = ok(libc.shmat(s, None, 0), 'shmat')
ctypes.memset(a, 7, 5000)
m = ok(libc.semget(0x1234, 3, 0o1600), 'semget')
ok(libc.semctl(m, 1, 16, 5), 'SETVAL')
q = ok(libc.msgget(0x4321, 0o1600), 'msgget')
buf = ctypes.create_string_buffer(b'\\x05' + b'\\0' * 7 + b'hello')
ok(libc.msgsnd(q, buf, 5, 0), 'msgsnd')
print('ready', flush=True)
time.sleep(60)
"""


@pytest.fixture(scope="module")
def own_ns_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A holder with a segment (attached), a semaphore set and a queue in an ipc
    namespace of its own, dumped and killed (its namespace goes with it)."""
    cr.become_subreaper()
    images = tmp_path_factory.mktemp("ipcimg") / "img"
    holder = subprocess.Popen([sys.executable, "-S", "-c", OWN_NS_HOLDER],
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        res = cr.engine("dump", "-t", str(holder.pid), "-D", str(images))
        assert res.returncode == 0, res.stderr
        holder.wait(timeout=10)
        yield images
    finally:
        if holder.poll() is None:
            cr.kill_reap(holder.pid)


def _edit(path: Path, fn: Callable[[Any], None]) -> None:
    data = json.loads(path.read_bytes())
    fn(data)
    path.write_text(json.dumps(data))


def _sysv_segment_99(rows: list[list[int]]) -> None:
    """The sysv VMA made an attach of segment 99 (its inode is the segment id)."""
    next(r for r in rows if r[V_KIND] == VMA_KINDS.index("sysv"))[V_INODE] = 99


def _shrink_segment(d: Any) -> None:
    d["shm"][0]["size"] = 4096


FORGED: dict[str, tuple[str, Callable[[Any], None], str]] = {
    "semaphore last changed by a task not in the image": (
        "ipc.json", lambda d: d["sem"][0]["sems"][1].__setitem__(1, "task")
        or d["sem"][0]["sems"][1].__setitem__(2, 4000000),
        "last changed by task 4000000, not in the image"),
    "segment smaller than its pages": ("ipc.json", _shrink_segment, "beyond the segment's"),
    "message longer than its content": (
        "ipc.json", lambda d: d["msg"][0]["sizes"].__setitem__(0, 6), "holds 5 bytes"),
    "attach of a segment that is not there": (
        "vmas", _sysv_segment_99, "SysV segment 99 is not in"),
    "ipc file in a tree without its own ipc namespace": (
        "inventory.json", lambda d: [n.__setitem__("shared_with_engine", True)
                                     for n in d["namespaces"] if n["type"] == "ipc"],
        "the tree has no ipc namespace of its own"),
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_forged_ipc_image_is_refused(case: str, own_ns_image: Path, tmp_path: Path) -> None:
    """restore and show refuse with one line naming the file, and no task is made."""
    name, edit, words = FORGED[case]
    images = tmp_path / "img"
    shutil.copytree(own_ns_image, images)
    if name == "vmas":
        edit_vma_rows(next(images.glob("mm-*.img")), edit)
    else:
        _edit(images / name, edit)
    assert reseal(images)
    before = set(cr.tree_of(os.getpid()))
    for cmd in (["restore", "-D", str(images), "-d"], ["show", str(images)]):
        r = cr.engine(*cmd, timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert lines[0].startswith("engine: error: read: ") and words in lines[0], lines[0]
    assert set(cr.tree_of(os.getpid())) == before
