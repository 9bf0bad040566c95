"""How much more dirty page cache a writer may make before the kernel slows it down.

The kernel lets writers dirty pages freely until the dirty and under-writeback pages reach
the "free-run ceiling", halfway between the background and the foreground dirty thresholds
(mm/page-writeback.c, dirty_freerun_ceiling); past it, balance_dirty_pages makes each
writer wait for the disk. Each threshold is vm.dirty_*_bytes when set, else
vm.dirty_*_ratio percent of the dirtyable memory: the free pages and the file LRU lists.
(The global domain only: a cgroup v2 memory limit adds a domain of its own.)
"""

from __future__ import annotations

_VM = "/proc/sys/vm/"


def free_run_room() -> int:
    """Bytes that can still be dirtied before writers are throttled (0 when unknown)."""
    try:
        info = _meminfo()
        dirtyable = info["MemFree"] + info["Active(file)"] + info["Inactive(file)"]
        dirty = info["Dirty"] + info["Writeback"]
        thresh = _threshold("dirty_bytes", "dirty_ratio", dirtyable)
        background = _threshold("dirty_background_bytes", "dirty_background_ratio", dirtyable)
    except (OSError, KeyError, ValueError):
        return 0
    if background >= thresh:
        background = thresh // 2  # as the kernel corrects it (domain_dirty_limits)
    return max(0, (thresh + background) // 2 - dirty)


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (every field is in kB)."""
    out = {}
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            name, _, value = line.partition(":")
            fields = value.split()
            if fields:
                out[name] = int(fields[0]) * 1024
    return out


def _threshold(bytes_name: str, ratio_name: str, dirtyable: int) -> int:
    fixed = _sysctl(bytes_name)
    return fixed if fixed else dirtyable * _sysctl(ratio_name) // 100


def _sysctl(name: str) -> int:
    with open(_VM + name, encoding="ascii") as f:
        return int(f.read())
