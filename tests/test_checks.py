"""Unit tests of zdtm.checks on hand-made snapshots: each check fails on the difference it
exists for, says so in words naming the process, fd or VMA, and stays quiet otherwise."""

from __future__ import annotations

import copy

from zdtm import checks, snapshot
from zdtm.memory import DIGEST_SIZE, ZERO_DIGEST, page_digest
from zdtm.proc import PAGE_SIZE
from zdtm.ptrace_visit import RseqConfig
from zdtm.snapshot import OUTSIDE, FdState, OwnState, ProcState, TreeState, VmaState

P = PAGE_SIZE
RW = frozenset({"rd", "wr", "mr", "mw", "me"})


def _digest(*pages: bytes) -> bytes:
    return b"".join(page_digest(p.ljust(P, b"\0")) if p else ZERO_DIGEST for p in pages)


def _proc(pid: int, ppid: int | str, **kw: object) -> ProcState:
    ps = ProcState(pid=pid, real_pid=pid, ppid=ppid, pgid=kw.pop("pgid", 100),
                   sid=kw.pop("sid", 100), state="T", comm=kw.pop("comm", "t"),
                   threads=kw.pop("threads", (pid,)))
    ps.fds = {
        0: FdState("/dev/null", 0, 0),
        1: FdState("/tmp/out", 0o102001, 77),
        3: FdState("pipe[pid 100 fd 3]", 0, 0),
        4: FdState("pipe[pid 100 fd 3]", 1, 0),
    }
    ps.maps = [
        VmaState(0x1000, 0x3000, "rw-p", "", None, None, RW, _digest(b"a", b"")),
        VmaState(0x10000, 0x11000, "r--p", "/tmp/f", 0, None, frozenset({"rd", "mr"}),
                 _digest(b"f")),
        VmaState(0x20000, 0x21000, "rw-s", "/dev/zero (deleted)", 0, "obj[pid 100 20000]",
                 RW | {"sh"}, _digest(b"s")),
    ]
    ps.namespaces = {"uts": "host", "pid": "host"}
    ps.attrs = {"Umask": "0022", "SigCgt": "0000000000004a02", "limit Max open files":
                "1024 4096 files", "cwd": "/tmp/w"}
    ps.thread_attrs = {t: {"SigBlk": "0000000000000000", "SigPnd": "0000000000000000"}
                       for t in ps.threads}
    ps.rseq = {t: RseqConfig(0x7000, 32, 0x53053053) for t in ps.threads}
    for key, value in kw.items():
        setattr(ps, key, value)
    return ps


def _tree() -> TreeState:
    return TreeState(root=100, procs={100: _proc(100, OUTSIDE), 101: _proc(101, 100)})


def _messages(before: TreeState, after: TreeState) -> list[str]:
    return [str(p) for p in checks.compare(before, after)]


def test_identical_trees_have_no_problems() -> None:
    assert checks.compare(_tree(), _tree()) == []


def test_wrong_ppid() -> None:
    after = _tree()
    after.procs[101].ppid = 1
    assert _messages(_tree(), after) == ["tree: pid 101 (t): ppid 100 -> 1"]


def test_process_missing_and_appeared() -> None:
    after = _tree()
    gone = after.procs.pop(101)
    gone.pid = gone.real_pid = 102
    after.procs[102] = gone
    assert _messages(_tree(), after) == [
        "tree: pid 101 (t) missing after restore",
        "tree: pid 102 (t) appeared after restore (ppid 100)",
    ]


def test_pgid_sid_threads_state() -> None:
    after = _tree()
    p = after.procs[100]
    p.pgid, p.sid, p.state, p.threads = 101, 1, "S", (100, 105)
    msgs = _messages(_tree(), after)
    assert "tree: pid 100 (t): pgid 100 -> 101" in msgs
    assert "tree: pid 100 (t): sid 100 -> 1" in msgs
    assert "tree: pid 100 (t): state T -> S" in msgs
    assert "tree: pid 100 (t): threads 1 -> 2 (tids [100] -> [100, 105])" in msgs


def test_outer_pid_is_named_when_it_differs() -> None:
    after = _tree()
    after.procs[101].real_pid = 5555
    after.procs[101].ppid = 1
    assert _messages(_tree(), after) == ["tree: pid 101 [5555] (t): ppid 100 -> 1"]


def test_fd_leaked_lost_and_changed() -> None:
    after = _tree()
    fds = after.procs[100].fds
    fds[7] = FdState("/tmp/x", 0o100000, 0)
    del fds[0]
    fds[1] = FdState("/tmp/out", 0o102001, 78)
    fds[3] = FdState("pipe[pid 101 fd 3]", 0, 0)
    assert _messages(_tree(), after) == [
        "fds: pid 100 (t): fd 0 lost after restore: /dev/null (flags O_RDONLY, pos 0)",
        "fds: pid 100 (t): fd 1 /tmp/out: pos 77 -> 78",
        "fds: pid 100 (t): fd 3 pipe[pid 100 fd 3]: target pipe[pid 100 fd 3] -> pipe[pid 101 fd 3]",
        "fds: pid 100 (t): fd 7 leaked after restore: /tmp/x (flags O_RDONLY|O_LARGEFILE, pos 0)",
    ]


def test_fd_flags_and_sharing() -> None:
    before, after = _tree(), _tree()
    before.procs[100].fds[1] = FdState("/tmp/out", 0o102001, 77, "ofd[pid 100 fd 1]")
    after.procs[100].fds[1] = FdState("/tmp/out", 0o2001, 77, None)
    assert _messages(before, after) == [
        ("fds: pid 100 (t): fd 1 /tmp/out: flags O_WRONLY|O_APPEND|O_LARGEFILE -> "
        "O_WRONLY|O_APPEND, open file description ofd[pid 100 fd 1] -> not shared")
    ]


def test_fdinfo_lines_with_one_key_are_each_named() -> None:
    # an inotify group lists one "inotify wd" line per watch: a lost flag on any of them is
    # named, and the lines that stayed are not
    def group(*masks: str) -> FdState:
        wds = tuple(("inotify wd", f"{wd} ino:{wd} sdev:fe00000 mask:{m} ignored_mask:0")
                    for wd, m in enumerate(masks, 1))
        return FdState("anon_inode:inotify", 0o4000, 0, extra=wds)

    before, after = _tree(), _tree()
    before.procs[100].fds[5] = group("300", "80000004", "4000004")
    after.procs[100].fds[5] = group("300", "4", "4")
    assert _messages(before, after) == [
        ("fds: pid 100 (t): fd 5 anon_inode:inotify: fdinfo lost "
         "'inotify wd: 2 ino:2 sdev:fe00000 mask:80000004 ignored_mask:0'; "
         "'inotify wd: 3 ino:3 sdev:fe00000 mask:4000004 ignored_mask:0', gained "
         "'inotify wd: 2 ino:2 sdev:fe00000 mask:4 ignored_mask:0'; "
         "'inotify wd: 3 ino:3 sdev:fe00000 mask:4 ignored_mask:0'")
    ]
    after.procs[100].fds[5] = group("300", "80000004")
    assert _messages(before, after) == [
        ("fds: pid 100 (t): fd 5 anon_inode:inotify: fdinfo lost "
         "'inotify wd: 3 ino:3 sdev:fe00000 mask:4000004 ignored_mask:0'")
    ]


def test_fd_raw_target_is_not_compared() -> None:
    before, after = _tree(), _tree()
    before.procs[100].fds[3] = FdState("pipe[pid 100 fd 3]", 0, 0, raw="pipe:[111]")
    after.procs[100].fds[3] = FdState("pipe[pid 100 fd 3]", 0, 0, raw="pipe:[999]")
    assert _messages(before, after) == []


def test_vma_missing_appeared_changed() -> None:
    after = _tree()
    maps = after.procs[101].maps
    lost = maps.pop(1)
    maps.append(VmaState(0x30000, 0x31000, "rw-p", "", None, None, RW, _digest(b"")))
    maps[1] = VmaState(0x20000, 0x21000, "rw-s", "/dev/zero (deleted)", 0, "obj[pid 101 20000]",
                       RW, maps[1].digest)
    msgs = _messages(_tree(), after)
    assert msgs == [
        f"maps: pid 101 (t): VMA {lost.describe()} missing after restore",
        ("maps: pid 101 (t): VMA 20000..21000 rw-s /dev/zero (deleted) [obj[pid 100 20000]]: "
        "object_id obj[pid 100 20000] -> obj[pid 101 20000], VmFlags lost [sh] gained [-]"),
        "maps: pid 101 (t): VMA 30000..31000 rw-p anon appeared after restore",
    ]
    assert lost.describe() == "10000..11000 r--p /tmp/f"


def test_memory_names_vma_and_first_page() -> None:
    after = _tree()
    v = after.procs[100].maps[0]
    after.procs[100].maps[0] = VmaState(v.start, v.end, v.perms, v.path, v.offset, v.object_id,
                                        v.flags, _digest(b"a", b"x"))
    assert _messages(_tree(), after) == [
        ("memory: pid 100 (t): VMA 1000..3000 rw-p anon: page 0x2000 differs "
        "(zero before, data after)")
    ]


def test_memory_compared_where_layouts_overlap() -> None:
    """A VMA that shrank is reported by maps, and its remaining pages still by memory."""
    before, after = _tree(), _tree()
    pages = [bytes([i + 1]) for i in range(4)]
    before.procs[100].maps[0] = VmaState(0x1000, 0x5000, "rw-p", "", None, None, RW,
                                         _digest(*pages))
    pages[3] = b"changed"
    after.procs[100].maps[0] = VmaState(0x2000, 0x5000, "rw-p", "", None, None, RW,
                                        _digest(*pages[1:]))
    msgs = _messages(before, after)
    assert "maps: pid 100 (t): VMA 1000..5000 rw-p anon missing after restore" in msgs
    assert ("memory: pid 100 (t): VMA 1000..5000 rw-p anon: page 0x4000 differs "
            "(data before, data after)") in msgs


def test_memory_counts_further_pages() -> None:
    before, after = _tree(), _tree()
    before.procs[100].maps[0] = VmaState(0x1000, 0x5000, "rw-p", "", None, None, RW,
                                         _digest(b"1", b"2", b"3", b"4"))
    after.procs[100].maps[0] = VmaState(0x1000, 0x5000, "rw-p", "", None, None, RW,
                                        _digest(b"1", b"", b"", b""))
    assert _messages(before, after) == [
        ("memory: pid 100 (t): VMA 1000..5000 rw-p anon: page 0x2000 differs "
        "(data before, zero after) (and 2 more pages)")
    ]


def test_namespaces_and_uts() -> None:
    before, after = _tree(), _tree()
    before.uts = {"uts[pid 101]": ("zdtm", "(none)")}
    after.uts = {"uts[pid 101]": ("vm", "(none)")}
    after.procs[101].namespaces["uts"] = "uts[pid 101]"
    assert _messages(before, after) == [
        "ns: pid 101 (t): uts namespace host -> uts[pid 101]",
        "ns: uts[pid 101]: (hostname, domainname) ('zdtm', '(none)') -> ('vm', '(none)')",
    ]


def test_task_attributes_and_signal_sets() -> None:
    after = _tree()
    p = after.procs[100]
    p.attrs["SigCgt"] = "0000000000000002"
    p.attrs["limit Max open files"] = "1024 1024 files"
    del p.attrs["cwd"]
    p.thread_attrs[100]["SigBlk"] = "0000000000010000"
    assert _messages(_tree(), after) == [
        ("task: pid 100 (t): SigCgt 0000000000004a02 -> 0000000000000002 "
         "(-SIGTERM -SIGUSR1 -SIGUSR2)"),
        "task: pid 100 (t): cwd /tmp/w -> absent",
        "task: pid 100 (t): limit Max open files 1024 4096 files -> 1024 1024 files",
        "task: pid 100 (t) tid 100: SigBlk 0000000000000000 -> 0000000000010000 (+SIGCHLD)",
    ]


def test_temporary_signal_mask_is_not_compared() -> None:
    """In rt_sigsuspend the thread's SigBlk is the syscall's temporary mask."""
    before, after = _tree(), _tree()
    before.procs[100].thread_attrs[100]["syscall"] = "130"
    after.procs[100].thread_attrs[100].update(SigBlk="0000000000004000", syscall="-1")
    assert _messages(before, after) == []
    before.procs[100].thread_attrs[100]["syscall"] = "230"  # clock_nanosleep: mask is real
    assert _messages(before, after) == [
        "task: pid 100 (t) tid 100: SigBlk 0000000000000000 -> 0000000000004000 (+SIGTERM)"
    ]


def test_rseq_registration() -> None:
    after = _tree()
    after.procs[100].rseq[100] = RseqConfig(0, 0, 0)
    assert _messages(_tree(), after) == [
        "rseq: pid 100 (t) tid 100: rseq ptr 0x7000, len 32, sig 0x53053053 -> not registered"
    ]


def test_problem_flood_is_capped() -> None:
    after = _tree()
    after.procs[100].fds.update({fd: FdState("/tmp/x", 0, 0) for fd in range(10, 60)})
    problems = checks.compare(_tree(), after)
    assert len(problems) == 21
    assert str(problems[-1]) == "fds: pid 100 (t): 30 more problems not shown"


def test_merge_normalises_split_vmas() -> None:
    d1, d2 = _digest(b"1"), _digest(b"2")
    anon = [VmaState(0x1000, 0x2000, "rw-p", "", None, None, RW, d1),
            VmaState(0x2000, 0x3000, "rw-p", "", None, None, RW, d2)]
    merged = snapshot._merge(anon)
    assert len(merged) == 1 and merged[0].end == 0x3000 and merged[0].digest == d1 + d2
    gap = [VmaState(0x1000, 0x2000, "r--p", "/f", 0, None, RW, d1),
           VmaState(0x2000, 0x3000, "r--p", "/f", 0x5000, None, RW, d2)]  # offsets not contiguous
    assert len(snapshot._merge(gap)) == 2
    perms = [anon[0], VmaState(0x2000, 0x3000, "r--p", "", None, None, RW, d2)]
    assert len(snapshot._merge(perms)) == 2
    growsdown = [anon[0], VmaState(0x2000, 0x3000, "rw-p", "", None, None, RW | {"gd"}, d2)]
    assert len(snapshot._merge(growsdown)) == 2
    unreadable = [anon[0], VmaState(0x2000, 0x3000, "rw-p", "", None, None, RW, None)]
    assert snapshot._merge(unreadable)[0].digest is None


def test_digest_is_per_page() -> None:
    assert len(_digest(b"a", b"b")) == 2 * DIGEST_SIZE
    assert page_digest(bytes(P)) == ZERO_DIGEST


def _own(**kw: object) -> OwnState:
    base = OwnState(fds={0: "/dev/null", 1: "pipe:[5]"}, children={},
                    mounts=frozenset({("/", "ext4", "/dev/vda"), ("/proc", "proc", "proc")}))
    new = copy.deepcopy(base)
    for key, value in kw.items():
        setattr(new, key, value)
    return new


def test_compare_own() -> None:
    before = _own()
    after = _own(
        fds={0: "/dev/null", 1: "pipe:[6]", 9: "/tmp/img/pages.img"},
        children={4242: "python3: python3 -m engine restore"},
        mounts=frozenset({("/", "ext4", "/dev/vda"), ("/tmp/m", "tmpfs", "none")}),
    )
    assert [str(p) for p in checks.compare_own(before, after)] == [
        "leak: harness fd 1 leaked: pipe:[6]",
        "leak: harness fd 9 leaked: /tmp/img/pages.img",
        "leak: process 4242 left behind: python3: python3 -m engine restore",
        "leak: mount /tmp/m (tmpfs, source none) left behind",
        "leak: mount /proc (proc, source proc) disappeared",
    ]
    assert [p for p in checks.compare_own(before, after, expected=[4242])
            if "process" in p.message] == []
    assert checks.compare_own(before, _own()) == []


def test_sharing_of_tables_and_cow_pages() -> None:
    """Signal handlers (no fault can un-share them in a running task: unshare(CLONE_SIGHAND)
    is refused while shared) and the copy-on-write pairs, on hand-made snapshots."""
    before, after = _tree(), _tree()
    label = "sighand[pid 100]"
    for t in (before,):
        for pid in (100, 101):
            t.procs[pid].sharing = {"signal handlers (CLONE_SIGHAND)": label}
    before.cow = {(100, 101): frozenset({(0x1000, 0x1000), (0x2000, 0x2000)})}
    after.cow = {(100, 101): frozenset({(0x2000, 0x2000)})}
    assert _messages(before, after) == [
        "sharing: pid 100 (t): signal handlers (CLONE_SIGHAND) sighand[pid 100] -> not shared",
        "sharing: pid 101 (t): signal handlers (CLONE_SIGHAND) sighand[pid 100] -> not shared",
        ("sharing: pid 100 (t) and pid 101 (t): 2 private pages shared copy-on-write before, "
        "1 after; first no longer shared: 0x1000 / 0x1000"),
    ]


def test_controlling_tty_and_foreground_group() -> None:
    before, after = _tree(), _tree()
    before.procs[101].tty = {"controlling tty": "tty[pid 100 fd 5]", "foreground pgrp": "100"}
    after.procs[101].tty = {"controlling tty": "tty[pid 100 fd 5]", "foreground pgrp": "101"}
    after.procs[100].tty = {"controlling tty": "device 136:3"}
    assert _messages(before, after) == [
        "tty: pid 100 (t): controlling tty none -> device 136:3",
        "tty: pid 101 (t): foreground pgrp 100 -> 101",
    ]


def test_file_attributes_of_a_lost_fd_are_the_fds_check() -> None:
    before, after = _tree(), _tree()
    before.procs[100].files = {1: {"mode": "0o600"}}
    after.procs[100].files = {1: {"mode": "0o644"}}
    del after.procs[101].fds[1]
    before.procs[101].files = {1: {"mode": "0o600"}}
    assert _messages(before, after) == [
        "files: pid 100 (t): fd 1 /tmp/out: mode 0o600 -> 0o644",
        ("fds: pid 101 (t): fd 1 lost after restore: /tmp/out (flags O_WRONLY|O_APPEND|"
        "O_LARGEFILE, pos 77)"),
    ]


def _ipc_tree() -> TreeState:
    tree = _tree()
    for ps in tree.procs.values():
        ps.namespaces["ipc"] = "ipc[pid 100]"
    tree.ipc = {"ipc[pid 100]": {
        "sysctls": {"kernel/msgmnb": "16384"},
        "shm 0": {"key": "0x1", "mode": "640", "size": "8192", "attaches": "2",
                  "content sha256": "aa"},
        "sem 1": {"values": "0 1 7", "last pids": "none, pid 101, outside"},
        "msg 2": {"messages": "3", "bytes": "101", "messages sha256": "bb"},
    }}
    return tree


def test_ipc_objects_lost_gained_and_changed() -> None:
    """Each object of the tree's ipc namespace is compared field by field; a lost or new
    object is named once, not per field."""
    before, after = _ipc_tree(), _ipc_tree()
    assert checks.compare(before, after) == []
    objs = after.ipc["ipc[pid 100]"]
    del objs["shm 0"]
    objs["shm 3"] = dict(before.ipc["ipc[pid 100]"]["shm 0"])
    objs["sem 1"]["values"] = "0 2 7"
    objs["msg 2"] = {"messages": "2", "bytes": "90", "messages sha256": "cc"}
    objs["sysctls"] = {"kernel/msgmnb": "20000"}
    assert _messages(before, after) == [
        "ipc: ipc[pid 100]: msg 2: bytes 101 -> 90",
        "ipc: ipc[pid 100]: msg 2: messages 3 -> 2",
        "ipc: ipc[pid 100]: msg 2: messages sha256 bb -> cc",
        "ipc: ipc[pid 100]: sem 1: values 0 1 7 -> 0 2 7",
        "ipc: ipc[pid 100]: shm 0 missing after restore",
        "ipc: ipc[pid 100]: shm 3 appeared after restore",
        "ipc: ipc[pid 100]: sysctls: kernel/msgmnb 16384 -> 20000",
    ]


def test_ipc_namespace_lost_is_the_ns_checks() -> None:
    """A tree restored into the harness's ipc namespace: the ns check names it for each
    process, the ipc check adds nothing (it compares namespaces both sides have)."""
    before, after = _ipc_tree(), _ipc_tree()
    after.ipc = {}
    for ps in after.procs.values():
        ps.namespaces["ipc"] = "host"
    assert _messages(before, after) == [
        "ns: pid 100 (t): ipc namespace ipc[pid 100] -> host",
        "ns: pid 101 (t): ipc namespace ipc[pid 100] -> host",
    ]


def test_a_snapshot_expects_its_files_disk_attributes_as_the_tree_left_them() -> None:
    """--snaps each restores a snapshot after the tree went on: a linked file's size and
    mtime (on disk) are expected as at the last S0, its offset (the process's) and an
    unlinked file's content (in the image) as at the snapshot."""
    snap, last = _tree(), _tree()
    for tree, size, when in ((snap, "10", "t1"), (last, "20", "t2")):
        p = tree.procs[100]
        p.fds[5] = FdState("/tmp/gone (deleted)", 0o100002, 0)
        p.files = {1: {"size": size, "mtime": when, "mode": "0o644"},
                   5: {"size": size, "mtime": when, "content sha256": when}}
    last.procs[100].fds[1] = FdState("/tmp/out", 0o102001, 99)  # the tree wrote on
    expected = snapshot.with_disk_of(snap, last)
    assert expected.procs[100].files == {
        1: {"size": "20", "mtime": "t2", "mode": "0o644"},
        5: {"size": "10", "mtime": "t1", "content sha256": "t1"}}
    assert expected.procs[100].fds[1].pos == 77  # the snapshot's own offset
    assert snap.procs[100].files[1]["size"] == "10"  # the snapshot itself is unchanged
    # a restore that got the snapshot's file right passes; the offset is still checked
    restored = copy.deepcopy(expected)
    assert checks.compare(expected, restored) == []
    restored.procs[100].fds[1] = FdState("/tmp/out", 0o102001, 99)
    assert any("fd 1" in m for m in _messages(expected, restored))
