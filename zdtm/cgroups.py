"""Cgroups a test made and left behind: reported, then removed.

The cgroup hierarchies are machine-global: other jobs create and remove cgroups all the
time, so a run does not diff them whole. It removes only cgroups that did not exist when the
run started AND that a task of its own tree was seen in (at every snapshot and at cleanup,
from /proc/PID/cgroup, in every hierarchy mounted in the harness's mount namespace),
together with their ancestors that did not exist at start either. A cgroup the test made but
never entered is not seen (a documented limit).
"""

from __future__ import annotations

import os

from zdtm import proc


def _hierarchies() -> dict[str, str]:
    return proc.cgroup_mounts(proc.read_text("/proc/self/mountinfo"))


def existing() -> frozenset[str]:
    """Every cgroup directory of every mounted hierarchy now (full paths)."""
    out = set()
    for point in set(_hierarchies().values()):
        for top, dirs, _files in os.walk(point):
            out.add(top)
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
    return frozenset(out)


def of_task(pid: int) -> set[str]:
    """The cgroup directories a task is in, one per mounted hierarchy (empty if gone)."""
    mounts = _hierarchies()
    out: set[str] = set()
    try:
        text = proc.read_text(f"/proc/{pid}/cgroup")
    except OSError:
        return out
    for line in text.splitlines():
        _id, key, path = line.split(":", 2)
        if key in mounts and path.startswith("/"):
            out.add(os.path.normpath(mounts[key] + path))
    return out


def remove_new(seen: set[str], existed: frozenset[str]) -> list[str]:
    """Report and remove the cgroups in ``seen`` (and their new ancestors) that did not
    exist at start; deepest first, once the tasks in them are gone."""
    new: set[str] = set()
    for path in seen:
        while path not in existed and path != "/":
            new.add(path)
            path = os.path.dirname(path)
    lines = []
    for path in sorted(new, key=lambda p: -p.count("/")):
        if not os.path.isdir(path):
            continue
        try:
            os.rmdir(path)
            lines.append(f"leak: cgroup {path} left behind (removed)")
        except OSError as exc:
            lines.append(f"leak: cgroup {path} left behind, could not be removed: {exc}")
    return lines
