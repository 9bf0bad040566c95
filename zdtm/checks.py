"""Compare two snapshots and say, in words a person can act on, what a restore changed.

Every Problem names its check ("tree", "task", "rseq", "fds", "maps", "memory", "ns",
"sharing", "taskattrs", "files", "tty", "ipc", "leak"), the process (pid in its own namespace, the outer pid in brackets when it differs),
the fd or VMA, and the value before and after. ``str(problem)`` is "check: message".
"""

from __future__ import annotations

import signal
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from zdtm.memory import DIGEST_SIZE, UNREADABLE, ZERO_DIGEST
from zdtm.proc import PAGE_SIZE, format_open_flags
from zdtm.snapshot import (
    IN_SYSCALL,
    TEMP_MASK_SYSCALLS,
    FdState,
    OwnState,
    ProcState,
    TreeState,
    VmaState,
)

_MAX_PER_PROCESS = 20  # a badly broken restore must not bury the first problems in noise


@dataclass(frozen=True)
class Problem:
    """One difference found by a check."""

    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.check}: {self.message}"


def compare(before: TreeState, after: TreeState) -> list[Problem]:
    """Every difference between the tree before dump and after restore."""
    problems: list[Problem] = []
    for pid, b in before.procs.items():
        a = after.procs.get(pid)
        if a is None:
            problems.append(Problem("tree", f"{b.name()} missing after restore"))
            continue
        found = (
            _tree(b, a) + _task(b, a) + _rseq(b, a) + _fds(b, a) + _maps(b, a) + _memory(b, a)
            + _namespaces(b, a)
            + _keyed("sharing", a.name(), b.sharing, a.sharing, unshared="not shared")
            + _keyed("taskattrs", a.name(), b.taskattrs, a.taskattrs)
            + _per_fd("files", a, b.files, a.files) + _per_fd("tty", a, b.tty_fds, a.tty_fds)
            + _keyed("tty", a.name(), b.tty, a.tty, unshared="none")
        )
        if len(found) > _MAX_PER_PROCESS:
            extra = len(found) - _MAX_PER_PROCESS
            check = found[_MAX_PER_PROCESS].check
            found = found[:_MAX_PER_PROCESS]
            found.append(Problem(check, f"{a.name()}: {extra} more problems not shown"))
        problems.extend(found)
    for pid, a in after.procs.items():
        if pid not in before.procs:
            problems.append(Problem("tree", f"{a.name()} appeared after restore (ppid {a.ppid})"))
    if before.root != after.root:
        problems.append(Problem("tree", f"root pid {before.root} -> {after.root}"))
    problems.extend(_uts(before, after))
    problems.extend(_cow(before, after))
    problems.extend(_ipc(before, after))
    return problems


def _keyed(check: str, who: str, b: Mapping[str, str], a: Mapping[str, str],
           unshared: str = "absent") -> list[Problem]:
    """One problem per attribute whose value differs ("unshared" names a missing one)."""
    return [Problem(check, f"{who}: {key} {vb or unshared} -> {va or unshared}")
            for key, vb, va in _changed(b, a)]


def _per_fd(check: str, a: ProcState, b_fds: Mapping[int, Mapping[str, str]],
            a_fds: Mapping[int, Mapping[str, str]]) -> list[Problem]:
    """Attribute differences of fds present before and after (a lost fd is ``fds``'s)."""
    out = []
    for fd in sorted(b_fds.keys() & a_fds.keys() | b_fds.keys() & a.fds.keys()):
        what = a.fds[fd].target if fd in a.fds else "?"
        out += _keyed(check, f"{a.name()}: fd {fd} {what}", b_fds.get(fd, {}),
                      a_fds.get(fd, {}))
    return out


def _cow(before: TreeState, after: TreeState) -> list[Problem]:
    """Private pages shared copy-on-write between two processes, before and after."""
    out = []
    for (pa, pb), sb, sa in _changed(before.cow, after.cow):
        sb, sa = sb or frozenset(), sa or frozenset()
        if any(p not in after.procs or after.procs[p].state == "Z" for p in (pa, pb)):
            continue  # a lost or dead process is the tree check's
        names = f"{after.procs[pa].name()} and {after.procs[pb].name()}"
        msg = (f"{names}: {len(sb)} private pages shared copy-on-write before, {len(sa)} "
               "after")
        lost = sorted(sb - sa)
        if lost:
            msg += f"; first no longer shared: {lost[0][0]:#x} / {lost[0][1]:#x}"
        gained = sorted(sa - sb)
        if gained:
            msg += f"; first newly shared: {gained[0][0]:#x} / {gained[0][1]:#x}"
        out.append(Problem("sharing", msg))
    return out


def _tree(b: ProcState, a: ProcState) -> list[Problem]:
    out = []
    for attr in ("ppid", "pgid", "sid", "comm", "state"):
        vb, va = getattr(b, attr), getattr(a, attr)
        if vb != va:
            out.append(Problem("tree", f"{a.name()}: {attr} {vb} -> {va}"))
    if b.threads != a.threads:
        out.append(Problem(
            "tree",
            f"{a.name()}: threads {len(b.threads)} -> {len(a.threads)} "
            f"(tids {list(b.threads)} -> {list(a.threads)})",
        ))
    return out


def _signals(mask: str) -> set[str]:
    """Names of the signals in a /proc status mask such as "0000000000004a02"."""
    try:
        bits = int(mask, 16)
    except ValueError:
        return set()
    out = set()
    for n in range(1, 65):
        if bits >> (n - 1) & 1:
            try:
                out.add(signal.Signals(n).name)
            except ValueError:
                out.add(f"SIG{n}")
    return out


K = TypeVar("K")
V = TypeVar("V")


def _changed(before: Mapping[K, V], after: Mapping[K, V]
             ) -> Iterator[tuple[K, V | None, V | None]]:
    """(key, before, after) for every key whose value differs (None: absent), sorted."""
    keys: Any = before.keys() | after.keys()  # ids, labels, names: all sortable
    for key in sorted(keys):
        vb, va = before.get(key), after.get(key)
        if vb != va:
            yield key, vb, va


def _attr_diff(key: str, vb: str | None, va: str | None) -> str:
    text = f"{key} {vb if vb is not None else 'absent'} -> {va if va is not None else 'absent'}"
    if key.startswith(("Sig", "ShdPnd")) and vb is not None and va is not None:
        sb, sa = _signals(vb), _signals(va)
        change = [f"+{n}" for n in sorted(sa - sb)] + [f"-{n}" for n in sorted(sb - sa)]
        text += f" ({' '.join(change)})"
    return text


def _task(b: ProcState, a: ProcState) -> list[Problem]:
    """Creds, signal dispositions and masks, umask, limits, cwd/root, personality, ..."""
    out = []
    for key, vb, va in _changed(b.attrs, a.attrs):
        out.append(Problem("task", f"{a.name()}: {_attr_diff(key, vb, va)}"))
    for tid in sorted(b.thread_attrs.keys() & a.thread_attrs.keys()):
        tb, ta = b.thread_attrs[tid], a.thread_attrs[tid]
        skip = {IN_SYSCALL}
        if tb.get(IN_SYSCALL) in TEMP_MASK_SYSCALLS:
            skip.add("SigBlk")  # the mask in effect was the syscall's temporary one
        for key in sorted((tb.keys() | ta.keys()) - skip):
            if tb.get(key) != ta.get(key):
                out.append(Problem(
                    "task", f"{a.name()} tid {tid}: {_attr_diff(key, tb.get(key), ta.get(key))}"
                ))
    return out


def _rseq(b: ProcState, a: ProcState) -> list[Problem]:
    out = []
    for tid, rb in b.rseq.items():
        ra = a.rseq.get(tid)
        if rb is not None and ra is not None and rb != ra:
            out.append(Problem(
                "rseq", f"{a.name()} tid {tid}: rseq {rb.describe()} -> {ra.describe()}"
            ))
    return out


def _fds(b: ProcState, a: ProcState) -> list[Problem]:
    out = []
    for fd in sorted(b.fds.keys() | a.fds.keys()):
        fb, fa = b.fds.get(fd), a.fds.get(fd)
        if fb is None:
            assert fa is not None  # the fd is in one of the two tables
            out.append(Problem("fds", f"{a.name()}: fd {fd} leaked after restore: {fa.describe()}"))
        elif fa is None:
            out.append(Problem("fds", f"{a.name()}: fd {fd} lost after restore: {fb.describe()}"))
        elif fb != fa:
            out.append(Problem("fds", f"{a.name()}: fd {fd} {fb.target}: " + _fd_diff(fb, fa)))
    return out


def _fd_diff(fb: FdState, fa: FdState) -> str:
    parts = []
    if fb.target != fa.target:
        parts.append(f"target {fb.target} -> {fa.target}")
    if fb.flags != fa.flags:
        parts.append(f"flags {format_open_flags(fb.flags)} -> {format_open_flags(fa.flags)}")
    if fb.pos != fa.pos:
        parts.append(f"pos {fb.pos} -> {fa.pos}")
    if fb.shared != fa.shared:
        parts.append(
            f"open file description {fb.shared or 'not shared'} -> {fa.shared or 'not shared'}"
        )
    if fb.extra != fa.extra:
        parts.append(_fdinfo_diff(fb.extra, fa.extra))
    return ", ".join(parts)


def _fdinfo_diff(before: tuple[tuple[str, str], ...], after: tuple[tuple[str, str], ...]) -> str:
    """The fdinfo lines only one side has. A key may repeat (an inotify group has one
    "inotify wd" line per watch, a fanotify group one line per mark), so each line is
    named whole: a dict of the two sides would show one line per key and hide the rest."""
    lost = list(before)
    gained = []
    for line in after:
        if line in lost:
            lost.remove(line)
        else:
            gained.append(line)
    words = []
    if lost:
        words.append("lost " + "; ".join(f"'{k}: {v}'" for k, v in lost))
    if gained:
        words.append("gained " + "; ".join(f"'{k}: {v}'" for k, v in gained))
    return "fdinfo " + (", ".join(words) or "lines reordered")


def _maps(b: ProcState, a: ProcState) -> list[Problem]:
    out = []
    bmap = {v.start: v for v in b.maps}
    amap = {v.start: v for v in a.maps}
    for start in sorted(bmap.keys() | amap.keys()):
        vb, va = bmap.get(start), amap.get(start)
        if va is None:
            assert vb is not None  # the VMA is in one of the two maps
            out.append(Problem("maps", f"{a.name()}: VMA {vb.describe()} missing after restore"))
        elif vb is None:
            out.append(Problem("maps", f"{a.name()}: VMA {va.describe()} appeared after restore"))
        elif not vb.same_layout(va):
            out.append(Problem("maps", f"{a.name()}: VMA {vb.describe()}: " + _vma_diff(vb, va)))
    return out


def _vma_diff(vb: VmaState, va: VmaState) -> str:
    parts = []
    if vb.end != va.end:
        parts.append(f"end {vb.end:x} -> {va.end:x}")
    for attr in ("perms", "path", "offset", "object_id"):
        x, y = getattr(vb, attr), getattr(va, attr)
        if x != y:
            parts.append(f"{attr} {x} -> {y}")
    if vb.flags != va.flags:
        lost = " ".join(sorted(vb.flags - va.flags)) or "-"
        gained = " ".join(sorted(va.flags - vb.flags)) or "-"
        parts.append(f"VmFlags lost [{lost}] gained [{gained}]")
    return ", ".join(parts)


def _page_kind(d: bytes) -> str:
    if d == ZERO_DIGEST:
        return "zero"
    if d == UNREADABLE:
        return "unreadable"
    return "data"


def _memory(b: ProcState, a: ProcState) -> list[Problem]:
    """Compare page digests wherever a VMA before and a VMA after overlap."""
    out = []
    after = sorted((v for v in a.maps if v.digest is not None), key=lambda v: v.start)
    j = 0
    for vb in sorted((v for v in b.maps if v.digest is not None), key=lambda v: v.start):
        while j < len(after) and after[j].end <= vb.start:
            j += 1
        k = j
        while k < len(after) and after[k].start < vb.end:
            msg = _overlap_diff(vb, after[k])
            if msg:
                out.append(Problem("memory", f"{a.name()}: VMA {vb.describe()}: {msg}"))
            k += 1
    return out


def _overlap_diff(vb: VmaState, va: VmaState) -> str | None:
    lo, hi = max(vb.start, va.start), min(vb.end, va.end)
    bslice = _digest_slice(vb, lo, hi)
    aslice = _digest_slice(va, lo, hi)
    if bslice == aslice:
        return None
    differing = [
        i for i in range(0, len(bslice), DIGEST_SIZE)
        if bslice[i:i + DIGEST_SIZE] != aslice[i:i + DIGEST_SIZE]
    ]
    first = differing[0]
    addr = lo + first // DIGEST_SIZE * PAGE_SIZE
    kb = _page_kind(bslice[first:first + DIGEST_SIZE])
    ka = _page_kind(aslice[first:first + DIGEST_SIZE])
    more = f" (and {len(differing) - 1} more pages)" if len(differing) > 1 else ""
    return f"page {addr:#x} differs ({kb} before, {ka} after){more}"


def _digest_slice(v: VmaState, lo: int, hi: int) -> bytes:
    assert v.digest is not None
    first = (lo - v.start) // PAGE_SIZE * DIGEST_SIZE
    last = (hi - v.start) // PAGE_SIZE * DIGEST_SIZE
    return v.digest[first:last]


def _namespaces(b: ProcState, a: ProcState) -> list[Problem]:
    return [Problem("ns", f"{a.name()}: {kind} namespace {nb} -> {na}")
            for kind, nb, na in _changed(b.namespaces, a.namespaces)]


def _uts(before: TreeState, after: TreeState) -> list[Problem]:
    out = []
    for label, ub, ua in _changed(before.uts, after.uts):
        out.append(Problem("ns", f"{label}: (hostname, domainname) {ub} -> {ua}"))
    for label, mb, ma in _changed(before.userns_maps, after.userns_maps):
        out.append(Problem("ns", f"{label}: (uid_map, gid_map) {mb!r} -> {ma!r}"))
    return out


def _ipc(before: TreeState, after: TreeState) -> list[Problem]:
    """The SysV objects and sysctls of each ipc namespace of the tree's own (zdtm.ipcstate):
    an object lost, gained, or any of its fields changed. A namespace itself lost or
    gained is the ``ns`` check's."""
    out = []
    for label in sorted(before.ipc.keys() & after.ipc.keys()):
        for obj, ob, oa in _changed(before.ipc[label], after.ipc[label]):
            if oa is None:
                out.append(Problem("ipc", f"{label}: {obj} missing after restore"))
            elif ob is None:
                out.append(Problem("ipc", f"{label}: {obj} appeared after restore"))
            else:
                out += [Problem("ipc", f"{label}: {obj}: {key} {vb or 'absent'} -> "
                                       f"{va or 'absent'}") for key, vb, va in _changed(ob, oa)]
    return out


def compare_own(
    before: OwnState, after: OwnState, expected: Collection[int] = ()
) -> list[Problem]:
    """Leaks of the harness and the engine: new fds, child processes, mounts.

    ``expected`` are pids that may be new children legitimately (the restored test's root,
    which is re-parented to the harness as child subreaper).
    """
    out = []
    for fd in sorted(after.fds):
        if before.fds.get(fd) != after.fds[fd]:
            out.append(Problem("leak", f"harness fd {fd} leaked: {after.fds[fd]}"))
    for pid in sorted(after.children):
        if pid not in before.children and pid not in expected:
            out.append(Problem("leak", f"process {pid} left behind: {after.children[pid]}"))
    for mnt in sorted(after.mounts - before.mounts):
        out.append(Problem("leak", f"mount {mnt[0]} ({mnt[1]}, source {mnt[2]}) left behind"))
    for mnt in sorted(before.mounts - after.mounts):
        out.append(Problem("leak", f"mount {mnt[0]} ({mnt[1]}, source {mnt[2]}) disappeared"))
    return out
