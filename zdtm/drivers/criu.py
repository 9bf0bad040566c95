"""Driver for an installed CRIU binary (from PATH or --criu-bin).

CRIU is used only when ``criu check`` passes; otherwise every run SKIPs with criu's own
message.  The driver passes only what this criu, this kernel and this mode need:

* ``--track-mem`` only for pre-dumps and the dumps that follow them; when criu's
  ``mem_dirty_track`` probe fails (no soft-dirty here) the harness feature ``pre_dump`` is
  reported false with criu's words, so --pre runs SKIP instead of failing;
* the test's ``.desc`` opts (they are criu options: CRIU's zdtm descriptors name them);
* what the flavour needs: ``--root`` on restore when the tree has a root of its own (ns,
  uns).  No ``--shell-job``: a zdtm test daemon leads its own session, and so does the
  ns init, so nothing of a dumped tree points outside it.

A failed step says why: criu writes its log with ``-o`` beside the images dir, and the
failure's message is criu's first ``Error (...)`` line, its details every Error line and
the log's tail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from zdtm.allowances import Allowance
from zdtm.drivers.base import (
    Engine,
    EngineFailure,
    Features,
    Helper,
    StepResult,
    TreeInfo,
    read_pidfile,
    run_logged,
)

CHECK_TIMEOUT = 60.0
LOG_TAIL = 30

#: Harness feature names (``python -m engine check`` names, used by ``.desc`` ``feature:``
#: lists and by the lifecycle for modes) -> the criu feature that ``criu check --feature``
#: probes for it, or None when every criu build that passes ``criu check`` has it.
#: A name missing here is reported absent ("criu has no probe for it"), so a test that
#: needs it SKIPs with that reason rather than running on a guess.
FEATURES: dict[str, str | None] = {
    "dump": None, "restore": None,
    "dump_tree": None, "restore_tree": None,
    "dump_threads": None, "restore_threads": None,
    "dump_shmem": None, "restore_shmem": None,
    "flavor_ns": None, "flavor_uns": "userns",
    "userns": "userns",
    "pre_dump": "mem_dirty_track", "dump_incremental": "mem_dirty_track",
    "mem_track": "mem_dirty_track", "soft_dirty": "mem_dirty_track",
    "lazy_pages": "uffd-noncoop", "lazy_pages_ns": "uffd-noncoop",
    "lazy_pages_uns": "uffd-noncoop",
    "uffd": "uffd",
    "clone3": "clone3_set_tid", "clone3_set_tid": "clone3_set_tid",
    "ns_last_pid": "ns_pid",
    "pidfd_open": "pidfd_store", "pidfd_getfd": "pidfd_store",
    "ptrace_rseq_config": "get_rseq_conf",
    "pagemap_scan": "pagemap_scan",
    "kcmp": "kcmp_epoll",
    "vdso_mremap": "can_map_vdso",
    "memfd": None,
    "map_files": "mnt_id",
    "eventfd": None, "signalfd": None, "epoll": None,
    "timerfd": "timerfd",
    "unix_socketpair": None, "tcp": None, "udp": None, "file_locks": None,
    "posix_timers": None, "inotify": None, "fanotify": None, "pidfd": None,
    "pty_master": None, "tcp_half_closed": None, "unix_scm_rights": None,
    # socket state CRIU 4.2 dumps only in part: the tests run, and fail where it differs.
    # netlink_route: "has more than 32 groups" (sk-netlink.c:134, dump refused);
    # packet_socket: packet_sock_entry has no PACKET_QDISC_BYPASS / PACKET_IGNORE_OUTGOING;
    # raw_socket: a connected raw socket has dst_port 0 and is restored unconnected
    # (sk-inet.c open_inet_sk: "if (ie->dst_port && inet_connect(sk, ii))");
    # tcp_listen_pending: "In-flight connection (l)" (sk-inet.c:185, dump refused;
    # --skip-in-flight would drop the connections the test checks);
    # udp_options: sk_opts_entry / ip_opts_entry have no SO_TIMESTAMP(NS), SO_LOCK_FILTER,
    # IP_RECVTOS, IP_RECVTTL, IP_MULTICAST_TTL, IP_MULTICAST_LOOP;
    # unix_listen, unix_named: a connected stream/seqpacket socket is not bound to its
    # name (sk-unix.c bind_unix_sk: "FIXME this can be done"), so an accepted end or a
    # named client comes back unnamed
    "netlink": None, "packet_socket": None, "raw_socket": None, "udp_options": None,
    "tcp_listen_pending": None, "unix_listen": None, "unix_named": None,
    # a deleted file's mapping (CRIU keeps it in a ghost file); what the bundled engine
    # refuses and CRIU dumps: a group without its leader (pstree.c: "Add a helper %d for
    # restoring PGID %d")
    "dump_deleted_file_mapping": None, "dump_leaderless_pgid": None,
    # CRIU dumps the SysV objects of an ipc namespace of the tree's own (ipc_ns.c); its
    # POSIX queues too: the tests run, and fail where CRIU differs
    "ipc_sysv": None, "ipc_mqueue": None,
    # state the bundled engine's check names and criu has no probe for: the tests run, and
    # where CRIU 4.2 differs they fail (session_orphans: "Can't find a session leader";
    # file_unlinked: times kept in microseconds, images/ghost-file.proto timeval)
    **dict.fromkeys(("restore_vma_hints", "restore_thp_disable", "restore_sched_policy",
                     "restore_oom_score_adj", "restore_fs_ids", "restore_sigtrap_handler",
                     "restore_dumpable", "restore_stopped_tasks", "restore_memfd_mapped",
                     "restore_fd_status_flags", "restore_fd_owner", "restore_o_path",
                     "restore_fifo", "restore_chr_devices", "restore_unlinked_attrs",
                     "restore_vdso_moved", "restore_session_orphans", "restore_membarrier")),
}

#: Harness features whose state criu dumps only when told to (CRIU's own descriptors put
#: these options in ``opts``; ours name the feature).
FEATURE_OPTIONS: dict[str, tuple[str, ...]] = {
    "tcp": ("--tcp-established",),
    "tcp_half_closed": ("--tcp-established",),
    "tcp_listen_pending": ("--tcp-established",),
    "file_locks": ("--file-locks",),
}


def feature_options(features: Sequence[str]) -> tuple[str, ...]:
    """The criu options a test declaring ``features`` needs for dump and restore."""
    out: list[str] = []
    for name in features:
        out += [o for o in FEATURE_OPTIONS.get(name, ()) if o not in out]
    return tuple(out)


#: What CRIU restores differently from the dumped state on purpose (zdtm.allowances).
ALLOWANCES = (
    Allowance("ns", "new-time-ns",
              "CRIU restores a tree into a new time namespace (with the dumped clock "
              "offsets) so that CLOCK_MONOTONIC/BOOTTIME do not jump back after a restore"),
    Allowance("maps", "shmem-as-memfd",
              "CRIU restores anonymous shared memory through a memfd, so its /proc name "
              "'/dev/zero (deleted)' reads '/memfd:/dev/zero (deleted)'"),
    Allowance("fds", "shmem-as-memfd",
              "CRIU restores anonymous shared memory through a memfd, so a link to it "
              "'/dev/zero (deleted)' reads '/memfd:/dev/zero (deleted)'"),
    Allowance("fds", "dir-fd-flags",
              "CRIU reopens a directory fd without O_DIRECTORY (open flags of directory "
              "descriptors are not restored bit for bit)"),
    Allowance("sharing", "cow-gained",
              "CRIU stores a child's private page only where it differs from its parent's "
              "and restores the rest shared copy-on-write, so pages that were equal but "
              "separate copies come back shared (less memory, same content)"),
)

# "(00.012345)      1: Error (criu/image.c:635): ..." (timestamp and task pid optional)
_ERROR = re.compile(r"^\s*(\(\s*[0-9.]+\)\s*)?(\d+:\s*)?Error \(")
_PREFIX = re.compile(r"^\s*(\(\s*[0-9.]+\)\s*)?(\d+:\s*)?")


class CriuEngine(Engine):
    """An external ``criu`` binary."""

    name = "criu"

    def __init__(self, criu_bin: str | Path | None = None) -> None:
        self.bin = str(criu_bin) if criu_bin else shutil.which("criu")
        self._unavailable: str | None = None
        self._checked = False
        self._features: Features | None = None
        self._lazy = Helper()
        self._tree = TreeInfo()
        self._probes: dict[str, tuple[bool, str]] = {}  # criu feature -> (ok, why not)

    # ---- availability and features --------------------------------------------------

    def _run_check(self, *extra: str) -> tuple[int, str]:
        assert self.bin is not None
        try:
            proc = subprocess.run([self.bin, "check", *extra], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=CHECK_TIMEOUT, start_new_session=True, check=False)
        except subprocess.TimeoutExpired:
            return -1, f"criu check gave no answer in {CHECK_TIMEOUT:.0f}s"
        except OSError as exc:
            return -1, f"{self.bin}: {exc.strerror}"
        return proc.returncode, proc.stdout.decode(errors="replace").strip()

    def version(self) -> str:
        """``criu --version``'s first line (``Version: 4.2``), or why there is none."""
        if self.bin is None:
            return "not found"
        try:
            proc = subprocess.run([self.bin, "--version"], stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=CHECK_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unknown ({exc})"
        lines = proc.stdout.decode(errors="replace").strip().splitlines()
        return lines[0].removeprefix("Version:").strip() if lines else f"exit {proc.returncode}"

    def available(self) -> str | None:
        if self._checked:
            return self._unavailable
        self._checked = True
        if self.bin is None or not os.access(self.bin, os.X_OK):
            self._unavailable = f"criu not found ({self.bin or 'not in PATH'})"
            return self._unavailable
        rc, out = self._run_check()
        if rc != 0:
            lines = [ln for ln in out.splitlines() if ln.strip()]
            self._unavailable = "criu check failed: " + (" | ".join(lines[-3:]) or f"exit {rc}")
        return self._unavailable

    def probe_result(self) -> dict[str, Any]:
        data = super().probe_result()
        data["probes"] = {name: list(res) for name, res in self._probes.items()}
        return data

    def adopt_probe(self, data: dict[str, Any]) -> None:
        self._checked = True
        self._unavailable = data.get("unavailable")
        self._features = Features({str(k): bool(v) for k, v in data["features"].items()},
                                  {str(k): str(v) for k, v in data["reasons"].items()})
        self._probes.update({str(k): (bool(v[0]), str(v[1]))
                             for k, v in data.get("probes", {}).items()})

    def check(self) -> Features:
        """Harness features from ``criu check --feature`` (each criu feature probed once)."""
        if self._features is None:
            self._features = Features()
            if self.available() is None:
                self._features = features_from_probes(FEATURES, self._probe_feature)
        return self._features

    def missing_features(self, names: Sequence[str]) -> list[str]:
        """Harness names (FEATURES) from check(); any other name is a criu feature, as
        CRIU's own descriptors write them, probed with ``criu check --feature NAME``."""
        feats = self.check()
        if self.available() is not None:
            return feats.missing(names)
        out = Features(dict(feats.features), dict(feats.reasons))
        for name in names:
            if name not in FEATURES:
                ok, why = self._probe_feature(name)
                out.features[name] = ok
                if not ok:
                    out.reasons[name] = why
        return out.missing(names)

    def _probe_feature(self, name: str) -> tuple[bool, str]:
        """``criu check --feature NAME`` once per name: (available, criu's words if not)."""
        if name not in self._probes:
            rc, out = self._run_check("--feature", name)
            lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
            why = f"criu check --feature {name}: " + (lines[-1] if lines else f"exit {rc}")
            self._probes[name] = (rc == 0, "" if rc == 0 else why)
        return self._probes[name]

    def allowances(self) -> tuple[Allowance, ...]:
        return ALLOWANCES

    def attach(self, tree: TreeInfo) -> None:
        self._tree = tree

    # ---- steps ---------------------------------------------------------------------

    def _run(self, action: str, images_dir: Path, args: Sequence[str], *, step: str,
             log_suffix: str, timeout: float) -> StepResult:
        """Run one criu action; on failure raise with criu's own Error lines and log tail."""
        assert self.bin is not None
        base = images_dir.with_name(images_dir.name + log_suffix)
        criu_log = base.with_name(base.name + ".criu.log")
        cmd = [self.bin, action, "-D", str(images_dir), "-v4", "-o", str(criu_log), *args]
        try:
            return run_logged(cmd, step=step, log=base.with_name(base.name + ".log"),
                              timeout=timeout)
        except EngineFailure as exc:
            raise explain_failure(exc, criu_log) from None

    def dump(self, root_pid: int, images_dir: Path, *, leave_running: bool,
             parent_images: Path | None, opts: Sequence[str], timeout: float) -> StepResult:
        args = ["-t", str(root_pid)]
        if leave_running:
            args.append("--leave-running")
        args += self._incremental(images_dir, parent_images)
        return self._run("dump", images_dir, [*args, *opts], step="dump", log_suffix="",
                         timeout=timeout)

    def pre_dump(self, root_pid: int, images_dir: Path, *, parent_images: Path | None,
                 opts: Sequence[str], timeout: float) -> StepResult:
        args = ["-t", str(root_pid), "--track-mem"]
        if parent_images is not None:
            args += ["--prev-images-dir", os.path.relpath(parent_images, images_dir)]
        return self._run("pre-dump", images_dir, [*args, *opts], step="pre-dump",
                         log_suffix="", timeout=timeout)

    def _incremental(self, images_dir: Path, parent_images: Path | None) -> list[str]:
        """A dump after pre-dumps: its parent, and the memory tracking they relied on."""
        if parent_images is None:
            return []
        # criu wants the parent directory relative to the images directory
        return ["--track-mem", "--prev-images-dir", os.path.relpath(parent_images, images_dir)]

    def restore(self, images_dir: Path, *, leave_stopped: bool, opts: Sequence[str],
                timeout: float, lazy: bool) -> int:
        pidfile = images_dir.with_name(images_dir.name + ".restored.pid")
        args = ["-d", "--pidfile", str(pidfile)]
        if self._tree.root is not None:
            # the tree's "/" is a directory of its own: criu mounts it as the new root
            args += ["--root", str(self._tree.root)]
            open_images_dir(images_dir)
        if leave_stopped:
            args.append("--leave-stopped")
        if lazy:
            args.append("--lazy-pages")
            lazy_log = images_dir.with_name(images_dir.name + ".lazy.criu.log")
            assert self.bin is not None
            self._lazy.start([self.bin, "lazy-pages", "-D", str(images_dir), "-v4",
                              "-o", str(lazy_log)],
                             images_dir.with_name(images_dir.name + ".lazy.log"))
        self._run("restore", images_dir, [*args, *opts], step="restore",
                  log_suffix=".restore", timeout=timeout)
        return read_pidfile(pidfile, "restore")

    def finish(self, timeout: float) -> None:
        """Wait for criu's lazy-pages daemon to exit once every page is in."""
        self._lazy.finish("lazy-pages", timeout)

    def close(self) -> None:
        self._lazy.close()


def open_images_dir(images_dir: Path) -> None:
    """Let every user search the images dir (its files are criu's own 0644).

    In uns part of criu's restore runs inside the tree's user namespace before its ids are
    set and opens images relative to the images dir ("Unable to open timens-0.img:
    Permission denied" while the dir is 0700).
    """
    os.chmod(images_dir, 0o711)


def features_from_probes(mapping: dict[str, str | None],
                         probe: Callable[[str], tuple[bool, str]]) -> Features:
    """Harness features from criu feature probes (``probe`` answers each criu name)."""
    out = Features()
    for name, criu_name in mapping.items():
        if criu_name is None:
            out.features[name] = True
            continue
        ok, why = probe(criu_name)
        out.features[name] = ok
        if not ok:
            out.reasons[name] = why
    return out


def criu_errors(log: Path) -> tuple[list[tuple[int, str]], list[str]]:
    """(the ``Error (...)`` lines with their line numbers, the last LOG_TAIL lines) of a
    criu log file."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return [], []
    return [(i, ln.strip()) for i, ln in enumerate(lines) if _ERROR.match(ln)], \
        lines[-LOG_TAIL:]


def explain_failure(exc: EngineFailure, criu_log: Path) -> EngineFailure:
    """``exc`` with criu's words as message (the Error line that failed the step; for a
    criu that hung or crashed, the last line it logged) and its Error lines + tail as log."""
    numbered, tail = criu_errors(criu_log)
    numbered = [(i, _strip_prefix(e)) for i, e in numbered]
    message = exc.message
    if exc.kind != "error":
        # no step failed: an Error line criu went on after (the rlimit one) is no cause
        if tail:
            message = f"{exc.message}: criu's last log line: {_strip_prefix(tail[-1])}"
    elif numbered:
        message = cause(numbered)
    details = [f"criu log: {criu_log}"]
    details += [f"criu error: {e}" for _, e in numbered]
    details += [f"criu log tail: {ln}" for ln in tail]
    if exc.log:
        details += [f"criu output: {ln}" for ln in exc.log.splitlines()]
    return EngineFailure(exc.kind, exc.step, message, "\n".join(details))


#: Error lines at most this many log lines apart are one failure told on its way up
#: (the cause first, then each caller's "... failed")
CHAIN_GAP = 8


def cause(errors: Sequence[tuple[int, str]]) -> str:
    """The Error line that says why: the first of the chain of Error lines that ends just
    before criu's "... FAILED." summary (or at its last Error line).

    Earlier Error lines can be survivable complaints (criu logs a refused rlimit raise as
    an Error and goes on: many lines follow it); the lines of the failing step come close
    together, the cause first and then each caller saying it failed."""
    end = len(errors) - 1
    for k, (_, line) in enumerate(errors):
        if line.rstrip().endswith("FAILED."):
            end = k - 1 if k else k
            break
    first = end
    while first > 0 and errors[first][0] - errors[first - 1][0] <= CHAIN_GAP:
        first -= 1
    return errors[first][1]


def _strip_prefix(line: str) -> str:
    """``(00.012345)   1: Error (criu/x.c:1): ...`` -> ``Error (criu/x.c:1): ...``"""
    return _PREFIX.sub("", line, count=1)
