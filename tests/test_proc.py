"""Unit tests of the harness-side /proc parsers (zdtm/proc.py), with canned kernel text."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from zdtm import plumbing, proc

MAPS = """\
55d7648f2000-55d7648f4000 r--p 00000000 fe:00 5308581                    /work/zdtm/static/mem_anon
55d7648f8000-55d7648f9000 rw-p 00005000 fe:00 5308581                    /work/zdtm/static/mem_anon
55d76a000000-55d76a021000 rw-p 00000000 00:00 0                          [heap]
7f2749e00000-7f274ae00000 rw-p 00000000 00:00 0 
7f274ae00000-7f274ae01000 r--s 00002000 fe:00 4242                       /tmp/dir with spaces/my file
7f274ae01000-7f274ae02000 rw-s 00000000 00:01 1031                       /dev/zero (deleted)
7f274ae02000-7f274ae03000 rw-p 00000000 fe:00 77                         /tmp/gone (deleted)
7f274ae03000-7f274ae04000 rw-s 00000000 00:01 9                          /memfd:buf (deleted)
7f274b16f000-7f274b173000 r--p 00000000 00:00 0                          [vvar]
7f274b173000-7f274b175000 r--p 00000000 00:00 0                          [vvar_vclock]
7f274b175000-7f274b177000 r-xp 00000000 00:00 0                          [vdso]
7ffd97285000-7ffd972a6000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
"""


def test_maps_lines() -> None:
    entries = proc.parse_maps(MAPS)
    assert len(entries) == 13
    exe = entries[0]
    assert (exe.start, exe.end, exe.perms, exe.offset) == (0x55D7648F2000, 0x55D7648F4000,
                                                          "r--p", 0)
    assert (exe.dev, exe.inode, exe.path) == ("fe:00", 5308581, "/work/zdtm/static/mem_anon")
    assert not exe.anonymous and not exe.shared and exe.pages == 2
    assert entries[1].offset == 0x5000
    heap, anon = entries[2], entries[3]
    assert heap.path == "[heap]" and heap.anonymous
    assert anon.path == "" and anon.anonymous and anon.pages == (16 << 20) // proc.PAGE_SIZE


def test_maps_paths_with_spaces_and_deleted() -> None:
    entries = proc.parse_maps(MAPS)
    spaced = entries[4]
    assert spaced.path == "/tmp/dir with spaces/my file"
    assert spaced.shared and not spaced.deleted and spaced.offset == 0x2000
    shm, gone, memfd = entries[5], entries[6], entries[7]
    assert shm.path == "/dev/zero (deleted)" and shm.deleted and shm.shared
    assert gone.deleted and not gone.shared and gone.path.startswith("/tmp/gone")
    assert memfd.deleted and memfd.path == "/memfd:buf (deleted)"


def test_maps_special_areas() -> None:
    by_path = {e.path: e for e in proc.parse_maps(MAPS)}
    for name in ("[vvar]", "[vvar_vclock]", "[vdso]", "[stack]", "[vsyscall]"):
        assert name in by_path
        assert by_path[name].inode == 0
    assert by_path["[vsyscall]"].start == 0xFFFFFFFFFF600000
    assert by_path["[vsyscall]"].perms == "--xp"
    assert by_path["[stack]"].anonymous and not by_path["[vdso]"].anonymous


@pytest.mark.parametrize("line", [
    "",
    "garbage",
    "7f00-7f10 rw-p 0 00:00",            # inode missing
    "7f00-7f10 rw 00000000 00:00 0",     # perms too short
    "zz00-7f10 rw-p 00000000 00:00 0",   # not hex
])
def test_maps_rejects_garbage(line: str) -> None:
    with pytest.raises(ValueError):
        proc.parse_maps_line(line)


SMAPS = """\
55d7648f2000-55d7648f4000 r--p 00000000 fe:00 5308581                    /bin/x y
Size:                  8 kB
Rss:                   8 kB
VmFlags: rd mr mw me 
7f2749e00000-7f274ae00000 rw-p 00000000 00:00 0 
Size:              16384 kB
Anonymous:         12288 kB
VmFlags: rd wr mr mw me ac um uw 
7ffd97285000-7ffd972a6000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
VmFlags: rd wr mr mw me gd ac 
"""


def test_smaps_vmflags() -> None:
    entries = proc.parse_smaps(SMAPS)
    assert [e.path for e in entries] == ["/bin/x y", "", "[stack]"]
    assert entries[0].vmflags == {"rd", "mr", "mw", "me"}
    assert {"um", "uw", "ac"} <= entries[1].vmflags
    assert "gd" in entries[2].vmflags
    assert proc.parse_smaps("") == []


def test_smaps_truncated_block_is_an_error() -> None:
    with pytest.raises(ValueError, match="VmFlags"):
        proc.parse_smaps(SMAPS + "7ffd972a6000-7ffd972a7000 rw-p 00000000 00:00 0 \nSize: 4 kB\n")


def test_stat_with_hostile_comm() -> None:
    text = ("4242 (a) b (c) T 1 4242 4241 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 3 0 1234 "
            "1000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n")
    st = proc.parse_stat(text)
    assert st.pid == 4242 and st.comm == "a) b (c"
    assert (st.state, st.ppid, st.pgrp, st.session, st.num_threads) == ("T", 1, 4242, 4241, 3)
    assert (st.nice, st.exit_signal, st.rt_priority, st.policy) == (0, 17, 0, 0)


def test_limits() -> None:
    text = ("Limit                     Soft Limit           Hard Limit           Units     \n"
            "Max cpu time              unlimited            unlimited            seconds   \n"
            "Max open files            1024                 4096                 files     \n"
            "Max nice priority         0                    0                    \n")
    assert proc.parse_limits(text) == {
        "Max cpu time": "unlimited unlimited seconds",
        "Max open files": "1024 4096 files",
        "Max nice priority": "0 0",
    }


def test_status_nspid() -> None:
    text = ("Name:\tinit\nState:\tS (sleeping)\nTgid:\t7001\nPid:\t7001\nPPid:\t6990\n"
            "NStgid:\t7001\t1\nNSpid:\t7001\t1\nNSpgid:\t7001\t1\nNSsid:\t6990\t0\n"
            "Threads:\t1\n")
    st = proc.parse_status(text)
    assert st["State"] == "S (sleeping)"
    assert proc.status_ids(st, "NSpid") == [7001, 1]
    assert proc.status_ids(st, "NSsid") == [6990, 0]
    assert proc.status_ids(st, "Missing") == []


def test_fdinfo_file_pipe_eventfd_inotify() -> None:
    f = proc.parse_fdinfo("pos:\t4096\nflags:\t02102002\nmnt_id:\t31\nino:\t5308581\n")
    assert (f.pos, f.mnt_id, f.ino, f.extra) == (4096, 31, 5308581, ())
    assert f.flags == 0o2102002
    assert proc.format_open_flags(f.flags) == "O_RDWR|O_APPEND|O_LARGEFILE|O_CLOEXEC"
    pipe = proc.parse_fdinfo("pos:\t0\nflags:\t01\nmnt_id:\t15\nino:\t18681\n")
    assert proc.format_open_flags(pipe.flags) == "O_WRONLY" and pipe.ino == 18681
    ev = proc.parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t1057\n"
                           "eventfd-count:                5\neventfd-id: 3\n"
                           "eventfd-semaphore: 0\n")
    assert ev.get("eventfd-count") == "5" and ev.get("eventfd-semaphore") == "0"
    assert ev.get("nope") is None
    ino = proc.parse_fdinfo("pos:\t0\nflags:\t00\nmnt_id:\t16\nino:\t1057\n"
                            "inotify wd:1 ino:2 sdev:fe00000 mask:fff ignored_mask:0\n")
    assert ino.extra[0][0] == "inotify wd"


def test_open_flags_unknown_bits_are_shown() -> None:
    assert proc.format_open_flags(0o0) == "O_RDONLY"
    assert proc.format_open_flags(0o40000000000) == "O_RDONLY|0o40000000000"


def test_ns_links_and_mountinfo() -> None:
    assert proc.parse_ns_link("uts:[4026531838]") == ("uts", 4026531838)
    assert proc.parse_ns_link("pid_for_children:[4026531836]")[0] == "pid_for_children"
    with pytest.raises(ValueError):
        proc.parse_ns_link("uts:4026531838")
    text = ("22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
            "25 22 0:5 / /dev rw,nosuid - devtmpfs udev rw,size=10k\n")
    assert proc.parse_mountinfo(text) == [("/", "ext4", "/dev/vda"), ("/dev", "devtmpfs", "udev")]


def test_readers_on_a_live_child() -> None:
    r, w = os.pipe()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                             pass_fds=(r, w))
    try:
        assert child.pid in plumbing.children(os.getpid())
        assert proc.read_tids(child.pid) and proc.read_tids(child.pid)[0] == child.pid
        fds = proc.read_fds(child.pid)
        assert fds[r][0] == fds[w][0] and fds[r][0].startswith("pipe:[")
        assert fds[r][1].flags & 3 == os.O_RDONLY and fds[w][1].flags & 3 == os.O_WRONLY
    finally:
        child.kill()
        child.wait(timeout=10)
        os.close(r)
        os.close(w)
    assert proc.read_fds(child.pid) == {}
    assert plumbing.children(child.pid) == []
