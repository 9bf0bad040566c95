"""`python -m engine restore` and `lazy-pages` handlers (called by engine.__main__)."""

from __future__ import annotations

import argparse
import os
import sys
import time

from engine.errors import default_termination
from engine.restore.restorer import RestoreOptions
from engine.restore.restorer import restore as restore_images


def restore(args: argparse.Namespace) -> int:
    """Restore -D DIR. With -d return once restored (the root is re-parented to the
    caller's child subreaper); without it, stay the root's parent like `criu restore`
    and exit with its status when it ends."""
    opts = RestoreOptions(args.images_dir, leave_stopped=args.leave_stopped,
                          pidfile=args.pidfile, lazy_pages=args.lazy_pages,
                          root=args.root, trusted=args.trust_images,
                          allow_changed_files=args.allow_changed_files)
    start = time.monotonic()
    pid = restore_images(opts)
    if os.environ.get("ENGINE_VERBOSE"):
        steps = " ".join(f"{k}={v * 1000:.1f}ms" for k, v in opts.timings.items())
        mib = {k: v / (1 << 20) for k, v in opts.page_bytes.items()}
        print(f"restore: root {pid}; {steps}; total={(time.monotonic() - start) * 1000:.1f}ms;"
              f" private pages {mib['task']:.1f} MiB read by the tasks, "
              f"{mib['engine']:.1f} MiB written by the engine", file=sys.stderr)
    if args.detach:
        return 0
    default_termination()
    # Foreground mode: the restored program's lifetime is the command's lifetime (the
    # caller bounds it, e.g. with a signal), so this wait has no deadline of its own.
    while True:
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status):
            return os.WEXITSTATUS(status)
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)


def lazy_pages(args: argparse.Namespace) -> int:
    """The lazy-pages daemon (engine.lazy.daemon): serve one lazy restore, then exit."""
    from engine.lazy import daemon

    return daemon.run(args.images_dir, args.trust_images)
