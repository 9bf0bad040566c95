"""/proc/sysvipc/{shm,sem,msg}: the SysV objects of the reading thread's ipc namespace.

Each file is a header line naming the columns, then one line per object. Every column is
a decimal number except `perms` (octal); ids are as the reader's user namespace maps
them, pids as the pid namespace of the /proc mount sees them.
"""

from __future__ import annotations

KINDS = ("shm", "sem", "msg")
_ID_COLUMN = {"shm": "shmid", "sem": "semid", "msg": "msqid"}


def parse(kind: str, text: str) -> list[dict[str, int]]:
    """The objects of one table, each as column name -> value; `id` is the object's id
    whatever its table calls it."""
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"/proc/sysvipc/{kind}: empty")
    names = lines[0].split()
    if "key" not in names or "perms" not in names or _ID_COLUMN[kind] not in names:
        raise ValueError(f"/proc/sysvipc/{kind}: unexpected header {lines[0].strip()!r}")
    out = []
    for line in lines[1:]:
        values = line.split()
        if len(values) != len(names):
            raise ValueError(f"/proc/sysvipc/{kind}: {len(values)} columns in {line!r}")
        row = {n: int(v, 8 if n == "perms" else 10) for n, v in zip(names, values)}
        row["id"] = row[_ID_COLUMN[kind]]
        out.append(row)
    return out


def read(kind: str) -> list[dict[str, int]]:
    """The objects of the calling thread's ipc namespace (see module docstring)."""
    with open(f"/proc/sysvipc/{kind}", encoding="ascii") as f:
        return parse(kind, f.read())
