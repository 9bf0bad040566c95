"""An interactive bash under a pseudo-terminal whose master pexpect holds (outside the
dumped tree, as a terminal emulator would): checkpointed and restored with a background
job, compared by every harness check while stopped, then typed into. The variable set
before is echoed after, and job control works (the restored shell has its terminal as
controlling terminal and gives it to its foreground jobs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from zdtm import allowances, checks, plumbing, snapshot
from zdtm.drivers.bundled import BundledEngine

pexpect = pytest.importorskip("pexpect", reason="pexpect is not installed")
REPO = Path(__file__).resolve().parents[1]
PROMPT = "zdtm-prompt> "


def _engine(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=120, check=False)


def test_bash_in_a_pty_survives_checkpoint_restore(tmp_path: Path) -> None:
    plumbing.set_subreaper()  # the restored shell is re-parented to us
    sh = pexpect.spawn("bash", ["--norc", "--noprofile", "-i"], encoding="utf-8",
                       env={"PS1": PROMPT, "PATH": os.environ["PATH"], "TERM": "dumb"},
                       timeout=30)
    restored = 0
    try:
        sh.expect_exact(PROMPT)
        sh.sendline("export ZDTM_VAR=before-checkpoint; sleep 300 &")
        sh.expect_exact(PROMPT)
        frozen = plumbing.freeze(sh.pid, 20)
        s0 = snapshot.capture(sh.pid)
        dump = _engine("dump", "-t", str(sh.pid), "-D", str(tmp_path / "img"))
        assert dump.returncode == 0, dump.stderr
        os.waitpid(sh.pid, 0)  # the dumped shell was our child: free its pid
        plumbing.reap_zombie_children()  # its job, re-parented to us
        res = _engine("restore", "-D", str(tmp_path / "img"), "-d", "--leave-stopped",
                      "--pidfile", str(tmp_path / "pid"))
        assert res.returncode == 0, res.stderr
        restored = int((tmp_path / "pid").read_text())
        assert restored == sh.pid
        # compared as the runner does: with the engine's declared deviations set apart
        s1, _ = allowances.reconcile(s0, snapshot.capture(restored), BundledEngine().allowances())
        problems = checks.compare(s0, s1)
        assert not problems, "\n".join(map(str, problems))
        plumbing.thaw(plumbing.tree(restored) or frozen)
        sh.sendline("echo value=$ZDTM_VAR")
        sh.expect(r"value=([a-z-]+)")  # not the echo of the typed line
        assert sh.match.group(1) == "before-checkpoint"
        sh.expect_exact(PROMPT)
        sh.sendline("jobs; kill %1; wait; sleep 0.1; echo fg-ok")
        sh.expect(r"\[1\]\+\s+Running\s+sleep 300")
        sh.expect_exact("fg-ok")
        sh.expect_exact(PROMPT)
        assert "no job control" not in sh.before and "terminal process group" not in sh.before
        sh.sendline("exit")
        sh.expect(pexpect.EOF)
    finally:
        for pid in plumbing.tree(restored) if restored else []:
            os.kill(pid, signal.SIGKILL)
        sh.close(force=True)
        plumbing.reap_zombie_children()
