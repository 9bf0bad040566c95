"""`python -m engine show DIR`: print an image directory as readable text."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import TextIO

from engine.images.imgdir import PE_PARENT, Pagemap
from engine.images.load import DumpImage, IpcNsImage, load
from engine.images.records import PAGE_SIZE, U64_MAX, TaskCore, Vma

_PROT = ((1, "r"), (2, "w"), (4, "x"))
_MAP_SHARED = 0x01
_MAP_GROWSDOWN = 0x100


def show(path: str, out: TextIO | None = None, max_vmas: int = 200,
         trusted: bool = False) -> None:
    """Validate the image at `path` and print it (VMA lists longer than max_vmas are
    summarised: a maps06-sized task has tens of thousands). A reader that goes away
    (`show DIR | head`) ends the output quietly."""
    img = load(path, trusted)
    try:
        _show(img, out or sys.stdout, max_vmas)
    except BrokenPipeError:
        # Keep the interpreter from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _show(img: DumpImage, out: TextIO, max_vmas: int) -> None:
    _show_inventory(img, out)
    for pid, task in sorted(img.tasks.items()):
        _show_core(task.core, out)
        if task.mm is not None and task.pagemap is not None:
            _show_mm(task.mm.vmas, task.pagemap, out, max_vmas)
            m = task.mm
            out.write(f"  mm: code {m.start_code:#x}-{m.end_code:#x} data {m.start_data:#x}-"
                      f"{m.end_data:#x} brk {m.start_brk:#x}-{m.brk:#x} stack "
                      f"{m.start_stack:#x}\n      args {m.arg_start:#x}-{m.arg_end:#x} env "
                      f"{m.env_start:#x}-{m.env_end:#x} auxv {len(m.auxv) // 2} entries\n")
    _show_files(img, out)
    for sid, sh in sorted(img.shmem.items()):
        e = sh.entry
        what = e.kind + (f" {e.name!r} seals {e.seals:#x}" if e.kind == "memfd" else "")
        out.write(f"shmem {sid}: {what}, {e.size // 1024} KiB, {_pm_summary(sh.pagemap)}\n")
    if img.ipc is not None:
        _show_ipc(img.ipc, out)


def _show_ipc(ipc: IpcNsImage, out: TextIO) -> None:
    rec = ipc.record
    out.write("ipc namespace: " + ", ".join(f"{k} {v}" for k, v in rec.sysctls.items())
              + "\n")
    out.writelines(f"  shm {seg.id}: key {seg.key:#x} mode {seg.mode:o} owner {seg.uid}:"
                  f"{seg.gid} creator {seg.cuid}:{seg.cgid} {seg.size} bytes, "
                  f"{_pm_summary(ipc.pagemaps[seg.id])}\n" for seg in rec.shm)
    for sem in rec.sem:
        values = " ".join(f"{s.value}" + (f"/{s.last} {s.pid}" if s.pid else f"/{s.last}")
                          for s in sem.sems)
        out.write(f"  sem {sem.id}: key {sem.key:#x} mode {sem.mode:o} owner {sem.uid}:"
                  f"{sem.gid} creator {sem.cuid}:{sem.cgid}{' operated' if sem.operated else ''}"
                  f": {values}\n")
    out.writelines(f"  msg {q.id}: key {q.key:#x} mode {q.mode:o} owner {q.uid}:{q.gid} "
                  f"creator {q.cuid}:{q.cgid} qbytes {q.qbytes}, {len(q.sizes)} messages of "
                  f"{sum(q.sizes)} bytes, types {q.types}\n" for q in rec.msg)


def _pm_summary(pm: Pagemap) -> str:
    parent = sum(e.nr_pages for e in pm.entries if e.flags & PE_PARENT)
    text = f"{len(pm.entries)} runs, {pm.pages_stored} pages stored"
    return text + (f", {parent} in parent" if parent else "")


def _show_inventory(img: DumpImage, out: TextIO) -> None:
    inv = img.inventory
    out.write(f"image {img.path}: {inv.format} v{inv.version}, {inv.kind}, root {inv.root_pid}")
    out.write(f", parent {inv.parent}\n" if inv.parent else "\n")
    for n in inv.namespaces:
        if n.shared_with_engine:
            continue
        what = {"uts": f" hostname {n.hostname!r} domainname {n.domainname!r}",
                "user": f" uid_map {n.uid_map} gid_map {n.gid_map}"}.get(n.type, "")
        out.write(f"  namespace {n.type}:[{n.inode}] (own, from task {n.first_pid}){what}\n")
    for t in inv.tasks:
        extra = f" exit {t.exit_code}" if t.exit_code is not None else ""
        if len(t.ns_pid) > 1:
            extra += f" ns pids {t.ns_pid}"
        if t.shared:
            extra += f" shares {', '.join(t.shared)} with its parent"
        out.write(f"  task {t.pid} ppid {t.ppid} pgid {t.pgid} sid {t.sid} {t.state}{extra} "
                  f"threads {t.threads}\n")


def _sig(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"SIG{n}"


def _mask(m: int) -> str:
    return ",".join(_sig(i + 1) for i in range(64) if m >> i & 1) or "-"


def _show_core(c: TaskCore, out: TextIO) -> None:
    cwd_file = f" (file {c.cwd_file})" if c.cwd_file is not None else ""
    out.write(f"task {c.pid} ({c.comm}) {c.state}: cwd {c.cwd}{cwd_file} root {c.root} umask "
              f"{c.umask:03o} personality {c.personality:#x} exe {c.exe}\n")
    cr = c.creds
    out.write(f"  creds uid {cr.uid} gid {cr.gid} groups {cr.groups} capeff {cr.cap_eff:#x}\n")
    if c.child_subreaper:
        out.write("  child subreaper\n")
    out.writelines(f"  posix timer {pt.id}: clock {pt.clock_id} signal {_sig(pt.signo)} notify "
                  f"{pt.notify} tid {pt.notify_tid} next in {pt.value_ns} ns, every "
                  f"{pt.interval_ns} ns\n" for pt in c.posix_timers)
    for it in c.itimers:
        name = ("ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF")[it.which]
        out.write(f"  {name}: next in {it.value_us} us, every {it.interval_us} us\n")
    for t in c.threads:
        r = t.regs
        out.write(f"  thread {t.tid} ({t.comm}): rip {r['rip']:#x} rsp {r['rsp']:#x} "
                  f"orig_rax {r.get('orig_rax', 0):#x} blocked {_mask(t.sigmask)}\n")
        if t.rseq:
            out.write(f"    rseq {t.rseq.ptr:#x} len {t.rseq.size} sig {t.rseq.signature:#x}\n")
        if t.sigaltstack and t.sigaltstack.size:
            a = t.sigaltstack
            out.write(f"    sigaltstack {a.sp:#x} size {a.size} flags {a.flags}\n")
        out.writelines(f"    pending {_sig(p.signo)}\n" for p in t.pending)
    out.writelines(f"  shared pending {_sig(p.signo)}\n" for p in c.shared_pending)
    for act in c.sigactions:
        if act.handler != 0 or act.flags or act.mask:
            h = {0: "SIG_DFL", 1: "SIG_IGN"}.get(act.handler, f"{act.handler:#x}")
            out.write(f"  sigaction {_sig(act.signo)}: {h} flags {act.flags:#x} "
                      f"mask {_mask(act.mask)}\n")
    lim = [f"{r.name}={_lim(r.soft)}/{_lim(r.hard)}" for r in c.limits]
    out.write(f"  limits {' '.join(lim)}\n")
    out.writelines(f"  fd {f.fd} -> file {f.file_id}{' cloexec' if f.cloexec else ''}\n"
                   for f in c.fds)


def _lim(v: int) -> str:
    return "inf" if v == U64_MAX else str(v)


def _vma_line(v: Vma) -> str:
    prot = "".join(c if v.prot & b else "-" for b, c in _PROT)
    share = "s" if v.flags & _MAP_SHARED else "p"
    what = v.path or v.shmem_id or f"[{v.kind}]"
    gd = " growsdown" if v.flags & _MAP_GROWSDOWN else ""
    return f"    {v.start:012x}-{v.end:012x} {prot}{share} {v.pgoff:08x} {v.kind:6} {what}{gd}\n"


def _show_mm(vmas: Sequence[Vma], pm: Pagemap, out: TextIO, max_vmas: int) -> None:
    total = sum(v.end - v.start for v in vmas)
    out.write(f"  {len(vmas)} vmas, {total // 1024} KiB mapped; pages: {_pm_summary(pm)} "
              f"({pm.pages_stored * PAGE_SIZE // 1024} KiB)\n")
    out.writelines(_vma_line(v) for v in vmas[:max_vmas])
    if len(vmas) > max_vmas:
        out.write(f"    ... {len(vmas) - max_vmas} more vmas\n")


def _show_files(img: DumpImage, out: TextIO) -> None:
    for f in img.files.files:
        what = f.path or f.link
        extra = []
        if f.type == "reg":
            extra.append(f"pos {f.pos}")
        if f.deleted:
            extra.append("deleted")
        if f.pipe_ino is not None:
            extra.append(f"pipe:[{f.pipe_ino}]")
        if f.content:
            extra.append(f"content {f.content}")
        if f.shmem_id:
            extra.append(f"object {f.shmem_id}")
        if f.mqueue is not None:
            q = f.mqueue
            extra.append(f"mqueue maxmsg {q.maxmsg} msgsize {q.msgsize} mode {q.mode:o} "
                         f"owner {q.uid}:{q.gid} messages {len(q.sizes)} priorities {q.prios}")
        if f.target is not None:
            extra.append(f"-> {f.target}")
        if f.ctty_of:
            extra.append(f"controlling terminal of {f.ctty_of}")
        out.write(f"file {f.id}: {f.type} {what} flags {f.flags:#o} {' '.join(extra)}\n")
    out.writelines(f"mapped unlinked file {m.dev} {m.inode}: file {m.file_id}\n"
                   for m in img.files.mapped)
