"""One repetition of each benchmark scenario; returns raw figures (no statistics)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench import pagecache, workloads
from bench.cmdlines import Engine
from bench.procs import DeadlineExceeded, Procs, Timed, wait_pidfd

LAZY_SOCKET_WAIT_S = 60.0  # a daemon of its own (not served) imports and loads first
DUMPED_GONE_S = 10.0  # a dump that exited 0 has killed the tree; death is quick


class StepFailed(Exception):
    """An engine step failed; the message names the step and the engine's error."""


@dataclass
class Context:
    """What every measurement needs."""

    procs: Procs
    memload: Path
    tmp: Path
    timeout: float
    _seq: int = 0

    def scratch(self, tag: str) -> Path:
        """A fresh, private directory under the run's temp root."""
        self._seq += 1
        path = self.tmp / f"{tag}{self._seq}"
        path.mkdir(mode=0o700)
        return path


def _image_files(images: Path) -> list[Path]:
    return [p for p in images.rglob("*") if p.is_file() and not p.name.endswith(".log")]


def image_bytes(images: Path) -> int:
    """Bytes of image files in a dump directory (engine logs not counted)."""
    return sum(p.stat().st_size for p in _image_files(images))


def evict_images(images: Path, sample: dict) -> None:
    """Cold cache: push the image files out of the page cache; record what stayed."""
    sample["cache_left_bytes"] = pagecache.evict(_image_files(images))


def image_disk_bytes(images: Path) -> int:
    """Bytes the image files occupy on disk (allocated blocks; sparse files count less)."""
    return sum(p.stat().st_blocks * 512 for p in _image_files(images))


def run_step(ctx: Context, engine: Engine, step: str, argv: list[str]) -> Timed:
    """Run one engine command with the deadline; StepFailed unless it exits 0. Dirty data
    is written back first (sync, untimed): what the workload or the other engine's last
    step wrote is not flushed at this step's expense (a buffered 1 GiB dump by one engine
    otherwise slowed the next step by up to 0.2 s)."""
    os.sync()
    res = engine.run(ctx.procs, argv, ctx.timeout)
    if not res.ok:
        raise StepFailed(f"{step}: {res.error_line()}")
    return res


def restored_pid(pidfile: Path) -> int:
    """The root pid the engine wrote to --pidfile."""
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError) as exc:
        raise StepFailed(f"restore: no root pid in {pidfile}: {exc}") from exc


def finish_restored(ctx: Context, pid: int, run: workloads.Running,
                    sample: dict) -> None:
    """SIGTERM the restored workload and record its own verdict."""
    ok, detail = workloads.stop_and_verify(ctx.procs, pid, run, ctx.timeout)
    sample["verified"] = ok
    sample["verify_detail"] = detail


def wait_dumped(ctx: Context, run: workloads.Running) -> None:
    """After a dump without --leave-running the tree must be gone; reap it all.

    Every task was re-parented to us when its parent died, so until reaped each one
    is a zombie holding its pid, and restore could not get that pid back.
    """
    for pid in run.tree:
        try:
            ctx.procs.reap(pid, min(ctx.timeout, DUMPED_GONE_S))
        except DeadlineExceeded as exc:
            raise StepFailed(f"dump: exited 0 but left pid {pid} running") from exc


def restore_and_verify(ctx: Context, engine: Engine, run: workloads.Running, images: Path,
                       pidfile: Path, sample: dict, cold: bool = False) -> None:
    """Reap the dumped tree, restore it from ``images`` (evicted from the page cache first
    when cold), time it, and verify the workload."""
    wait_dumped(ctx, run)
    if cold:
        evict_images(images, sample)
    res = run_step(ctx, engine, "restore", engine.restore(images, pidfile))
    sample.update(restore_s=res.wall_s, restore_cpu_s=res.cpu_s,
                  restore_rss_kib=res.maxrss_kib)
    pid = restored_pid(pidfile)
    ctx.procs.track(pid)
    finish_restored(ctx, pid, run, sample)


def cycle(ctx: Context, engine: Engine, wl: workloads.Workload, cold: bool = False) -> dict:
    """Start, dump, restore, verify once: the plain C/R figures (cold: the image is
    evicted from the page cache before restore)."""
    d = ctx.scratch(f"{wl.name}-{engine.name}-")
    run = workloads.start(ctx.procs, ctx.memload, wl, d / "work", ctx.timeout)
    images, pidfile = d / "images", d / "restored.pid"
    images.mkdir(mode=0o700)
    sample: dict = {}
    try:
        res = run_step(ctx, engine, "dump", engine.dump(run.pid, images))
        sample.update(dump_s=res.wall_s, dump_cpu_s=res.cpu_s, dump_rss_kib=res.maxrss_kib,
                      image_bytes=image_bytes(images),
                      image_disk_bytes=image_disk_bytes(images))
        restore_and_verify(ctx, engine, run, images, pidfile, sample, cold)
    finally:
        ctx.procs.cleanup()
        shutil.rmtree(d, ignore_errors=True)
    return sample


def incremental(ctx: Context, engine: Engine, wl: workloads.Workload) -> dict:
    """pre-dump, dirty an eighth of the memory, dump on top, restore the chain."""
    d = ctx.scratch(f"incr-{engine.name}-")
    run = workloads.start(ctx.procs, ctx.memload, wl, d / "work", ctx.timeout)
    pre, final, pidfile = d / "pre", d / "final", d / "restored.pid"
    pre.mkdir(mode=0o700)
    final.mkdir(mode=0o700)
    sample: dict = {}
    try:
        res = run_step(ctx, engine, "pre-dump", engine.pre_dump(run.pid, pre))
        sample.update(predump_s=res.wall_s, predump_rss_kib=res.maxrss_kib,
                      predump_bytes=image_bytes(pre))
        workloads.dirty(run, 1, ctx.timeout)
        sample["dirtied_bytes"] = wl.payload_bytes // 8
        res = run_step(ctx, engine, "dump", engine.dump(run.pid, final, prev=pre))
        sample.update(dump_s=res.wall_s, dump_rss_kib=res.maxrss_kib,
                      image_bytes=image_bytes(final))
        restore_and_verify(ctx, engine, run, final, pidfile, sample)
    finally:
        ctx.procs.cleanup()
        shutil.rmtree(d, ignore_errors=True)
    return sample


def lazy(ctx: Context, engine: Engine, wl: workloads.Workload, cold: bool = False) -> dict:
    """dump; lazy-pages daemon + restore --lazy-pages: return time and all-pages-in time.

    "All pages in" is when the lazy-pages daemon exits by itself (it has pushed every
    page); the workload is verified only after that, so its own reads do not count.
    cold: the image is evicted from the page cache before the daemon starts.
    """
    d = ctx.scratch(f"lazy-{engine.name}-")
    run = workloads.start(ctx.procs, ctx.memload, wl, d / "work", ctx.timeout)
    images, pidfile = d / "images", d / "restored.pid"
    images.mkdir(mode=0o700)
    sample: dict = {}
    daemon = None
    try:
        res = run_step(ctx, engine, "dump", engine.dump(run.pid, images))
        sample.update(dump_s=res.wall_s, image_bytes=image_bytes(images))
        wait_dumped(ctx, run)
        if cold:
            evict_images(images, sample)
        t_daemon = time.monotonic()
        daemon = engine.start(ctx.procs, engine.lazy_pages(images))
        exit_watch = ExitWatch(daemon.pid, ctx.timeout)
        wait_for_socket(images, exit_watch)
        sample.update(daemon_ready_s=time.monotonic() - t_daemon)
        if exit_watch.exited():  # it gave up before any restore: that is the error
            raise StepFailed(f"lazy-pages: {daemon.finish(ctx.timeout).error_line()}")
        # run_step's untimed write-back here, before the clock starts: "all pages in"
        # counts from the restore's start (it once counted the sync of a buffered dump's
        # image too, ~0.5 s for 1 GiB, for either engine)
        os.sync()
        t0 = time.monotonic()
        res = run_step(ctx, engine, "restore --lazy-pages",
                       engine.restore(images, pidfile, lazy=True))
        sample.update(restore_s=res.wall_s, restore_rss_kib=res.maxrss_kib)
        pid = restored_pid(pidfile)
        ctx.procs.track(pid)
        served = daemon.finish(ctx.timeout)
        exited_at = exit_watch.result()
        if not served.ok or exited_at is None:
            raise StepFailed(f"lazy-pages: {served.error_line()}")
        sample.update(all_in_s=exited_at - t0, lazy_rss_kib=served.maxrss_kib)
        finish_restored(ctx, pid, run, sample)
    finally:
        if daemon is not None:
            daemon.end()
        ctx.procs.cleanup()
        shutil.rmtree(d, ignore_errors=True)
    return sample


class ExitWatch:
    """Notes the moment a process exits, from a thread, while the caller does other work.

    Needed because the lazy-pages daemon may finish before restore returns.
    """

    def __init__(self, pid: int, timeout: float) -> None:
        self._at: float | None = None
        self._thread = threading.Thread(target=self._watch, args=(pid, timeout),
                                        daemon=True)
        self._thread.start()

    def _watch(self, pid: int, timeout: float) -> None:
        if wait_pidfd(pid, timeout):
            self._at = time.monotonic()

    def exited(self) -> bool:
        """True once the process has exited."""
        return not self._thread.is_alive() and self._at is not None

    def result(self) -> float | None:
        """monotonic() time of the exit (call after the process was reaped)."""
        self._thread.join()
        return self._at


def wait_for_socket(images: Path, daemon: ExitWatch) -> None:
    """Give the lazy-pages daemon a moment to create its socket before restore dials it."""
    deadline = time.monotonic() + LAZY_SOCKET_WAIT_S
    while time.monotonic() < deadline and not daemon.exited():
        if any(p.is_socket() for p in images.iterdir()):
            return
        time.sleep(0.005)
