"""Live tests of zdtm.snapshot: what a capture records, that it changes nothing, and that two
captures of an unchanged tree compare equal while real changes are found."""

from __future__ import annotations

import ctypes
import os
import re
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from zdtm import allowances, checks, memory, plumbing, snapshot
from zdtm.proc import PAGE_SIZE

PROGRAM = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static const struct timespec nap = { 0, 20 * 1000 * 1000 };

static void *napper(void *arg)
{
	for (;;)
		nanosleep(&nap, NULL);
	return arg;
}

int main(int argc, char **argv)
{
	long pg = sysconf(_SC_PAGESIZE);
	int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
	char buf[10000];
	int p[2];
	pthread_t t;

	memset(buf, 'f', sizeof(buf));
	if (fd < 0 || write(fd, buf, sizeof(buf)) != sizeof(buf) || lseek(fd, 1234, SEEK_SET) < 0)
		return 1;
	int fd2 = dup(fd);                      /* same open file description */
	int fd3 = open(argv[1], O_RDONLY);      /* another description of the same file */
	if (fd2 < 0 || fd3 < 0 || pipe(p))
		return 1;
	char *shm = mmap(NULL, 64 * pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	char *anon = mmap(NULL, 256 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *split = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *gd = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN, -1, 0);
	/* 4 pages over a 10000-byte file: page 2 ends in the file's end, page 3 is past it */
	char *fmap = mmap(NULL, 4 * pg, PROT_READ, MAP_SHARED, fd3, 0);
	if (shm == MAP_FAILED || anon == MAP_FAILED || split == MAP_FAILED || gd == MAP_FAILED ||
	    fmap == MAP_FAILED)
		return 1;
	memset(shm, 'S', 64 * pg);
	anon[0] = 1;
	anon[10 * pg] = 2;
	anon[100 * pg] = 3;
	split[0] = 'a';
	mprotect(split + 2 * pg, 2 * pg, PROT_READ);
	gd[3 * pg] = 'g';
	if (pthread_create(&t, NULL, napper, NULL))
		return 1;
	pid_t child = fork();
	if (child == 0)
		napper(NULL);
	printf("READY anon=%p shm=%p gd=%p split=%p fmap=%p child=%d fd=%d fd2=%d fd3=%d "
	       "r=%d w=%d\n", anon, shm, gd, split, fmap, child, fd, fd2, fd3, p[0], p[1]);
	fflush(stdout);
	napper(NULL);
	return 0;
}
"""


@dataclass
class Subject:
    """The running test program and what it told about itself."""

    proc: subprocess.Popen
    info: dict[str, int]
    file: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found in PATH")
    d = tmp_path_factory.mktemp("snapbin")
    (d / "subject.c").write_text(PROGRAM)
    subprocess.run(["gcc", "-O1", "-pthread", "-o", str(d / "subject"), str(d / "subject.c")],
                   check=True, timeout=60)
    return d / "subject"


@pytest.fixture
def subject(binary: Path, tmp_path: Path) -> Iterator[Subject]:
    file = tmp_path / "data"
    proc = subprocess.Popen([str(binary), str(file)], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "subject program did not start"
        line = proc.stdout.readline().decode()
        assert line.startswith("READY"), line
        info = {k: int(v, 0) for k, v in re.findall(r"(\w+)=(0x[0-9a-f]+|\d+)", line)}
        _wait_napping([proc.pid, info["child"]])
        plumbing.freeze(proc.pid, 10)
        yield Subject(proc, info, file)
    finally:
        victims = plumbing.tree(proc.pid)
        for pid in reversed(victims):
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        left = plumbing.wait_gone(victims, 10)
        plumbing.reap_zombie_children()
        proc.stdout.close()
        assert not left


def _wait_napping(pids: list[int], timeout: float = 10.0) -> None:
    """Wait until every thread sleeps in clock_nanosleep (230): the program is quiescent, so
    nothing it still had to do after printing READY (stdio bookkeeping) runs between captures."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls = [Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()[0]
                 for pid in pids for tid in os.listdir(f"/proc/{pid}/task")]
        if all(c == "230" for c in calls):
            return
        time.sleep(0.01)
    raise TimeoutError(f"tasks {pids} never all slept in clock_nanosleep")


def _present_pages(pid: int, start: int, pages: int) -> int:
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(start // PAGE_SIZE * 8)
        data = f.read(pages * 8)
    return sum(1 for i in range(7, len(data), 8) if data[i] & 0x80)


def test_tree_structure(subject: Subject) -> None:
    tree = snapshot.capture(subject.pid)
    root = tree.procs[subject.pid]
    child = tree.procs[subject.info["child"]]
    assert tree.root == subject.pid and next(iter(tree.procs)) == subject.pid
    assert root.ppid == snapshot.OUTSIDE and child.ppid == subject.pid
    assert len(root.threads) == 2 and len(child.threads) == 1
    assert root.state == "T" and child.state == "T"
    assert all(conf is not None and conf.pointer for conf in root.rseq.values())
    assert set(root.rseq) == set(root.threads)
    assert set(root.namespaces.values()) == {"host"}
    assert tree.notes == []
    assert root.attrs["Umask"] == f"{_umask():04o}" and root.attrs["cwd"] == os.getcwd()
    assert root.attrs["limit Max open files"] and root.attrs["exit_signal"] == "17"
    # the harness's SIGSTOP is job control, not a pending signal of the test
    assert root.attrs["ShdPnd"] == "0" * 16
    assert set(root.thread_attrs) == set(root.threads)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_fd_table_is_normalised(subject: Subject) -> None:
    tree = snapshot.capture(subject.pid)
    fds = tree.procs[subject.pid].fds
    i = subject.info
    f, f2, f3 = fds[i["fd"]], fds[i["fd2"]], fds[i["fd3"]]
    assert f.target == str(subject.file) and f.pos == 1234 and f.flags & 3 == os.O_RDWR
    assert f.shared is not None and f.shared == f2.shared  # dup(): one description
    assert f3.shared is not None and f3.shared != f.shared  # fork() shares it with the child
    r, w = fds[i["r"]], fds[i["w"]]
    assert r.target == w.target and r.target == f"pipe[pid {subject.pid} fd {i['r']}]"
    assert ":[" not in r.target  # no inode numbers in the compared state
    child = tree.procs[i["child"]]
    assert child.fds[i["fd"]].shared == f.shared


def test_maps_and_memory(subject: Subject) -> None:
    tree = snapshot.capture(subject.pid)
    root, child = tree.procs[subject.pid], tree.procs[subject.info["child"]]
    by_start = {v.start: v for v in root.maps}
    shm = by_start[subject.info["shm"]]
    assert shm.object_id and shm.object_id == f"obj[pid {subject.pid} {shm.start:x}]" and "sh" in shm.flags
    assert {v.start: v for v in child.maps}[shm.start].object_id == shm.object_id
    assert shm.digest is not None and len({shm.digest[i:i + 8] for i in range(0, 512, 8)}) == 1
    gd = next(v for v in root.maps if v.start <= subject.info["gd"] < v.end)
    assert "gd" in gd.flags
    split = subject.info["split"]
    assert by_start[split].perms == "rw-p" and by_start[split + 2 * PAGE_SIZE].perms == "r--p"
    anon = next(v for v in root.maps if v.start <= subject.info["anon"] < v.end)
    off = (subject.info["anon"] - anon.start) // PAGE_SIZE * 8
    pages = [anon.digest[off + k * 8:off + k * 8 + 8] for k in range(256)]
    written = [k for k, d in enumerate(pages) if d != memory.ZERO_DIGEST]
    assert written == [0, 10, 100]
    assert all(v.digest is None for v in root.maps if v.path.startswith("[vvar"))
    fmap = by_start[subject.info["fmap"]]
    assert fmap.path == str(subject.file) and fmap.perms == "r--s"
    assert fmap.digest == (memory.page_digest(b"f" * PAGE_SIZE) * 2
                           + memory.page_digest(b"f" * (10000 - 2 * PAGE_SIZE)
                                                + bytes(3 * PAGE_SIZE - 10000))
                           + memory.UNREADABLE)


def test_capture_changes_nothing(subject: Subject) -> None:
    i = subject.info
    anon0 = _present_pages(subject.pid, i["anon"], 256)
    shm0 = _present_pages(i["child"], i["shm"], 64)
    maps0 = Path(f"/proc/{subject.pid}/maps").read_text()
    snapshot.capture(subject.pid)
    assert _present_pages(subject.pid, i["anon"], 256) == anon0 == 3
    assert _present_pages(i["child"], i["shm"], 64) == shm0  # read via the object, not the task
    assert Path(f"/proc/{subject.pid}/maps").read_text() == maps0  # growsdown not grown
    for pid in plumbing.tree(subject.pid):
        assert all(s == "T" for s in _states(pid))


def _states(pid: int) -> list[str]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        out.append(stat.rsplit(")", 1)[1].split()[0])
    return out


def test_unchanged_tree_compares_equal_after_running(subject: Subject) -> None:
    """The threads run (and the kernel rewrites their rseq areas) between the captures.

    Running, a task's first write to a page it shares copy-on-write with its child (a
    stack page) breaks that sharing: the loss the sharing check looks for across C/R,
    where the tree stays frozen. Here it is set apart as an allowance would, and any
    other difference fails."""
    s0 = snapshot.capture(subject.pid, ns=True)
    plumbing.thaw(plumbing.tree(subject.pid))
    time.sleep(0.3)
    plumbing.freeze(subject.pid, 10)
    s1, _ = allowances.reconcile(s0, snapshot.capture(subject.pid, ns=True),
                                 [allowances.Allowance("sharing", "cow-lost", "it ran")])
    assert checks.compare(s0, s1) == []
    assert s0.uts and all(len(names) == 2 for names in s0.uts.values())


def test_changes_are_found(subject: Subject) -> None:
    i = subject.info
    s0 = snapshot.capture(subject.pid)
    shm_page = i["shm"] + 5 * PAGE_SIZE
    fd = os.open(f"/proc/{subject.pid}/mem", os.O_RDWR)
    try:
        os.pwrite(fd, b"X", shm_page + 7)
    finally:
        os.close(fd)
    pidfd = os.pidfd_open(subject.pid)
    try:
        copy = _pidfd_getfd(pidfd, i["fd"])
    finally:
        os.close(pidfd)
    try:
        os.lseek(copy, 99, os.SEEK_SET)
    finally:
        os.close(copy)
    problems = [str(p) for p in checks.compare(s0, snapshot.capture(subject.pid))]
    mem = [p for p in problems if p.startswith("memory:")]
    # the shared object changed, so both processes that map it see the change
    assert len(mem) == 2, problems
    assert all(f"page {shm_page:#x} differs" in p for p in mem)
    assert any(f"pid {i['child']} " in p for p in mem)
    fdp = [p for p in problems if p.startswith("fds:")]
    assert f"fds: pid {subject.pid} (subject): fd {i['fd']} {subject.file}: pos 1234 -> 99" in fdp
    assert any(f"fd {i['fd2']} " in p for p in fdp)  # the dup shares the offset
    assert len(problems) == len(mem) + len(fdp)


def _pidfd_getfd(pidfd: int, fd: int) -> int:
    res = plumbing.libc.syscall(438, pidfd, fd, 0)
    if res < 0:
        raise OSError(ctypes.get_errno(), "pidfd_getfd")
    return res


def test_own_state_sees_leaks() -> None:
    before = snapshot.own_state()
    fd = os.open("/dev/null", os.O_RDONLY)
    child = subprocess.Popen(["sleep", "30"])
    try:
        after = snapshot.own_state()
        problems = [str(p) for p in checks.compare_own(before, after)]
        assert f"leak: harness fd {fd} leaked: /dev/null" in problems
        assert any(p.startswith(f"leak: process {child.pid} left behind: sleep")
                   for p in problems)
        assert not [p for p in checks.compare_own(before, after, expected=[child.pid])
                    if "process" in p.message]
    finally:
        os.close(fd)
        child.kill()
        child.wait(timeout=10)
    assert checks.compare_own(before, snapshot.own_state()) == []


LAZY_PROGRAM = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void)
{
	long pg = sysconf(_SC_PAGESIZE);
	struct uffdio_api api = { .api = UFFD_API };
	int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	char *area = mmap(NULL, 16 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct uffdio_register reg = {
		.range = { .start = (unsigned long)area, .len = 16 * pg },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};
	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) || ioctl(uffd, UFFDIO_REGISTER, &reg))
		return 1;
	printf("READY area=%p\n", area);
	fflush(stdout);
	for (;;)
		pause();   /* never serves a fault: a lazy-pages daemon that hangs */
}
"""


def test_unserved_lazy_pages_do_not_hang_the_capture(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found in PATH")
    (tmp_path / "lazy.c").write_text(LAZY_PROGRAM)
    subprocess.run(["gcc", "-o", str(tmp_path / "lazy"), str(tmp_path / "lazy.c")],
                   check=True, timeout=60)
    monkeypatch.setattr(snapshot, "LAZY_TIMEOUT", 2.0)
    kids = set(plumbing.descendants(os.getpid()))
    proc = subprocess.Popen([str(tmp_path / "lazy")], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "lazy program did not start"
        area = int(proc.stdout.readline().decode().split("area=")[1], 16)
        plumbing.freeze(proc.pid, 10)
        t0 = time.monotonic()
        tree = snapshot.capture(proc.pid)
        assert time.monotonic() - t0 < 30
        assert any("not all served within 2s" in n for n in tree.notes), tree.notes
        vma = next(v for v in tree.procs[proc.pid].maps if v.start <= area < v.end)
        first = (area - vma.start) // PAGE_SIZE * 8
        assert vma.digest is not None
        assert vma.digest[first:first + 16 * 8] == memory.UNREADABLE * 16
        assert [p for p in plumbing.descendants(os.getpid()) if p not in kids] == [proc.pid]
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_epoll_watches_compare_without_file_ids_in_any_order() -> None:
    """An epoll's watches are part of its fd state: a watch with other events or data is
    a difference, the watched files' inode numbers and the listing order are not."""
    before = [("tfd", "5 events: 19 data: 5  pos:0 ino:61af sdev:7"),
              ("tfd", "6 events: 80000019 data: 6  pos:0 ino:9 sdev:f")]
    after = [("tfd", "6 events: 80000019 data: 6  pos:0 ino:77 sdev:f"),
             ("tfd", "5 events: 19 data: 5  pos:0 ino:1234 sdev:7")]
    assert snapshot.stable_fdinfo(before) == snapshot.stable_fdinfo(after)
    changed = [("tfd", "5 events: 19 data: 9  pos:0 ino:61af sdev:7"), before[1]]
    assert snapshot.stable_fdinfo(before) != snapshot.stable_fdinfo(changed)
    assert snapshot.stable_fdinfo([("it_value", "(5, 0)"), ("clockid", "1")]) == (
        ("clockid", "1"),)


def test_lock_lines_compare_kind_type_and_range_only() -> None:
    """A lock keeps its kind, type and range; the owner's host pid and the file's ids
    are judged elsewhere (tree, fds) and may change with a restore."""
    before = [("lock", "1: POSIX  ADVISORY  WRITE 25215 fe:00:2147320 5 14")]
    after = [("lock", "2: POSIX  ADVISORY  WRITE 3 fe:01:77 5 14")]
    assert snapshot.stable_fdinfo(before) == snapshot.stable_fdinfo(after) == (
        ("lock", "POSIX ADVISORY WRITE 5 14"),)
    for other in ("1: POSIX  ADVISORY  READ 25215 fe:00:2147320 5 14",
                  "1: POSIX  ADVISORY  WRITE 25215 fe:00:2147320 5 EOF",
                  "1: OFDLCK ADVISORY  WRITE -1 fe:00:2147320 5 14"):
        assert snapshot.stable_fdinfo([("lock", other)]) != snapshot.stable_fdinfo(before)


def test_stopped_by_signal_and_membarrier(subject: Subject) -> None:
    """``held`` names the tasks the test stopped itself (absent without it); the in-task
    membarrier probes answer "no" for a process that never registered."""
    child = subject.info["child"]
    tree = snapshot.capture(subject.pid, held={child})
    assert tree.procs[child].taskattrs["stopped by signal"] == "yes"
    assert tree.procs[subject.pid].taskattrs["stopped by signal"] == "no"
    assert tree.procs[subject.pid].taskattrs["membarrier private expedited"] == "no"
    assert "stopped by signal" not in snapshot.capture(subject.pid).procs[child].taskattrs


def test_notify_and_pidfd_lines_compare_without_renewed_ids() -> None:
    """inotify watches (wd, mask, inode) and fanotify marks are part of the fd state; a
    mount mark's mount id and a pidfd's pids above the tree's namespace are not."""
    line = "3 ino:21263f sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1"
    watch = ("inotify wd", line + " f_handle:3f2621008a740c12")
    for other in (watch[1].replace("3 ino", "4 ino"), watch[1].replace("mask:300", "mask:100")):
        assert snapshot.stable_fdinfo([watch]) != snapshot.stable_fdinfo([("inotify wd", other)])
    mnt = [("fanotify mnt_id", "1b mflags:0 mask:8 ignored_mask:0")]
    assert snapshot.stable_fdinfo(mnt) == snapshot.stable_fdinfo(
        [("fanotify mnt_id", "2c0 mflags:0 mask:8 ignored_mask:0")])
    assert snapshot.stable_fdinfo(mnt) != snapshot.stable_fdinfo(
        [("fanotify mnt_id", "1b mflags:0 mask:10 ignored_mask:0")])
    assert snapshot.stable_fdinfo([("NSpid", "8123\t1")]) == (("NSpid", "1"),)
    assert snapshot.stable_fdinfo([("NSpid", "1")]) != snapshot.stable_fdinfo([("NSpid", "2")])
