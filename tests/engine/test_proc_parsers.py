"""engine/proc parsers: on literal samples (edge cases) and on a live target whose state
the test set up (umask, masks, rlimit, fds, growsdown VMA, a child)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
from pathlib import Path

import pytest

from engine.kernel import uapi
from engine.proc import auxv, fdinfo, limits, maps, pagemap, stat, status, tasks, timers
from tests.engine.target_support import Target


@pytest.fixture
def state(spawn, tmp_path: Path) -> tuple[Target, int, int, Path]:
    """The 'state' target: (target, growsdown address, child pid, its file)."""
    f = tmp_path / "state file"
    t = spawn("state", str(f))
    words = t.header.split()
    child = int(words[3])
    return t, int(words[1], 16), child, f


def _bit(sig: int) -> int:
    return 1 << (sig - 1)


# -- literal samples -----------------------------------------------------------------------

def test_maps_line_edge_cases() -> None:
    [v] = maps.parse_maps(
        b"7f0000000000-7f0000002000 rw-s 00003000 00:01 1234   /dev/zero (deleted)\n")
    assert (v.start, v.end, v.size, v.offset, v.dev, v.inode) == (
        0x7F0000000000, 0x7F0000002000, 0x2000, 0x3000, (0, 1), 1234)
    assert v.path == "/dev/zero" and v.deleted and v.shared and v.writable and v.is_file
    assert v.map_files_name == "7f0000000000-7f0000002000"
    [anon] = maps.parse_maps(b"1000-2000 ---p 00000000 00:00 0 ")
    assert anon.path == "" and anon.perms == "---p" and not anon.is_file
    [spaced] = maps.parse_maps(b"1000-2000 r--p 00000000 fd:01 77 /tmp/a b  c")
    assert spaced.path == "/tmp/a b  c" and spaced.dev == (0xFD, 1)
    [vdso] = maps.parse_maps(b"1000-2000 r-xp 0 00:00 0 [vdso]")
    assert vdso.path == "[vdso]" and vdso.executable and not vdso.is_file
    with pytest.raises(ValueError):
        maps.parse_maps(b"garbage")
    with pytest.raises(ValueError):
        maps.parse_maps(b"1000-2000 r-xp 0 00:00 0 [vdso]\ngarbage\n")


def test_smaps_sample() -> None:
    text = (
        b"1000-3000 rw-p 00000000 00:00 0 \n"
        b"Size:                  8 kB\nRss:                   4 kB\nAnonymous:             4 kB\n"
        b"Swap:                  0 kB\nVmFlags: rd wr mr mw me gd ac \n"
        b"3000-4000 r--p 00000000 00:00 0 [vvar]\nRss: 0 kB\nVmFlags: rd mr pf io de dd \n"
    )
    a, b = maps.entries(text)
    assert a[:2] == (b"1000", b"3000") and b[2] == b"r--p"
    assert maps.split_tail(b[4]) == (b"00:00", b"0", b"[vvar]")
    assert maps.split_tail(b"fd:01 77     /tmp/a b  c") == (b"fd:01", b"77", b"/tmp/a b  c")
    with pytest.raises(ValueError):
        maps.split_tail(b"fd:01 x /tmp/a")
    fa, fb = (set(f.split()) for f in maps.vmflags(text))
    assert b"gd" in fa and b"gd" not in fb and b"io" in fb


def test_stat_with_hostile_comm() -> None:
    fields = " ".join(str(n) for n in range(3, 53))
    text = f"42 (a) b (c)) {fields}\n".replace(" 3 ", " S ", 1)
    st = stat.parse_stat(text)
    assert st.pid == 42 and st.comm == "a) b (c)" and st.state == "S"
    assert (st.ppid, st.pgid, st.sid, st.num_threads, st.start_code, st.env_end,
            st.exit_code) == (4, 5, 6, 20, 26, 51, 52)


def test_limits_sample_and_missing_rows() -> None:
    path = Path(f"/proc/{os.getpid()}/limits")
    rows = limits.parse_limits(path.read_text())
    assert [r.name for r in rows] == list(uapi.RLIMIT_NAMES)
    assert rows[uapi.RLIMIT_NAMES.index("RLIMIT_CPU")].soft == uapi.RLIM_INFINITY
    text = path.read_text().splitlines()
    with pytest.raises(ValueError, match="RLIMIT_NOFILE"):
        limits.parse_limits("\n".join(x for x in text if "open files" not in x))


def test_auxv_parse() -> None:
    raw = (3).to_bytes(8, "little") + (0x1234).to_bytes(8, "little") + bytes(16)
    assert auxv.parse_auxv(raw) == [(3, 0x1234)]
    assert auxv.parse_auxv(raw + raw, with_null=True) == [(3, 0x1234), (uapi.AT_NULL, 0)]
    with pytest.raises(ValueError):
        auxv.parse_auxv(raw[:-3])


def test_timers_sample() -> None:
    text = ("ID: 3\nsignal: 14/00000000000000ff\nnotify: signal/pid.42\nClockID: 1\n"
            "ID: 4\nsignal: 10/0000000000000000\nnotify: signal/tid.43\nClockID: 0\n")
    a, b = timers.parse_timers(text)
    assert (a.id, a.clock_id, a.signo, a.sigev_value, a.notify, a.notify_tid) == (
        3, 1, 14, 0xFF, uapi.SIGEV_SIGNAL, 42)
    assert b.notify == uapi.SIGEV_SIGNAL | uapi.SIGEV_THREAD_ID and b.notify_tid == 43


def test_fdinfo_extra_lines() -> None:
    info = fdinfo.parse_fdinfo(
        5, "anon_inode:[eventfd]",
        "pos:\t0\nflags:\t02004002\nmnt_id:\t15\nino:\t1057\neventfd-count:  3\n"
        "eventfd-id: 12\n")
    assert info.flags == 0o2004002 and info.cloexec and info.mnt_id == 15
    assert info.extra == {"eventfd-count": "3", "eventfd-id": "12"}


# -- a live target ---------------------------------------------------------------------------

def test_status_of_target(state) -> None:
    t, _, child, _ = state
    st = status.read_status(t.pid)
    assert st.umask == 0o027
    assert st.sig_blk == _bit(signal.SIGUSR1)
    assert st.sig_ign & _bit(signal.SIGUSR2)
    assert st.sig_cgt & _bit(signal.SIGINT)
    assert st.ns_pid[-1] == t.pid and st.ns_tgid[-1] == t.pid and st.ppid == os.getpid()
    assert st.uid == (os.getuid(),) * 4 and st.threads == 1
    kid = status.read_status(child)
    assert kid.ppid == t.pid


def test_stat_of_target(state) -> None:
    t, _, _, _ = state
    st = stat.read_stat(t.pid)
    assert st.pid == t.pid and st.comm == "ktarget" and st.ppid == os.getpid()
    assert st.num_threads == 1 and st.state in "SR"
    assert 0 < st.start_code < st.end_code and st.arg_start < st.arg_end <= st.env_start
    assert stat.read_stat(t.pid, t.pid).pid == t.pid


def test_limits_of_target(state) -> None:
    t, _, _, _ = state
    rows = limits.read_limits(t.pid)
    nofile = rows[uapi.RLIMIT_NAMES.index("RLIMIT_NOFILE")]
    assert nofile.soft == 123 and nofile.hard >= 123


def test_fds_of_target(state) -> None:
    t, _, _, f = state
    fds = {i.fd: i for i in fdinfo.read_fds(t.pid)}
    assert fds[7].target == str(f) and fds[7].pos == 5
    assert fds[7].flags & uapi.O_APPEND and fds[7].flags & uapi.O_ACCMODE == uapi.O_RDWR
    assert fds[8].target.startswith("pipe:[") and fds[8].target == fds[9].target
    assert fds[9].flags & uapi.O_ACCMODE == uapi.O_WRONLY
    assert fds[8].ino == os.stat(f"/proc/{t.pid}/fd/8").st_ino


def test_maps_of_target(state) -> None:
    t, gd, _, _ = state
    plain = maps.read_maps(t.pid)
    smaps = maps.read_text(t.pid, "smaps")
    rows = maps.entries(smaps)
    assert [(v.start, v.end, v.perms) for v in plain] == [
        (int(s, 16), int(e, 16), perms.decode()) for s, e, perms, *_ in rows]
    flags = {int(r[0], 16): set(f.split()) for r, f in zip(rows, maps.vmflags(smaps))}
    grow = next(v for v in plain if v.start == gd)
    assert b"gd" in flags[gd] and grow.size == 4 * uapi.PAGE_SIZE
    stack = next(v for v in plain if v.path == "[stack]")
    assert b"gd" in flags[stack.start]
    exe = os.readlink(f"/proc/{t.pid}/exe")
    assert any(v.path == exe and v.executable for v in plain)
    assert any(v.path == "[vdso]" and not v.is_file for v in plain)
    assert maps.ranges(t.pid) == [(v.start, v.end) for v in plain]


@pytest.mark.parametrize("how", ["query", "text"])
def test_exec_file_maps_of_target(state, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Exactly the executable file lines of the maps text, by PROCMAP_QUERY and (as
    before 6.11, where the ioctl is ENOTTY) from the text."""
    t, _, _, _ = state
    if how == "text":
        def no_query(fd: int) -> list[maps.MapsLine]:
            raise OSError(errno.ENOTTY, "no PROCMAP_QUERY")
        monkeypatch.setattr(maps, "_query_exec_files", no_query)
    want = [v for v in maps.read_maps(t.pid) if v.executable and v.path.startswith("/")]
    assert maps.exec_file_maps(t.pid) == want
    assert any(v.path == os.readlink(f"/proc/{t.pid}/exe") for v in want)


def test_auxv_of_target(state) -> None:
    t, _, _, _ = state
    pairs = dict(auxv.read_auxv(t.pid))
    assert pairs[uapi.AT_PAGESZ] == uapi.PAGE_SIZE
    vdso = next(v for v in maps.read_maps(t.pid) if v.path == "[vdso]")
    assert pairs[uapi.AT_SYSINFO_EHDR] == vdso.start
    raw = auxv.read_auxv_raw(t.pid)
    assert len(raw) % 16 == 0 and raw.endswith(bytes(16))


def test_tasks_of_target(state, spawn) -> None:
    t, _, child, _ = state
    assert tasks.children(t.pid) == [child]
    assert tasks.threads(t.pid) == [t.pid]
    assert tasks.comm(t.pid) == "ktarget" and tasks.personality(t.pid) == 0
    assert tasks.namespaces(t.pid)["pid"] == os.readlink("/proc/self/ns/pid")
    assert tasks.cwd(t.pid) == os.getcwd() and tasks.root(t.pid) == "/"
    assert tasks.exe(t.pid).endswith("/ktarget")
    assert tasks.exists(t.pid)
    th = spawn("threads", "2")
    tids = tasks.threads(th.pid)
    assert len(tids) == 3 and tids[0] == th.pid and tids[1:] == sorted(tids[1:])


def test_notify_and_pidfd_fdinfo_lines() -> None:
    """inotify watches (wd in hex), fanotify group and marks of each kind, a pidfd's Pid,
    parsed from fdinfo as the kernel prints them; a handle whose length disagrees is bad."""
    from engine.proc import anonfd

    handle = "fhandle-bytes:8 fhandle-type:1 f_handle:3f2621008a740c12"
    info = fdinfo.parse_fdinfo(3, "anon_inode:inotify", (
        f"pos:\t0\nflags:\t00\nmnt_id:\t17\nino:\t1044\n"
        f"inotify wd:a ino:21263f sdev:fe00000 mask:300 ignored_mask:0 {handle}\n"))
    [w] = anonfd.inotify(info.extra)
    assert (w.wd, w.mask, w.handle.ino, w.handle.dev, w.handle.type) == (
        10, 0x300, 0x21263F, 0xFE00000, 1)
    assert w.handle.data == bytes.fromhex("3f2621008a740c12")
    info = fdinfo.parse_fdinfo(4, "anon_inode:[fanotify]", (
        "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1044\n"
        "fanotify flags:3 event-flags:8000\n"
        "fanotify mnt_id:1b mflags:40 mask:0 ignored_mask:20\n"
        f"fanotify ino:21263f sdev:fe00000 mflags:0 mask:22 ignored_mask:0 {handle}\n"
        "fanotify sdev:fe00000 mflags:40 mask:0 ignored_mask:1\n"))
    flags, event_flags, marks = anonfd.fanotify(info.extra)
    assert (flags, event_flags) == (3, 0x8000)
    assert [(m.handle is not None, m.mnt_id, m.dev, m.mflags, m.mask, m.ignored_mask)
            for m in marks] == [(True, None, None, 0, 0x22, 0),
                                (False, 0x1B, None, 0x40, 0, 0x20),
                                (False, None, 0xFE00000, 0x40, 0, 1)]
    assert anonfd.pidfd({"Pid": "-1", "NSpid": "-1"}) == -1
    with pytest.raises(ValueError):
        anonfd.inotify({"inotify wd": "1 ino:1 sdev:1 mask:2 ignored_mask:0 fhandle-bytes:9 "
                                      "fhandle-type:1 f_handle:00"})


def test_pagemap_walk_leaves_out_the_zero_page() -> None:
    """The walk for kernels without PAGEMAP_SCAN (6.1) keeps written pages and drops
    pages that only read the zero page: dumped, those became real pages of the restored
    parent, shared copy-on-write with its children (static/cow_tree under 6.1)."""
    if not pagemap.zero_pfn():
        pytest.skip("page frames are hidden here (no CAP_SYS_ADMIN): the zero page "
                    "cannot be told apart")
    page = uapi.PAGE_SIZE
    with mmap.mmap(-1, 3 * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as m:
        _ = m[0]  # the zero page
        m[page] = 1  # a page of its own
        ref = ctypes.c_char.from_buffer(m)
        addr = ctypes.addressof(ref)
        del ref  # (the buffer export would keep the mapping from closing)
        fd = pagemap.open_pagemap(os.getpid())
        try:
            runs = pagemap.private_runs(fd, [(addr, addr + 3 * page)])
        finally:
            os.close(fd)
    assert runs == [(addr + page, addr + 2 * page, 0)]


def test_drop_markers_keeps_real_swap_and_migration_entries(tmp_path: Path) -> None:
    """Of the non-present regions of a PAGEMAP_SCAN answer, those said written are kept
    whole (a pte marker never is); the others keep their real swap entries (a swap file's
    type, or a migration entry's) and lose the uffd-wp pte markers (type 31), read from a
    pagemap (here a file laid out as one)."""
    page, swap = uapi.PAGE_SIZE, uapi.PM_SWAP
    base = 0x100000
    marker, migration, swapped = swap | 31, swap | 30 | (7 << 5), swap | 0 | (9 << 5)
    at = {base + k * page: e for k, e in enumerate(
        [marker, migration, migration, marker, 0, swapped, marker, marker])}
    path = tmp_path / "pagemap"
    with open(path, "wb") as f:
        for addr, e in at.items():
            f.seek(addr // page * 8)
            f.write(e.to_bytes(8, "little"))
    fd = os.open(path, os.O_RDONLY)
    try:
        present = (base - 4 * page, base, uapi.PAGE_IS_PRESENT)
        written = (base + 8 * page, base + 12 * page, uapi.PAGE_IS_WRITTEN)
        got = pagemap.drop_markers(fd, [present, (base, base + 8 * page, 0), written])
    finally:
        os.close(fd)
    assert got == [present, (base + page, base + 3 * page, 0),
                   (base + 5 * page, base + 6 * page, 0), written]
