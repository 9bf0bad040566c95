"""Allowed deviations (zdtm.allowances) on hand-made snapshots: each allowance takes exactly
its own difference, reports it, and leaves every other difference of the same object to the
checks."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from zdtm import checks
from zdtm.allowances import O_DIRECTORY, Allowance, reconcile
from zdtm.drivers.criu import ALLOWANCES
from zdtm.proc import format_open_flags
from zdtm.snapshot import OUTSIDE, FdState, ProcState, TreeState, VmaState

RW = frozenset({"rd", "wr", "mr", "mw", "me", "sh"})
TIME_NS = Allowance("ns", "new-time-ns", "test")
MEMFD_MAPS = Allowance("maps", "shmem-as-memfd", "test")
MEMFD_FDS = Allowance("fds", "shmem-as-memfd", "test")
DIR_FLAGS = Allowance("fds", "dir-fd-flags", "test")
SHMEM = "/dev/zero (deleted)"


def _proc(pid: int, ppid: int | str) -> ProcState:
    ps = ProcState(pid=pid, real_pid=pid, ppid=ppid, pgid=100, sid=100, state="T",
                   comm="t", threads=(pid,))
    ps.fds = {3: FdState("/tmp/w", 0o200000, 0), 4: FdState(SHMEM, 2, 0)}
    ps.maps = [VmaState(0x20000, 0x21000, "rw-s", SHMEM, 0, "obj[pid 100 20000]", RW)]
    ps.namespaces = {"uts": "host", "time": "host", "time_for_children": "host"}
    return ps


def _tree() -> TreeState:
    return TreeState(root=100, procs={100: _proc(100, OUTSIDE), 101: _proc(101, 100)})


def _problems(before: TreeState, after: TreeState, allow: list[Allowance]
              ) -> tuple[list[str], list[str]]:
    fixed, deviations = reconcile(before, after, allow)
    return [str(p) for p in checks.compare(before, fixed)], [str(d) for d in deviations]


def _new_time_ns(tree: TreeState) -> None:
    for ps in tree.procs.values():
        ps.namespaces = {**ps.namespaces, "time": "time[pid 100]",
                         "time_for_children": "time[pid 100]"}


def _memfd(tree: TreeState) -> None:
    for ps in tree.procs.values():
        ps.maps = [dataclasses.replace(v, path="/memfd:" + v.path) for v in ps.maps]
        ps.fds = {**ps.fds, 4: dataclasses.replace(ps.fds[4], target="/memfd:" + SHMEM)}


def _no_o_directory(tree: TreeState) -> None:
    for ps in tree.procs.values():
        ps.fds = {**ps.fds, 3: dataclasses.replace(ps.fds[3], flags=0)}


DEVIATIONS = {"time": ([TIME_NS], _new_time_ns), "memfd": ([MEMFD_MAPS, MEMFD_FDS], _memfd),
              "dir": ([DIR_FLAGS], _no_o_directory)}


@pytest.mark.parametrize("name", sorted(DEVIATIONS))
def test_the_deviation_alone_is_allowed_and_reported(name: str) -> None:
    allow, deviate = DEVIATIONS[name]
    before, after = _tree(), _tree()
    deviate(after)
    assert _problems(before, after, [])[0], "without the allowance the checks fail"
    problems, allowed = _problems(before, after, allow)
    assert problems == []
    assert allowed and all("allowed (" in a for a in allowed)


@pytest.mark.parametrize("name", sorted(DEVIATIONS))
def test_no_deviation_nothing_allowed(name: str) -> None:
    allow, _ = DEVIATIONS[name]
    assert _problems(_tree(), _tree(), allow) == ([], [])


def test_time_ns_allowed_but_another_namespace_of_the_same_task_fails() -> None:
    before, after = _tree(), _tree()
    _new_time_ns(after)
    after.procs[101].namespaces["uts"] = "uts[pid 101]"
    problems, allowed = _problems(before, after, [TIME_NS])
    assert problems == ["ns: pid 101 (t): uts namespace host -> uts[pid 101]"]
    assert len(allowed) == 2


def test_time_ns_split_between_tasks_is_not_allowed() -> None:
    before, after = _tree(), _tree()
    _new_time_ns(after)
    after.procs[101].namespaces["time"] = "time[pid 101]"
    problems, _ = _problems(before, after, [TIME_NS])
    assert any("time namespace" in p for p in problems)


def test_time_ns_into_a_namespace_the_tree_already_had_is_not_allowed() -> None:
    before, after = _tree(), _tree()
    before.procs[101].namespaces["time"] = "time[pid 101]"
    for ps in after.procs.values():
        ps.namespaces["time"] = "time[pid 101]"  # task 100 moved into 101's namespace
    problems, _ = _problems(before, after, [TIME_NS])
    assert problems == ["ns: pid 100 (t): time namespace host -> time[pid 101]"]


def test_memfd_allowed_but_other_fields_of_the_same_vma_and_fd_fail() -> None:
    before, after = _tree(), _tree()
    _memfd(after)
    ps = after.procs[101]
    ps.maps = [dataclasses.replace(ps.maps[0], perms="r--s")]
    ps.fds[4] = dataclasses.replace(ps.fds[4], pos=5)
    problems, allowed = _problems(before, after, [MEMFD_MAPS, MEMFD_FDS])
    assert problems == [
        f"fds: pid 101 (t): fd 4 {SHMEM}: pos 0 -> 5",
        (f"maps: pid 101 (t): VMA 20000..21000 rw-s {SHMEM} [obj[pid 100 20000]]: "
        "perms rw-s -> r--s"),
    ]
    assert len(allowed) == 4


def test_memfd_of_another_object_is_not_allowed() -> None:
    before, after = _tree(), _tree()
    for ps in before.procs.values():
        ps.maps = [dataclasses.replace(v, path="/dev/shm/x") for v in ps.maps]
    for ps in after.procs.values():
        ps.maps = [dataclasses.replace(v, path="/memfd:/dev/shm/x") for v in ps.maps]
    problems, allowed = _problems(before, after, [MEMFD_MAPS])
    assert len(problems) == 2 and allowed == []


def test_dir_flags_allowed_but_another_flag_or_offset_fails() -> None:
    before, after = _tree(), _tree()
    _no_o_directory(after)
    fa = after.procs[101].fds[3]
    after.procs[101].fds[3] = dataclasses.replace(fa, flags=0o4000)  # O_NONBLOCK instead
    after.procs[100].fds[3] = dataclasses.replace(after.procs[100].fds[3], pos=9)
    problems, allowed = _problems(before, after, [DIR_FLAGS])
    assert problems == [
        "fds: pid 100 (t): fd 3 /tmp/w: pos 0 -> 9",
        (f"fds: pid 101 (t): fd 3 /tmp/w: flags {format_open_flags(O_DIRECTORY)} -> "
        f"{format_open_flags(O_DIRECTORY | 0o4000)}"),
    ]
    assert len(allowed) == 2


def test_reconcile_leaves_the_snapshot_it_was_given_alone() -> None:
    before, after = _tree(), _tree()
    _memfd(after)
    kept = copy.deepcopy(after)
    reconcile(before, after, [MEMFD_MAPS, MEMFD_FDS])
    assert after == kept


def test_unknown_allowance_is_a_driver_bug() -> None:
    with pytest.raises(ValueError, match="no rule for allowance maps/x"):
        reconcile(_tree(), _tree(), [Allowance("maps", "x", "y")])


def test_criu_declares_every_allowance_with_a_reason() -> None:
    fixed, _ = reconcile(_tree(), _tree(), ALLOWANCES)  # every one has a rule
    assert fixed.procs.keys() == {100, 101}
    assert all(a.reason for a in ALLOWANCES)
    assert O_DIRECTORY == 0o200000


COW_LOST = Allowance("sharing", "cow-lost", "test")
COW_GAINED = Allowance("sharing", "cow-gained", "test")
PAGES = frozenset({(0x1000, 0x1000), (0x2000, 0x2000), (0x3000, 0x3000)})


def _cow_tree(pages: frozenset[tuple[int, int]]) -> TreeState:
    tree = _tree()
    tree.cow = {(100, 101): pages}
    return tree


def test_cow_lost_allowed_but_gained_pages_still_fail() -> None:
    before = _cow_tree(PAGES)
    problems, allowed = _problems(before, _cow_tree(frozenset()), [COW_LOST])
    assert problems == [] and len(allowed) == 1 and "3 private pages no longer" in allowed[0]
    after = _cow_tree(frozenset({(0x1000, 0x1000), (0x9000, 0x9000)}))
    problems, allowed = _problems(before, after, [COW_LOST])
    assert len(problems) == 1 and "first newly shared: 0x9000" in problems[0], problems
    assert "2 private pages no longer" in allowed[0]


def test_cow_gained_allowed_but_lost_pages_still_fail() -> None:
    before = _cow_tree(frozenset({(0x1000, 0x1000)}))
    problems, allowed = _problems(before, _cow_tree(PAGES), [COW_GAINED])
    assert problems == [] and "2 private pages newly" in allowed[0]
    problems, _ = _problems(before, _cow_tree(frozenset({(0x2000, 0x2000)})), [COW_GAINED])
    assert len(problems) == 1 and "first no longer shared: 0x1000" in problems[0], problems


def test_cow_allowance_leaves_other_sharing_to_the_checks() -> None:
    before = _cow_tree(PAGES)
    after = _cow_tree(frozenset())
    after.procs[101].sharing = {"files": "files[pid 101]"}
    problems, _ = _problems(before, after, [COW_LOST])
    assert len(problems) == 1 and problems[0].startswith("sharing:") and "files" in problems[0]


COW_INDIRECT = Allowance("sharing", "cow-lost-indirect", "test")


def test_cow_lost_indirect_allows_moved_pages_only_between_parent_and_child() -> None:
    moved = frozenset({(0x1000, 0x5000)})
    before = _cow_tree(PAGES | moved)
    problems, allowed = _problems(before, _cow_tree(PAGES), [COW_INDIRECT])
    assert problems == [] and "1 private pages no longer" in allowed[0]
    # the same address in a parent and its child is what the engine must restore
    problems, allowed = _problems(before, _cow_tree(moved), [COW_INDIRECT])
    assert len(problems) == 1 and "first no longer shared: 0x1000 / 0x1000" in problems[0]
    assert allowed == []


def test_cow_lost_indirect_allows_pages_of_processes_not_parent_and_child() -> None:
    def siblings(pages: frozenset[tuple[int, int]]) -> TreeState:
        tree = _tree()
        tree.procs[102] = _proc(102, 100)
        tree.cow = {(101, 102): pages}
        return tree
    problems, allowed = _problems(siblings(PAGES), siblings(frozenset()), [COW_INDIRECT])
    assert problems == [] and "3 private pages no longer" in allowed[0]


def test_cow_lost_indirect_allows_an_adopted_orphan_and_its_subreaper() -> None:
    """A child in a session it does not lead, other than its parent's, was not forked by
    that parent (an orphan the subreaper adopted): its pages are shared only through the
    ancestors that made it. A child in its parent's session (or leading its own) still
    fails."""
    def adopted(pages: frozenset[tuple[int, int]], sid: int) -> TreeState:
        tree = _cow_tree(pages)
        tree.procs[101].sid = sid
        return tree
    before, after = adopted(PAGES, 102), adopted(frozenset(), 102)
    problems, allowed = _problems(before, after, [COW_INDIRECT])
    assert problems == [] and "3 private pages no longer" in allowed[0]
    for sid in (100, 101):  # the parent's session, or a session of its own
        problems, _ = _problems(adopted(PAGES, sid), adopted(frozenset(), sid), [COW_INDIRECT])
        assert len(problems) == 1 and "first no longer shared" in problems[0], problems
