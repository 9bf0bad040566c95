"""Run as pid 1 of a new pid namespace (`unshare -pf --mount-proc`): the session and
process group of every task here are led from outside, so /proc shows them as 0 (what a
CI job inside a container sees). Dump a victim, restore it left stopped, print JSON facts.
Everything this starts dies with the namespace when the script exits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ENGINE_TIMEOUT_S = 60


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def engine(*args: str) -> subprocess.CompletedProcess[str]:
    """python -m engine ARGS, with a deadline."""
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, timeout=ENGINE_TIMEOUT_S, check=False)


def main() -> None:
    victim_bin, work = sys.argv[1], Path(sys.argv[2])
    proc = subprocess.Popen([victim_bin, str(work)], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
    facts: dict[str, object] = {"pid": proc.pid, "before": stat_fields(proc.pid)[1:4]}
    dump = engine("dump", "-t", str(proc.pid), "-D", str(work / "img"))
    facts["dump"] = [dump.returncode, dump.stderr]
    proc.wait(timeout=ENGINE_TIMEOUT_S)
    rst = engine("restore", "-D", str(work / "img"), "--leave-stopped", "-d")
    facts["restore"] = [rst.returncode, rst.stderr]
    if rst.returncode == 0:
        facts["after"] = stat_fields(proc.pid)[0:4]  # state ppid pgrp session
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
