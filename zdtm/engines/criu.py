"""Driver for an installed CRIU binary (from PATH or --criu-bin).

CRIU is used only when ``criu check`` passes; otherwise every run SKIPs with criu's own
message (on kernel 6.18 here it fails its vdso check, which is the path to expect).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from zdtm.engines.base import Engine, Features, Helper, StepResult, run_logged
from zdtm.engines.bundled import read_pidfile

CHECK_TIMEOUT = 60.0
#: CRIU feature names probed with ``criu check --feature NAME``.
CRIU_FEATURES = ("mem_dirty_track", "uffd", "uffd-noncoop", "pidfd_store", "ns_pid",
                 "clone3_set_tid")
#: Feature names of test descriptors (as the bundled engine's check names them) for state
#: every CRIU 4.2 restores by design: nothing to probe, reported as present.
CRIU_BUILTIN = ("restore_vma_hints", "restore_thp_disable", "restore_sched_policy",
                "restore_oom_score_adj", "restore_fs_ids", "restore_sigtrap_handler",
                "restore_dumpable", "restore_stopped_tasks", "restore_memfd_mapped",
                "restore_fd_status_flags", "restore_fd_owner", "restore_o_path",
                "restore_fifo", "restore_chr_devices", "restore_unlinked_attrs",
                "restore_vdso_moved", "restore_session_orphans")


class CriuEngine(Engine):
    """An external ``criu`` binary."""

    name = "criu"

    def __init__(self, criu_bin: str | Path | None = None) -> None:
        self.bin = str(criu_bin) if criu_bin else shutil.which("criu")
        self._unavailable: str | None = None
        self._checked = False
        self._features: Features | None = None
        self._lazy = Helper()

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

    def check(self) -> Features:
        if self._features is None:
            feats, reasons = {}, {}
            if self.available() is None:
                for name in CRIU_FEATURES:
                    rc, out = self._run_check("--feature", name)
                    feats[name] = rc == 0
                    if rc != 0:
                        reasons[name] = out.splitlines()[-1] if out else f"exit {rc}"
                feats.update(dict.fromkeys(CRIU_BUILTIN, True))
            self._features = Features(feats, reasons)
        return self._features

    def missing_features(self, names: Sequence[str]) -> list[str]:
        """Probe each name with ``criu check --feature NAME`` (once), as CRIU's suite does."""
        feats = self.check()
        if self.available() is None:
            for name in names:
                if name not in feats.features:
                    rc, out = self._run_check("--feature", name)
                    feats.features[name] = rc == 0
                    if rc != 0:
                        feats.reasons[name] = out.splitlines()[-1] if out else f"exit {rc}"
        return feats.missing(names)

    def _cmd(self, action: str, images_dir: Path, *args: str) -> list[str]:
        assert self.bin is not None
        return [self.bin, action, "-D", str(images_dir), "-v4",
                "-o", f"{action}.log", *args]

    def dump(self, root_pid: int, images_dir: Path, *, leave_running: bool,
             parent_images: Path | None, opts: Sequence[str], timeout: float) -> StepResult:
        args = ["-t", str(root_pid), "--track-mem"]
        if leave_running:
            args.append("--leave-running")
        if parent_images is not None:
            # criu wants the parent directory relative to the images directory
            args += ["--prev-images-dir", os.path.relpath(parent_images, images_dir)]
        return run_logged(self._cmd("dump", images_dir, *args, *opts), step="dump",
                          log=images_dir.with_name(images_dir.name + ".log"), timeout=timeout)

    def pre_dump(self, root_pid: int, images_dir: Path, *, parent_images: Path | None,
                 opts: Sequence[str], timeout: float) -> StepResult:
        args = ["-t", str(root_pid), "--track-mem"]
        if parent_images is not None:
            args += ["--prev-images-dir", os.path.relpath(parent_images, images_dir)]
        return run_logged(self._cmd("pre-dump", images_dir, *args, *opts), step="pre-dump",
                          log=images_dir.with_name(images_dir.name + ".log"), timeout=timeout)

    def restore(self, images_dir: Path, *, leave_stopped: bool, opts: Sequence[str],
                timeout: float, lazy: bool) -> int:
        pidfile = images_dir.with_name(images_dir.name + ".restored.pid")
        args = ["-d", "--pidfile", str(pidfile)]
        if leave_stopped:
            args.append("--leave-stopped")
        if lazy:
            args.append("--lazy-pages")
            self._lazy.start(self._cmd("lazy-pages", images_dir),
                             images_dir.with_name(images_dir.name + ".lazy.log"))
        run_logged(self._cmd("restore", images_dir, *args, *opts), step="restore",
                   log=images_dir.with_name(images_dir.name + ".restore.log"), timeout=timeout)
        return read_pidfile(pidfile, "restore")

    def finish(self, timeout: float) -> None:
        """Wait for criu's lazy-pages daemon to exit once every page is in."""
        self._lazy.finish("lazy-pages", timeout)

    def close(self) -> None:
        self._lazy.close()
