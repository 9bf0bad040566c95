"""Handlers of `python -m engine dump` and `pre-dump` (the parser is in engine/__main__.py)."""

from __future__ import annotations

import argparse
import os
import sys

from engine.dump.dumper import DumpStats, TaskVanished
from engine.dump.dumper import dump as run_dump


def dump(args: argparse.Namespace) -> int:
    """`dump -t PID -D DIR [--leave-running] [--prev-images-dir P] [--track-mem]`.
    EngineError propagates to the CLI, which reports it."""
    stats = run_dump(args.pid, args.images_dir, leave_running=args.leave_running,
                     prev_dir=args.prev_images_dir, track_mem=args.track_mem)
    _report("dump", stats)
    return 0


#: A pre-dump of a tree that keeps changing tries again when a task exits mid-read.
PRE_DUMP_TRIES = 3


def pre_dump(args: argparse.Namespace) -> int:
    """`pre-dump -t PID -D DIR [--prev-images-dir P]`: a complete image taken while the
    tree goes on running, with memory tracking armed so that the next dump against it
    (`--prev-images-dir DIR`) only copies the pages written since."""
    for attempt in range(PRE_DUMP_TRIES):
        try:
            stats = run_dump(args.pid, args.images_dir, leave_running=True,
                             prev_dir=args.prev_images_dir, track_mem=True, kind="pre-dump")
            break
        except TaskVanished:
            # The tree runs on and changes: a task gone mid-read is not in the next try.
            if attempt == PRE_DUMP_TRIES - 1:
                raise
    _report("pre-dump", stats)
    return 0


def _report(what: str, stats: DumpStats) -> None:
    """One line on stderr: how long the tree was frozen and what was written (also in
    the image's stats.json); the figures of each step too when ENGINE_VERBOSE is set."""
    print(f"{what}: frozen {stats.frozen * 1000:.1f} ms; {stats.pages_frozen} pages "
          f"written while frozen, {stats.pages_total} in total, {stats.parent_pages} "
          "in parent", file=sys.stderr)
    if os.environ.get("ENGINE_VERBOSE"):
        steps = " ".join(f"{k}={v * 1000:.1f}ms" for k, v in stats.seconds.items())
        print(f"{what}: {stats.tasks} tasks, {stats.threads} threads, {stats.vmas} vmas, "
              f"{stats.pages} pages copied ({stats.task_written // 4096} written by the "
              f"tasks), {stats.parent_pages} in parent, {stats.shmem_pages} shmem pages; "
              f"{steps}", file=sys.stderr)
