"""Run a whole table of syscalls inside a stopped tracee with one ptrace round trip.

Injecting one syscall through ptrace costs ~30 us; rebuilding an address space of tens of
thousands of VMAs that way takes seconds. Instead a small position-independent routine
(CODE, assembled from blob.S beside this file) is placed in the tracee together with a
table of entries; the tracee runs them all and stops with int3, at the first failure or
at the end.

A region in the tracee is laid out as

    base + 0            CODE (padded to CODE_AREA bytes)
    base + CODE_AREA    entries, ENTRY_SIZE bytes each
    after the entries   data the entries point to (paths, structs, result slots)

`Table` collects entries and their data; `BlobRunner` writes a table into a region that
the caller has mapped (read, write and exec) and runs it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import struct
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from engine.errors import termination_held
from engine.kernel import ptrace, uapi
from engine.kernel import sys as ksys

# Assembled from blob.S (as -o blob.o blob.S; objdump -d blob.o). test_restore_blob.py
# re-assembles the source when `as` exists and compares.
CODE = bytes.fromhex(
    "31ed4d85ed0f8422010000498b5c2438498d4c2408f7c300020000741149837c2410000f84ee000000"
    "498b4c2408498b0424488b39488b7108488b51104c8b51184c8b41204c8b4928f6c30174034c89f7f6"
    "c30274034c89f6f6c30474034c89f2f6c30874034d89f2f6c31074034d89f0f6c32074034d89f10f05"
    "f7c30004000074194885c075144d8b6c24204d8b642418bd02000000e966ffffff483d01f0ffff730d"
    "f7c30008000074384885c07533f7c30010000074264883f8ef752049837c242800741849ff4c2428b8"
    "23000000498b7c243031f60f05e923fffffff6c380743ff6c34074034989c6f7c300010000740b4889"
    "d948c1e9204989040ff7c300020000741049834424083049ff4c2410e9ebfeffff4983c44049ffcde9"
    "dffeffff83fd02740f85ed7545cc83fd02740585ed753bcc4c89e1492b4f1048c1e906498b5708488b"
    "34ca48894608498b54241048895610488b5618498b3fb8010000000f05b8e7000000bf010000000f05"
    "594c892948894108415f415e415d415c5d5bc353554154415541564157514989fc4989f54989d74531"
    "f6bd01000000e95dfeffff4883fa030f8257010000b8ffffffffb9ffffffff41b8ffffffff4531c942"
    "0f188c0e00300000420f188c0e00400000420f188c0e00500000f24a0f38f1040ef24a0f38f18c0e00"
    "100000f24e0f38f1840e00200000f24a0f38f1440e08f24a0f38f18c0e08100000f24e0f38f1840e08"
    "200000f24a0f38f1440e10f24a0f38f18c0e10100000f24e0f38f1840e10200000f24a0f38f1440e18"
    "f24a0f38f18c0e18100000f24e0f38f1840e18200000f24a0f38f1440e20f24a0f38f18c0e20100000"
    "f24e0f38f1840e20200000f24a0f38f1440e28f24a0f38f18c0e28100000f24e0f38f1840e28200000"
    "f24a0f38f1440e30f24a0f38f18c0e30100000f24e0f38f1840e30200000f24a0f38f1440e38f24a0f"
    "38f18c0e38100000f24e0f38f1840e382000004983c1404981f9001000000f82e5fefffff7d0f7d141"
    "f7d08907894f04448947084883c70c4881c6003000004883ea034883fa030f83a9feffff4885d27430"
    "b8ffffffff4531c9f24a0f38f1040e4983c1084981f90010000072ecf7d089074883c7044881c60010"
    "000048ffcaebcbc3415051575652b8030000004c89cf0f055a5e5f488b0c24e82cfeffff488b342448"
    "8b7c2408ba1000000041ba004000004531c04531c9b82c0000000f05488b3424488b7c2408ba010000"
    "0031c00f054883c410c34d63a5001000004963ad04100000eb034989c4b8030000004c89e70f05b803"
    "0000004889ef0f05b80b0000004c89ef4c89f64c89fcffe34150e8b6fdffffb8ba0000000f0589c75e"
    "b8c80000000f05c3"
)
SYSCALL_OFFSET = 0x79  # the routine's `syscall` instruction (run_one() uses it alone)
FAIL_OFFSET = 0x12c  # the int3 reached when an entry fails
DONE_OFFSET = 0x136  # the int3 reached when every entry ran
TABLE_CALL_OFFSET = 0x184  # table_call(entries, count, base, status) (in table_notify)
PAGE_CRCS_OFFSET = 0x1a5  # page_crcs(out, pages, npages): engine/kernel/pagecrc.py
TABLE_NOTIFY_OFFSET = 0x33c  # table_notify(entries, count, base, status, sock, peer)
CRC_PAIR_RETURN_OFFSET = 0x390  # crc_return taking 2 fds at PAIR_AT (after a socketpair)
#: where crc_pair_return finds the fds: code address + PAIR_AT (the page after the code)
PAIR_AT = 4096
CRC_OPEN_RETURN_OFFSET = 0x3a0  # crc_return taking the fd from rax (after an open)
CRC_RETURN_OFFSET = 0x3a3  # where code called in a task returns to (blob.S crc_return)
CRC_RETURN_STOP = CRC_RETURN_OFFSET + 10  # rip at the entry stop of crc_return's close
TABLE_SIGNAL_OFFSET = 0x3c7  # table_signal(entries, count, base, status, sig)
#: rip at the delivery stop of table_signal's own signal (right after its tkill)
TABLE_SIGNAL_STOP = TABLE_SIGNAL_OFFSET + 0x18
CODE_AREA = 1024
ENTRY_SIZE = 64
_ENTRY = struct.Struct("<8Q")
_ROW = struct.Struct("<6q")
_STATUS = struct.Struct("<Qq")  # table_call's status: entries left, last result
_ZEROS = [0] * 6

F_SAVE = 1 << 6
F_MAY_FAIL = 1 << 7
F_STORE = 1 << 8
F_ROWS = 1 << 9
F_CHILD_JUMPS = 1 << 10
F_ZERO_FAILS = 1 << 11
F_RETRY_EEXIST = 1 << 12
#: where a child's report starts (blob.S child_fail): magic, result, rows left, length
CHILD_REPORT = struct.Struct("<8sqQQ")
CHILD_REPORT_MAGIC = b"CHILDERR"
ROW_SIZE = 48  # six u64 arguments
#: Where a rows entry's args[1] (rows left, counted down as they run) is in the entry.
ROWS_LEFT_AT = 16

_MASK64 = (1 << 64) - 1
_CALL_REGS = ("rdi", "rsi", "rdx", "rcx")
_HOME_REGS = ("rbx", "rbp", "r12", "r13", "r14", "r15")
#: bytes of stack table_notify needs below its return address (table_call inside)
TABLE_CALL_STACK = 80
_ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
_PASS_EVENTS = (uapi.PTRACE_EVENT_CLONE, uapi.PTRACE_EVENT_FORK, uapi.PTRACE_EVENT_VFORK)


class TableError(OSError):
    """An entry of a table failed inside the tracee; `what` says which one (and `row`
    which row of a rows entry, else 0)."""

    def __init__(self, errno_: int, what: str, index: int, row: int = 0) -> None:
        super().__init__(errno_, f"{what}: {os.strerror(errno_)}")
        self.what = what
        self.index = index
        self.row = row


@dataclass(frozen=True)
class DataRef:
    """A place in the data area of a table, resolved to an address when encoded."""

    offset: int


@dataclass
class EntryRef:
    """An entry of a table by its index, resolved to the entry's address when encoded:
    where a child jumps to (F_CHILD_JUMPS). The index may be set after the entry that
    refers to it is added (a label), but before the table is encoded."""

    index: int = -1


Arg = int | DataRef | EntryRef


#: How errors name an entry: a string, or (format, *values) formatted only on error
#: (tables of tens of thousands of entries should not format tens of thousands of strings).
What = str | tuple[object, ...]
#: How errors name a row of a rows entry: from the row's index, only on error.
RowWhat = Callable[[int], str]


class _Entry(NamedTuple):
    nr: int
    args: tuple[Arg, ...]
    flags: int
    store: DataRef | None
    what: What | RowWhat


@dataclass
class Table:
    """A list of syscalls to run in the tracee, plus the data they point to."""

    entries: list[_Entry] = field(default_factory=list)
    _data: bytearray = field(default_factory=bytearray)
    _patches: list[tuple[DataRef, DataRef]] = field(default_factory=list)
    # (at, count, stride, target, target stride): patch_addresses
    _strided: list[tuple[DataRef, int, int, DataRef, int]] = field(default_factory=list)
    # what prepare() encoded, and for which base and sizes
    _prepared: tuple[tuple[int, ...], bytearray] | None = None

    def data(self, payload: bytes, align: int = 8) -> DataRef:
        """Place bytes in the data area; returns where they will be."""
        pad = -len(self._data) % align
        self._data += bytes(pad)
        ref = DataRef(len(self._data))
        self._data += payload
        return ref

    def cstr(self, text: str | bytes) -> DataRef:
        """Place a NUL-terminated string (paths are encoded as the filesystem does)."""
        raw = os.fsencode(text) if isinstance(text, str) else text
        return self.data(raw + b"\0", 1)

    def patch_address(self, at: DataRef, target: DataRef) -> None:
        """Make the u64 at `at` hold the task address of `target` (pointers inside
        structs, known only once the table is encoded)."""
        self._patches.append((at, target))

    def patch_addresses(self, at: DataRef, count: int, stride: int, target: DataRef,
                        target_stride: int) -> None:
        """patch_address of `count` pointers at once, the i-th at `at` + i * stride to
        `target` + i * target_stride (each row of a rows entry pointing to a struct of
        its own: 61 sigactions a task made a tree's tables 3,000 patches). `at` and
        `stride` must be multiples of 8."""
        if at.offset % 8 or stride % 8:
            raise ValueError("strided pointers must be 8-byte aligned")
        self._strided.append((at, count, stride, target, target_stride))

    def copy(self) -> Table:
        """A table of its own with the same entries, data and encoding (set_entry on
        either leaves the other as it is)."""
        prepared = (None if self._prepared is None
                    else (self._prepared[0], bytearray(self._prepared[1])))
        return Table(list(self.entries), bytearray(self._data), list(self._patches),
                     list(self._strided), prepared)

    def address(self, ref: DataRef, base: int) -> int:
        """Task address of `ref` for a region at `base` (valid until the next run)."""
        return base + self.data_offset() + ref.offset

    def slot(self) -> DataRef:
        """An 8-byte result slot (see `add(store=...)`)."""
        return self.data(bytes(8))

    def add(self, nr: int, *args: Arg, use_saved: int = 0, save: bool = False,
            may_fail: bool = False, store: DataRef | None = None, what: What = "",
            jump: EntryRef | None = None, zero_fails: bool = False,
            retry: tuple[int, DataRef] | None = None) -> None:
        """Append syscall `nr(args)`.

        use_saved: bit i set = argument i is the value saved by an earlier `save=True`
        entry (e.g. the fd of an open for the mmaps that follow it). may_fail: an error
        result does not stop the table. store: also write the result to that slot.
        what: how errors name this entry, e.g. ("map {} at {:#x}", path, addr).
        jump: for a clone or fork of at most two arguments, the entry its child goes on
        at, running the table from there to its end. zero_fails: a result of 0 fails.
        retry: (times, timespec) for a syscall of at most four arguments: a failure with
        EEXIST is retried that many times, sleeping that long before each.
        """
        if len(args) > (2 if jump else 4 if retry else 6):
            raise ValueError("too many arguments for this syscall entry")
        flags = use_saved & 0x3F
        flags |= F_SAVE if save else 0
        flags |= F_MAY_FAIL if may_fail else 0
        flags |= F_STORE if store is not None else 0
        flags |= F_ZERO_FAILS if zero_fails else 0
        if jump is not None:
            args = (*args, *_ZEROS[:2 - len(args)], jump, 0)  # 0: the count, at encode()
            flags |= F_CHILD_JUMPS
        if retry is not None:
            args = (*args, *_ZEROS[:4 - len(args)], *retry)
            flags |= F_RETRY_EEXIST
        self.entries.append(_Entry(nr, args, flags, store, what))

    def set_entry(self, index: int, nr: int, *args: int, what: What = "") -> None:
        """Make entry `index` syscall `nr(args)` (plain ints, no flags), in a prepared
        encoding too (a placeholder filled in once its arguments are known)."""
        self.entries[index] = _Entry(nr, args, 0, None, what)
        if self._prepared is not None:
            _ENTRY.pack_into(self._prepared[1], index * ENTRY_SIZE, nr,
                             *(a & _MASK64 for a in args), *_ZEROS[:6 - len(args)], 0)

    def rows(self, nr: int, rows: bytes, use_saved: int = 0, may_fail: bool = False,
             what: RowWhat = str) -> DataRef:
        """Append syscall `nr` run once per row of `rows` (six u64 arguments each, e.g.
        array("q").tobytes()): one entry for many calls, such as every mmap of a file.
        use_saved and may_fail as for add(), for each row; what(row index) names a
        failed row. Returns where the rows are (for patch_address of a pointer in one:
        row i's argument j is at offset i * ROW_SIZE + 8 * j)."""
        if len(rows) % ROW_SIZE:
            raise ValueError(f"rows of {len(rows)} bytes are not rows of six u64")
        ref = self.data(rows)
        self.rows_at(nr, ref, len(rows) // ROW_SIZE, use_saved, may_fail, what)
        return ref

    def rows_at(self, nr: int, ref: DataRef, count: int, use_saved: int = 0,
                may_fail: bool = False, what: RowWhat = str) -> None:
        """rows() of `count` rows already in the data area at `ref` (the runner only
        reads them: entries of several tasks may share one set of rows)."""
        flags = (use_saved & 0x3F) | F_ROWS | (F_MAY_FAIL if may_fail else 0)
        self.entries.append(_Entry(nr, (ref, count), flags, None, what))

    def calls(self) -> int:
        """How many syscalls the table makes (a rows entry's rows each count)."""
        return sum(e.args[1] if e.flags & F_ROWS else 1  # type: ignore[misc]
                   for e in self.entries)

    def rows_of(self, index: int) -> list[tuple[int, ...]]:
        """The arguments of each row of rows entry `index` (as signed values)."""
        e = self.entries[index]
        ref, count = e.args
        assert isinstance(ref, DataRef) and isinstance(count, int) and e.flags & F_ROWS
        raw = bytes(self._data[ref.offset:ref.offset + count * ROW_SIZE])
        return list(_ROW.iter_unpack(raw))

    def describe(self, index: int, row: int = 0) -> str:
        """The `what` of entry `index` (of its row `row` for a rows entry), formatted."""
        e = self.entries[index]
        if e.flags & F_ROWS:
            return str(e.what(row))  # type: ignore[operator]
        if isinstance(e.what, tuple):
            return str(e.what[0]).format(*e.what[1:])
        return str(e.what) or f"syscall {e.nr}"

    def error(self, errno_: int, index: int, rows_left: int = 0) -> TableError:
        """The TableError of entry `index` failing; for a rows entry, `rows_left` is its
        args[1] as the runner left it (the failed row and those after it)."""
        e = self.entries[index]
        row = 0
        if e.flags & F_ROWS and isinstance(e.args[1], int):
            row = e.args[1] - rows_left
        return TableError(errno_, self.describe(index, row), index, row)

    def __len__(self) -> int:
        return len(self.entries)

    def size(self) -> int:
        """Bytes the table needs after the code area."""
        return len(self.entries) * ENTRY_SIZE + len(self._data)

    def data_offset(self) -> int:
        """Offset of the data area from the region base."""
        return CODE_AREA + len(self.entries) * ENTRY_SIZE

    def prepare(self, base: int) -> None:
        """Encode the table now (for a region at `base`), ahead of the run that writes it:
        encode() returns these bytes while the table keeps its size (set_entry keeps them
        up to date); made while the engine would wait anyway."""
        self._prepared = None
        self._prepared = (self._sizes(base), bytearray(self.encode(base)))

    def _sizes(self, base: int) -> tuple[int, ...]:
        return (base, len(self.entries), len(self._data), len(self._patches),
                len(self._strided))

    def encode(self, base: int) -> bytes:
        """The bytes to write at base + CODE_AREA for a region mapped at `base`."""
        if self._prepared is not None and self._prepared[0] == self._sizes(base):
            return bytes(self._prepared[1])
        data_off = self.data_offset()
        data_base = base + data_off
        out = bytearray(len(self.entries) * ENTRY_SIZE)
        pack = _ENTRY.pack_into
        mask = (1 << 64) - 1
        for i, e in enumerate(self.entries):
            vals = [a & mask if a.__class__ is int else self._resolve(a, base)
                    for a in e.args]
            vals += _ZEROS[:6 - len(vals)]
            flags = e.flags
            if flags & F_CHILD_JUMPS:
                vals[3] = len(self.entries) - e.args[2].index  # type: ignore[union-attr]
            if e.store is not None:
                flags |= (data_off + e.store.offset) << 32
            pack(out, i * ENTRY_SIZE, e.nr, *vals, flags)
        data = bytearray(self._data)
        for at, target in self._patches:
            data[at.offset:at.offset + 8] = (data_base + target.offset).to_bytes(8, "little")
        for at, count, stride, target, target_stride in self._strided:
            words = memoryview(data)[at.offset:at.offset + count * stride].cast("Q")
            first = data_base + target.offset
            words[::stride // 8] = array("Q", range(first, first + count * target_stride,
                                                    target_stride))
        out += data
        return bytes(out)


    def _resolve(self, arg: Arg, base: int) -> int:
        if isinstance(arg, DataRef):
            return base + self.data_offset() + arg.offset
        if isinstance(arg, EntryRef):
            if not 0 <= arg.index < len(self.entries):
                raise ValueError(f"entry reference {arg.index} outside the table")
            return base + CODE_AREA + arg.index * ENTRY_SIZE
        return arg & _MASK64


#: bytes local_code() maps: CODE in whole pages
LOCAL_CODE_SIZE = (len(CODE) + 4095) & ~4095


@functools.cache
def local_code() -> int | None:
    """CODE mapped executable in the engine itself (its page_crcs, its table_call), or
    None where the engine may not map code executable."""
    size = LOCAL_CODE_SIZE
    try:
        addr = ksys.mmap(0, size, uapi.PROT_READ | uapi.PROT_WRITE,
                         uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS)
        ctypes.memmove(addr, CODE, len(CODE))
        ksys.mprotect(addr, size, uapi.PROT_READ | uapi.PROT_EXEC)
    except OSError:
        return None  # kept mapped if mprotect failed: a page, once per process
    return addr


class LocalTable:
    """A table run in the engine's own process, with blob.S table_call from local_code():
    the syscalls of a process the engine forks (engine/restore/forktable.py), whose
    children go on in the same table (F_CHILD_JUMPS) and return from call() only where
    an entry fails. The table stays mapped for the life of the process."""

    _CALL = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p,
                             ctypes.c_void_p)

    def __init__(self, table: Table, report_fd: int = -1,
                 reports: list[DataRef] | None = None) -> None:
        """reports: for each entry and then for the end of the table, the child_report()
        a child writes to report_fd where it fails there (blob.S child_fail)."""
        code = local_code()
        if code is None:
            raise OSError("the engine cannot map code executable")
        #: where table_call's code is (what a process forked in the table runs)
        self.code = (code, code + LOCAL_CODE_SIZE)
        self.table = table
        reports = reports or []
        size = region_size(table.size() + 8 * len(reports))
        self.base = ksys.mmap(0, size, uapi.PROT_READ | uapi.PROT_WRITE,
                              uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS)
        self.end = self.base + size
        raw = table.encode(self.base)
        entries = self.base + CODE_AREA
        ctypes.memmove(entries, raw, len(raw))
        at = entries + len(raw)  # the report addresses, then child_fail's header at base
        addrs = [table.address(ref, self.base) for ref in reports]
        ctypes.memmove(at, struct.pack(f"<{len(addrs)}Q", *addrs), 8 * len(addrs))
        ctypes.memmove(self.base, struct.pack("<qQQ", report_fd, at, entries), 24)
        self._call = self._CALL(code + TABLE_CALL_OFFSET)
        self._status = ctypes.create_string_buffer(_STATUS.size)

    def call(self, index: int = 0) -> tuple[int, int]:
        """Run the table from entry `index` to its end; its children (F_CHILD_JUMPS) do
        not come back here. Returns the index of the entry that failed (len(table) when
        none did) and the last result (the failed one's -errno, 0 for a zero_fails
        entry). Releases the GIL (ctypes): the process must have no other thread."""
        self._call(self.base + CODE_AREA + index * ENTRY_SIZE, len(self.table) - index,
                   self.base, ctypes.addressof(self._status))
        left, result = _STATUS.unpack(self._status.raw)
        return len(self.table) - left, result

    def rows_left(self, index: int) -> int:
        """A rows entry's rows left (the failed one and those after it) in this
        process's copy, after call() returned at it."""
        at = self.base + CODE_AREA + index * ENTRY_SIZE + ROWS_LEFT_AT
        return int.from_bytes(ctypes.string_at(at, 8), "little")

    def read_slot(self, ref: DataRef) -> int:
        """The signed u64 in a result slot (`store=`) of this process's copy."""
        addr = self.table.address(ref, self.base)
        return int.from_bytes(ctypes.string_at(addr, 8), "little", signed=True)


def child_report(text: bytes) -> bytes:
    """A report for LocalTable's children (the text must fit one atomic pipe write)."""
    return CHILD_REPORT.pack(CHILD_REPORT_MAGIC, 0, 0, CHILD_REPORT.size + len(text)) + text


def parse_child_reports(raw: bytes) -> list[tuple[int, int, bytes]]:
    """The (result, rows left, text) of each child report in `raw`, which holds whole
    reports only (each one atomic write)."""
    out = []
    while raw.startswith(CHILD_REPORT_MAGIC) and len(raw) >= CHILD_REPORT.size:
        _, result, left, length = CHILD_REPORT.unpack_from(raw)
        out.append((result, left, raw[CHILD_REPORT.size:length]))
        raw = raw[length:]
    return out


def region_size(table_bytes: int) -> int:
    """Page-aligned size of a region holding the code and a table of that many bytes."""
    total = CODE_AREA + table_bytes
    return (total + 4095) & ~4095


class BlobRunner:
    """Runs tables in a seized, ptrace-stopped tracee whose region [base, base+size) is
    mapped readable, writable and executable.

    Every run sets the registers it needs; the caller puts the task's real registers back
    afterwards (restore sets the dumped ones). Signals should be blocked in the tracee
    (PTRACE_SETSIGMASK) so none is delivered in the middle of a table.
    """

    def __init__(self, pid: int, base: int, size: int, timeout: float = 30.0) -> None:
        self.pid = pid
        self.base = base
        self.size = size
        self.timeout = timeout
        self._mem = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        self._table: Table | None = None
        self._running: Table | None = None  # started, not yet finished
        #: PTRACE_GETEVENTMSG of the last fork/clone event seen by run_one() (the new
        #: task's id as the engine sees it)
        self.last_event_msg = 0
        self.write(base, CODE)

    @property
    def mem_fd(self) -> int:
        """The open /proc/PID/mem descriptor (valid until close())."""
        return self._mem

    def close(self) -> None:
        """Close the /proc/PID/mem handle (idempotent)."""
        if self._mem >= 0:
            os.close(self._mem)
            self._mem = -1

    def write(self, addr: int, data: bytes | memoryview) -> None:
        """Write tracee memory through /proc/PID/mem (works on read-only pages too)."""
        view = memoryview(data)
        while view:
            n = os.pwrite(self._mem, view, addr)
            if n <= 0:
                raise OSError(f"short write to /proc/{self.pid}/mem at {addr:#x}")
            view = view[n:]
            addr += n

    def read(self, addr: int, n: int) -> bytes:
        """Read tracee memory through /proc/PID/mem."""
        return os.pread(self._mem, n, addr)

    def read_slot(self, ref: DataRef) -> int:
        """The result a `store=` entry of the last run table left in its slot, as the
        syscall returned it (negative errno on failure)."""
        if self._table is None:
            raise RuntimeError("no table has run")
        addr = self._table.address(ref, self.base)
        return int.from_bytes(self.read(addr, 8), "little", signed=True)

    def run(self, table: Table, timeout: float | None = None) -> None:
        """Run every entry of `table` (within `timeout` seconds, default the runner's);
        raises TableError naming the first failed entry."""
        # A termination signal waits until the task is stopped again: raising while it
        # runs the table would leave it running there under the engine's cleanup.
        with termination_held():
            self.start(table)
            self.finish(timeout)

    def start(self, table: Table) -> bool:
        """Set the task running `table` and return at once (False: the table is empty,
        nothing runs); finish() waits for it. The caller holds the termination signals
        (engine.errors.termination_held) until finish() returned."""
        self._running = None
        if not len(table):
            return False
        if CODE_AREA + table.size() > self.size:
            raise ValueError(f"table of {table.size()} bytes does not fit the region")
        self._table = table
        self.write(self.base + CODE_AREA, table.encode(self.base))
        regs = ptrace.get_regs(self.pid)
        regs.rip = self.base
        regs.r12 = self.base + CODE_AREA
        regs.r13 = len(table)
        regs.r14 = 0
        regs.r15 = self.base
        regs.rax = 0
        regs.orig_rax = uapi.ORIG_RAX_NONE
        ptrace.set_regs(self.pid, regs)
        ptrace.cont(self.pid, 0)
        self._running = table
        return True

    def finish(self, timeout: float | None = None) -> None:
        """Wait (`timeout` seconds, default the runner's) for the table start() set
        running; raises as run() does."""
        table, self._running = self._running, None
        if table is not None:
            status = ptrace.wait_stop(self.pid, self.timeout if timeout is None else timeout)
            self._check_stop(table, status)

    def _check_stop(self, table: Table, status: int) -> None:
        if not os.WIFSTOPPED(status):
            raise OSError(f"task {self.pid} did not stop in the syscall table "
                          f"(wait status {status:#x})")
        sig = os.WSTOPSIG(status)
        regs = ptrace.get_regs(self.pid)
        if sig != signal.SIGTRAP:
            raise OSError(f"task {self.pid} got signal {sig} in the syscall table "
                          f"at {regs.rip:#x}")
        if regs.rip == self.base + DONE_OFFSET + 1:
            return
        if regs.rip == self.base + FAIL_OFFSET + 1:
            index = len(table) - regs.r13
            err = -(regs.rax - (1 << 64)) if regs.rax >= 1 << 63 else regs.rax
            left = self.read(self.base + CODE_AREA + index * ENTRY_SIZE + ROWS_LEFT_AT, 8)
            raise table.error(err, index, int.from_bytes(left, "little"))
        raise OSError(f"task {self.pid} trapped at {regs.rip:#x}, outside the table runner")

    def run_one(self, nr: int, *args: int) -> int:
        """Run one syscall at the routine's `syscall` instruction with PTRACE_SYSCALL and
        return its raw result (negative errno on failure).

        The task ends in its syscall-exit-stop, before returning to user space: no trap
        signal is raised (an int3 or single-step trap is a forced SIGTRAP that resets a
        blocked or ignored SIGTRAP disposition), no rseq area is rewritten, and the call
        may even unmap the region itself. The caller sets the registers it wants before
        resuming the task.
        """
        return run_one_each([(self, nr, args)])[0]

    def _enter(self, nr: int, args: tuple[int, ...]) -> None:
        """run_one's start: the registers set, the task let go to its syscall-entry-stop."""
        regs = ptrace.get_regs(self.pid)
        regs.rip = self.base + SYSCALL_OFFSET
        regs.rax = nr
        regs.orig_rax = uapi.ORIG_RAX_NONE
        for name, value in zip(_ARG_REGS, args):
            setattr(regs, name, value & ((1 << 64) - 1))
        ptrace.set_regs(self.pid, regs)
        ptrace.ptrace(uapi.PTRACE_SYSCALL, self.pid, 0, 0)

    def _stopped(self, nr: int, stop: str) -> None:
        """Wait for the syscall-`stop`-stop of syscall nr (passing the event stops of a
        clone it makes, PTRACE_O_TRACECLONE, which come between the two)."""
        while True:
            status = ptrace.wait_stop(self.pid, self.timeout)
            if ptrace.stop_event(status) not in _PASS_EVENTS:
                break
            self.last_event_msg = ptrace.get_event_msg(self.pid)
            ptrace.ptrace(uapi.PTRACE_SYSCALL, self.pid, 0, 0)
        if os.WSTOPSIG(status) & 0x7F != signal.SIGTRAP or ptrace.stop_event(status):
            raise OSError(f"task {self.pid}: unexpected stop {status:#x} waiting for "
                          f"the syscall-{stop}-stop of syscall {nr}")


def run_one_each(calls: Sequence[tuple[BlobRunner, int, tuple[int, ...]]]) -> list[int]:
    """BlobRunner.run_one of each (runner, nr, args), one task each, the tasks all at
    once: while the engine waits for the stop of one, the others run to theirs (one after
    another, each round trip cost a tree's restore its tail, ~0.3 ms a task). On an error
    the tasks may be left anywhere in their calls: the caller kills them."""
    for runner, nr, args in calls:
        runner._enter(nr, args)
    for runner, nr, _args in calls:
        runner._stopped(nr, "entry")
        ptrace.ptrace(uapi.PTRACE_SYSCALL, runner.pid, 0, 0)
    for runner, nr, _args in calls:
        runner._stopped(nr, "exit")
    return [ptrace.get_regs(runner.pid).signed("rax") for runner, _nr, _args in calls]


def call(pid: int, mem_fd: int, code: int, entry: int, args: tuple[int, ...], stack: int,
         timeout: float, home: dict[str, int] | None = None) -> None:
    """Call the routine at `code + entry` (SysV ABI, up to 4 arguments) in a
    ptrace-stopped task whose region at `code` holds CODE (executable), with rsp =
    `stack`, where its return address (crc_return) is written: the routine returns there,
    whose first syscall (close) stops the task and is skipped. The task is left in that
    syscall-exit-stop at crc_return with other registers (the caller puts its own back).

    `home`: an injector's home registers (Injector.go_home to crc_return): rbx and r12-r15
    are set from them, so a task whose tracer died meanwhile goes back to its own state
    from crc_return. Signals must be blocked in the task. Raises OSError on any other stop
    and TimeoutError (the task stopped where it was) after `timeout` seconds."""
    # A termination signal waits until the task is stopped again (as for tables):
    # raising while it runs would leave the engine's cleanup a running task.
    with termination_held():
        os.pwrite(mem_fd, (code + CRC_RETURN_OFFSET).to_bytes(8, "little"), stack)
        regs = ptrace.get_regs(pid)
        for name in _HOME_REGS if home is not None else ():
            setattr(regs, name, home[name])  # type: ignore[index]
        for name, value in zip(_CALL_REGS, args):
            setattr(regs, name, value & _MASK64)
        regs.rip = code + entry
        regs.rsp = stack
        regs.orig_rax = uapi.ORIG_RAX_NONE
        regs.eflags &= ~(uapi.X86_EFLAGS_TF | uapi.X86_EFLAGS_DF)
        ptrace.set_regs(pid, regs)
        for stop in ("entry", "exit"):
            _to_crc_return(pid, code, stop, timeout)


def _to_crc_return(pid: int, code: int, stop: str, timeout: float) -> None:
    """Resume to the next syscall stop, which must be crc_return's close; at its entry
    stop the close is skipped and the task returns to crc_return after it."""
    ptrace.ptrace(uapi.PTRACE_SYSCALL, pid, 0, 0)
    try:
        status = ptrace.wait_stop(pid, timeout)
    except TimeoutError:
        ptrace.interrupt(pid)  # still running the routine: stop it where it is
        ptrace.wait_stop(pid, timeout)
        raise
    regs = ptrace.get_regs(pid)
    if (os.WSTOPSIG(status) & 0x7F != uapi.SIGTRAP or ptrace.stop_event(status)
            or regs.rip not in (code + CRC_RETURN_STOP, code + CRC_RETURN_OFFSET)):
        raise OSError(f"task {pid}: stop {status:#x} at {regs.rip:#x} in code called "
                      f"there (syscall-{stop}-stop expected)")
    if stop == "entry":
        regs.orig_rax = uapi.ORIG_RAX_NONE
        regs.rip = code + CRC_RETURN_OFFSET
        ptrace.set_regs(pid, regs)
