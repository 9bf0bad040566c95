"""``python -m engine``: the engine's command line (CRIU-like), dispatching to its parts.

    check [--json]                                  engine.features.cli
    dump -t PID -D DIR [...]  / pre-dump ...        engine.dump.cli.dump / .pre_dump
    restore -D DIR [...]      / lazy-pages -D DIR   engine.restore.cli.restore / .lazy_pages
    show DIR                                        engine.images.show.show
    serve --socket PATH                             engine.serve.serve (a fork per command)

Each handler gets the parsed argparse.Namespace and returns the exit status. An
EngineError (a bad command line included, phase "usage") becomes
``engine: error: <phase>: <message>`` on stderr and exit status 1; any other exception
is a crash: traceback, ``engine: error: internal: ...``, status 2.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from engine import errors
from engine.errors import EngineError

Handler = Callable[[argparse.Namespace], int]

EXIT_ERROR = 1
EXIT_CRASH = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as an EngineError (phase "usage"), so it
    ends in the same one-line ``engine: error: ...`` form as every other failure."""

    def error(self, message: str) -> NoReturn:
        raise EngineError("usage", f"{self.prog}: {message}")


@functools.cache
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (see docs/ARCHITECTURE.md); built once
    (6 ms here): the engine server built it for its own command line, and its forked
    steps inherit it."""
    parser = _Parser(prog="python -m engine", description="bundled checkpoint/restore engine")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    p = sub.add_parser("check", help="print the kernel features the engine found")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    for name, hlp in (("dump", "checkpoint a process tree"),
                      ("pre-dump", "dump memory only, leaving the tree running")):
        p = sub.add_parser(name, help=hlp)
        p.add_argument("-t", "--tree", dest="pid", type=int, required=True,
                       help="root pid of the tree")
        p.add_argument("-D", "--images-dir", dest="images_dir", required=True)
        p.add_argument("--prev-images-dir", dest="prev_images_dir", default=None,
                       help="parent dump for an incremental dump (relative to -D or absolute)")
        if name == "dump":
            p.add_argument("-R", "--leave-running", dest="leave_running",
                           action="store_true", help="do not kill the tree after the dump")
            p.add_argument("--track-mem", dest="track_mem", action="store_true",
                           help="arm dirty-memory tracking for a later incremental dump")

    p = sub.add_parser("restore", help="restore a tree from images")
    p.add_argument("-D", "--images-dir", dest="images_dir", required=True)
    p.add_argument("--leave-stopped", dest="leave_stopped", action="store_true",
                   help="leave every task stopped (resume with SIGCONT)")
    p.add_argument("--pidfile", default=None, help="write the root pid here")
    p.add_argument("-r", "--root", default=None,
                   help="the tree's own root directory (a tree in its own mount namespace "
                        "that was pivoted into a directory)")
    p.add_argument("-d", "--restore-detached", dest="detach", action="store_true",
                   help="return once the tree is restored")
    p.add_argument("--lazy-pages", dest="lazy_pages", action="store_true",
                   help="let a lazy-pages daemon fill memory on demand")
    p.add_argument("--allow-changed-files", dest="allow_changed_files", action="store_true",
                   help="restore even if an executable or mapped file changed since the "
                        "dump (a warning names it)")
    _trust_option(p)

    p = sub.add_parser("lazy-pages", help="serve pages of a lazy restore")
    p.add_argument("-D", "--images-dir", dest="images_dir", required=True)
    _trust_option(p)

    p = sub.add_parser("show", help="print an image directory as text")
    p.add_argument("dir")
    _trust_option(p)

    p = sub.add_parser("serve", help="run each command asked on a unix socket in a "
                                     "forked child, as `python -m engine` would (engine.serve)")
    p.add_argument("--socket", required=True,
                   help="path of the socket to create (mode 0600) and listen on")
    return parser


def _trust_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-images", dest="trust_images", action="store_true",
                   help="accept an image dir (or files) owned by another user or writable "
                        "by others than its owner")


def _check(args: argparse.Namespace) -> int:
    from engine import features

    return features.cli([], args.json)


def _show(args: argparse.Namespace) -> int:
    show = _load("show", "engine.images.show", "show")
    result = show(args.dir, trusted=args.trust_images)
    return result if isinstance(result, int) else 0


def _load(command: str, module: str, attr: str) -> Callable[..., Any]:
    """Import ``module.attr`` or fail with a clear EngineError naming what is missing."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise EngineError("cli", f"'{command}' is not available: {module} cannot be "
                                 f"imported ({exc})") from exc
    fn: Callable[..., Any] | None = getattr(mod, attr, None)
    if fn is None:
        raise EngineError("cli", f"'{command}' is not available: {module} has no {attr}()")
    return fn


def _dispatch(module: str, attr: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        return int(_load(args.command, module, attr)(args))

    return run


def _serve(args: argparse.Namespace) -> int:
    from engine import serve

    return serve.serve(args.socket, program)


HANDLERS: dict[str, Handler] = {
    "check": _check,
    "dump": _dispatch("engine.dump.cli", "dump"),
    "pre-dump": _dispatch("engine.dump.cli", "pre_dump"),
    "restore": _dispatch("engine.restore.cli", "restore"),
    "lazy-pages": _dispatch("engine.restore.cli", "lazy_pages"),
    "show": _show,
    "serve": _serve,
}


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; returns the exit status. Called in-process
    (tests), it gives the termination signals their previous handlers back: a caller's
    signal handling, and the mask its children inherit, stay as they were."""
    saved = {s: signal.getsignal(s) for s in errors.TERMINATION_SIGNALS}
    try:
        return _main(argv)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def _main(argv: list[str] | None) -> int:
    try:
        # First of all: a termination signal from now on is one error line after the
        # cleanup of whatever step it interrupts (engine.errors), never a silent death.
        errors.arm_interruption()
        args = build_parser().parse_args(argv)
        return HANDLERS[args.command](args)
    except EngineError as exc:
        print(f"engine: error: {exc.phase}: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except TimeoutError as exc:
        # A deadline that passed is an expected failure (the cleanup already ran on the
        # way out), not a crash: one error line, no traceback.
        print(f"engine: error: timeout: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("engine: error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a crash must still end with the error line
        traceback.print_exc()
        print(f"engine: error: internal: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_CRASH


def program(argv: list[str] | None) -> int:
    """What ``python -m engine ARGS`` runs: the status the process then exits with. Also
    what each child of the engine server runs (engine.serve)."""
    try:
        return _main(argv)
    finally:
        # The process ends after this: a signal during interpreter shutdown must not turn
        # the outcome just printed into a death by signal (blocked for good, not
        # inherited by anyone: the engine forks nothing any more).
        errors.hold_termination_for_exit()


if __name__ == "__main__":
    sys.exit(program(None))
