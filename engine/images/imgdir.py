"""An image directory on disk: JSON records, raw blobs, pagemaps and page files.

Writers create the directory 0700 and every file 0600 with O_EXCL (an image is written
once) and record a CRC32 of every file, per MiB, in the inventory (which carries a CRC of
itself); pages files instead carry a checksum per page, in their pagemap (pagecrc.py), so
that any page can be verified alone, where it is read. Readers open files only beneath the directory (one path component, no symlink
followed, non-blocking: a FIFO never hangs), accept only regular files with one link,
bound every size they read, verify every checksum, refuse files that anyone but the
engine's user owns or may write (unless the images are trusted), and name the file in
every error.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import json
import mmap
import operator
import os
import re
import stat
import struct
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Self, TypeVar

from engine.errors import EngineError
from engine.images import vmatable
from engine.images.codec import from_dict, to_dict
from engine.images.directio import close_quietly, enable_direct_write, open_direct_read
from engine.images.records import PAGE_SIZE, RecordError
from engine.kernel import pagecrc
from engine.kernel import sys as ksys
from engine.kernel.pagecrc import PageSums

T = TypeVar("T")

MAX_JSON_BYTES = 256 << 20
MAX_BLOB_BYTES = 1 << 30

PAGEMAP_MAGIC = b"PYEPGMAP"
PAGEMAP_VERSION = 2
# magic, version, entry size, entries, pages stored, checksum algorithm; then the entries,
# then one u32 checksum per stored page (pagecrc.PageSums)
_PM_HEADER = struct.Struct("<8sIIQQI")
_PM_ENTRY = struct.Struct("<QII")  # address (or object offset), nr_pages, flags
_MM_TABLE = struct.Struct("<Q")  # the VMA table's size in an mm file (write_mm)

#: Checksums cover each file in pieces of this size (a reader may verify any piece alone).
CRC_CHUNK = 1 << 20
_SELF_CRC = re.compile(rb',"self_crc":(\d{1,10})}\n?\Z')
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY

PE_PRESENT = 1  # the pages are in this image's pages file, in pagemap order
PE_PARENT = 2  # the pages did not change since the parent image: read them there
_PE_KNOWN = PE_PRESENT | PE_PARENT


class ImageError(EngineError):
    """A problem with one image file; the message starts with the file's path."""

    def __init__(self, path: str, message: str, phase: str = "read") -> None:
        super().__init__(phase, f"{path}: {message}")
        self.path = path


class PagemapEntry(NamedTuple):
    """A run of pages: `addr` is a virtual address (or a shmem object offset). (A tuple:
    a pagemap of tens of thousands of runs is decoded in bulk.)"""

    addr: int
    nr_pages: int
    flags: int

    @property
    def end(self) -> int:
        """First address after the run."""
        return self.addr + self.nr_pages * PAGE_SIZE


@dataclass(frozen=True)
class Pagemap:
    """A validated pagemap, a field at a time (tens of thousands of runs are decoded and
    walked in bulk): each run's address, page count and flags, sorted by address, and
    where each PRESENT run's data starts in the pages file (`offsets[i]`, -1 for runs
    without data here)."""

    addrs: list[int]
    counts: list[int]
    flags: list[int]
    offsets: list[int]
    pages_stored: int
    sums: PageSums

    @classmethod
    def of(cls, entries: list[PagemapEntry], offsets: list[int], pages_stored: int,
           sums: PageSums) -> Pagemap:
        """The pagemap of these runs."""
        return cls([e.addr for e in entries], [e.nr_pages for e in entries],
                   [e.flags for e in entries], offsets, pages_stored, sums)

    @functools.cached_property
    def ends(self) -> list[int]:
        """The first address after each run."""
        return list(map(operator.add, self.addrs, map(PAGE_SIZE.__mul__, self.counts)))

    @functools.cached_property
    def entries(self) -> list[PagemapEntry]:
        """The runs as records."""
        return list(map(PagemapEntry, self.addrs, self.counts, self.flags))


class ImageDir:
    """One image directory. Use `ImageDir.create` to write, `ImageDir.open` to read."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.created_dir = False
        self.created_files: list[str] = []
        #: file name -> CRC32 of each CRC_CHUNK piece (writers record, readers verify)
        self.checksums: dict[str, list[int]] = {}
        self.trusted = True
        self._dirfd = -1
        self._paths: dict[str, str] = {}  # file(): name -> path (asked ~30 times a task)
        #: pages files written: their checksums are in their pagemaps, not the inventory
        self._page_summed: set[str] = set()
        #: pages_writer(direct=True) writes with O_DIRECT (else through the page cache)
        self.pages_direct = True

    @classmethod
    def create(cls, path: str) -> ImageDir:
        """Create (or take an empty existing) directory for a new image, mode 0700."""
        img = cls(path)
        try:
            if not os.path.isdir(path):
                os.makedirs(path, mode=0o700)
                img.created_dir = True
            os.chmod(path, 0o700)
            if os.listdir(path):
                raise ImageError(path, "image directory is not empty", "write")
            # Prove we can write here before the dump freezes anything.
            probe = os.path.join(path, ".probe")
            os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            os.unlink(probe)
        except OSError as e:
            raise ImageError(path, f"cannot create image directory: {e.strerror}",
                             "write") from None
        return img

    @classmethod
    def open(cls, path: str, trusted: bool = False) -> ImageDir:
        """An existing image directory for reading. Unless `trusted`, the directory must
        belong to the engine's user and be writable by nobody else (so is every file)."""
        img = cls(path)
        img.trusted = trusted
        try:
            img._dirfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise ImageError(path, f"cannot open image directory: {e.strerror}") from None
        img._check_owner(path, os.fstat(img._dirfd), "directory")
        return img

    def identity(self) -> tuple[int, int]:
        """(st_dev, st_ino) of the directory a reader opened."""
        st = os.fstat(self._dirfd)
        return st.st_dev, st.st_ino

    def close(self) -> None:
        """Release the directory descriptor of a reader (idempotent)."""
        if self._dirfd >= 0:
            os.close(self._dirfd)
            self._dirfd = -1

    def _check_owner(self, path: str, st: os.stat_result, what: str) -> None:
        if self.trusted:
            return
        if st.st_uid != os.geteuid():
            raise ImageError(path, f"{what} owned by uid {st.st_uid}, not by the engine's "
                                   f"uid {os.geteuid()} (--trust-images to accept)")
        if st.st_mode & 0o022:
            raise ImageError(path, f"{what} mode {stat.S_IMODE(st.st_mode):04o} is writable "
                                   "by others than its owner (--trust-images to accept)")

    def discard(self) -> None:
        """Remove what this writer created (after a failed dump): its files, and the
        directory if it made it. Files it did not create are never touched."""
        for name in reversed(self.created_files):
            try:
                os.unlink(self.file(name))
            except FileNotFoundError:
                pass
        self.created_files = []
        if self.created_dir:
            # Our own new directory: also what a signal cut off between a file's creation
            # and its record here (or a task writing its pages created).
            for name in _entries(self.path):
                try:
                    os.unlink(os.path.join(self.path, name))
                except OSError:
                    pass
            try:
                os.rmdir(self.path)
            except OSError:
                pass  # a directory inside, put there by someone else: leave it

    def file(self, name: str) -> str:
        """Full path of a file in the directory (names never contain a slash)."""
        path = self._paths.get(name)
        if path is None:
            if not name or "/" in name or name in (".", "..") or "\0" in name:
                raise ImageError(os.path.join(self.path, repr(name)),
                                 "invalid image file name")
            path = self._paths[name] = os.path.join(self.path, name)
        return path

    def exists(self, name: str) -> bool:
        """Whether the directory holds an entry of that name (of any type: opening it
        then says what is wrong with it)."""
        path = self.file(name)
        try:
            if self._dirfd >= 0:
                os.stat(name, dir_fd=self._dirfd, follow_symlinks=False)
            else:
                os.lstat(path)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise ImageError(path, f"cannot stat: {e.strerror}") from None
        return True

    def names(self) -> frozenset[str]:
        """The names of the directory's entries (a reader's), in one listing."""
        try:
            return frozenset(os.listdir(self._dirfd if self._dirfd >= 0 else self.path))
        except OSError as e:
            raise ImageError(self.path, f"cannot list: {e.strerror}") from None

    # -- writing ------------------------------------------------------------------------

    def create_file(self, name: str) -> int:
        """Create a new file (0600, O_EXCL) and return its raw fd; the caller closes it."""
        path = self.file(name)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise ImageError(path, f"cannot create: {e.strerror}", "write") from None
        self.created_files.append(name)
        return fd

    def write_bytes(self, name: str, data: bytes | bytearray | memoryview) -> None:
        """Write a new file with exactly `data` (its checksum recorded on the way)."""
        fd = self.create_file(name)
        try:
            view = memoryview(data).cast("B")
            self.checksums[name] = chunk_crcs(view)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError as e:
            raise ImageError(self.file(name), f"write failed: {e.strerror}", "write") from None
        finally:
            os.close(fd)

    def write_json(self, name: str, record: Any) -> None:
        """Write a record (dataclass) as JSON."""
        # Compact: only then does json use its C encoder (30,000 VMAs: 0.1 s, not 4 s).
        text = json.dumps(to_dict(record), separators=(",", ":"))
        self.write_bytes(name, text.encode() + b"\n")

    def write_inventory(self, name: str, inventory: Any) -> None:
        """Write the inventory (last): the checksums of every other file written, and a
        CRC of its own text as its final member ``self_crc``."""
        self.checksum_written()
        inventory.checksums = dict(self.checksums)
        text = json.dumps(to_dict(inventory), separators=(",", ":")).encode()
        self.write_bytes(name, text[:-1] + b',"self_crc":%d}\n' % zlib.crc32(text))

    def page_summed(self, names: list[str]) -> list[str]:
        """Those of `names` that are pages files this writer created (their pages carry
        their own checksums)."""
        return [n for n in names if n in self._page_summed]

    def adopt(self, created: list[str], checksums: dict[str, list[int]],
              page_summed: list[str]) -> None:
        """Take as this writer's own the files another process wrote into the directory
        for it (engine/dump/memworker.py), with their checksums and pages files."""
        self.created_files += [n for n in created if n not in self.created_files]
        self.checksums.update(checksums)
        self._page_summed.update(page_summed)

    def checksum_written(self) -> None:
        """Record the checksums of the files written by others (sendfile), reading them
        back; pages files carry their own per-page sums."""
        for other in self.created_files:
            if other not in self.checksums and other not in self._page_summed:
                self.checksums[other] = self._file_crcs(other)

    def _file_crcs(self, name: str) -> list[int]:
        """Checksums of a file this writer created, read back in pieces."""
        fd = os.open(self.file(name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            out: list[int] = []
            for view in _stream(fd, os.fstat(fd).st_size, self.file(name)):
                out.extend(chunk_crcs(view))
            return out or [0]
        finally:
            os.close(fd)

    def write_mm(self, name: str, mm: Any, pagemap: bytes) -> None:
        """Write a process's mm record: its JSON (one line, without the VMAs), a newline,
        the u64 size of its VMA table, the table (`mm.vmas`, engine/images/vmatable.py),
        then its pagemap (encode_pagemap). One file, not three: every file a dump creates
        is an inode allocation, serialized on the directory's lock."""
        text = json.dumps(to_dict(mm), separators=(",", ":"))
        table = vmatable.encode(mm.vmas)
        self.write_bytes(name, b"".join((text.encode(), b"\n", _MM_TABLE.pack(len(table)),
                                         table, pagemap)))

    def pages_writer(self, name: str, nr_pages: int, direct: bool = False) -> PagesWriter:
        """A new pages file that must receive exactly nr_pages pages. With `direct` (and
        `pages_direct`), the file is written with O_DIRECT where the filesystem allows it:
        every append must then be page aligned in memory and a whole number of pages."""
        fd = self.create_file(name)
        self._page_summed.add(name)
        try:
            on = direct and self.pages_direct and enable_direct_write(fd)
        except BaseException:
            close_quietly(fd)
            raise
        return PagesWriter(self.file(name), fd, nr_pages, direct=on)

    # -- reading ------------------------------------------------------------------------

    def open_file(self, name: str) -> int:
        """Open an image file read-only and return its fd (the caller closes it): only
        a regular file with one link directly in the directory (no symlink followed, no
        FIFO waited for), of the right owner and mode unless trusted."""
        path = self.file(name)
        try:
            if self._dirfd >= 0:
                fd = os.open(name, _OPEN_FLAGS, dir_fd=self._dirfd)
            else:
                fd = os.open(path, _OPEN_FLAGS)
        except OSError as e:
            why = "is a symbolic link" if e.errno == errno.ELOOP else e.strerror
            raise ImageError(path, f"cannot open: {why}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ImageError(path, "not a regular file")
            if st.st_nlink != 1:
                raise ImageError(path, f"has {st.st_nlink} links (a hard link to a file "
                                       "outside the image?)")
            self._check_owner(path, st, "file")
            os.set_blocking(fd, True)  # reads may block again
        except BaseException:
            os.close(fd)
            raise
        return fd

    def size(self, name: str) -> int:
        """Size in bytes of an image file (opened and checked as by open_file)."""
        fd = self.open_file(name)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def prefetch(self, names: list[str]) -> None:
        """Where the first of `names` is not in the page cache (an evicted image), ask the
        kernel to read them all now (POSIX_FADV_WILLNEED): the disk gets the requests
        together rather than one at a time as each file is read. A name that cannot be
        opened is skipped: it is refused where it is read."""
        if not names:
            return
        try:
            fd = self.open_file(names[0])
        except ImageError:
            return
        try:
            os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
            return  # cached
        except BlockingIOError:
            pass
        except OSError:
            return  # no RWF_NOWAIT here: nothing to tell
        finally:
            os.close(fd)
        for name in names:
            try:
                fd = self.open_file(name)
            except ImageError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def read_bytes(self, name: str, limit: int = MAX_BLOB_BYTES) -> bytes:
        """Read a whole file of at most `limit` bytes and verify its checksum."""
        path = self.file(name)
        fd = self.open_file(name)
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                raise ImageError(path, f"larger than the {limit} bytes allowed")
            data = _read_to_end(fd, size + 1)  # a byte more: a file that grew shows it
        except OSError as e:
            raise ImageError(path, f"cannot read: {e.strerror}") from None
        finally:
            os.close(fd)
        if len(data) != size:
            raise ImageError(path, f"changed size while read ({size} -> {len(data)})")
        self.verify(name, data)
        return data

    def verify(self, name: str, data: bytes | memoryview) -> None:
        """Check data read from file `name` against its recorded checksums (a reader with
        no checksums yet, i.e. reading the inventory, checks nothing)."""
        want = self.checksums.get(name)
        if want is None and self.checksums:
            raise ImageError(self.file(name), "has no checksum in the inventory")
        if want is not None and chunk_crcs(memoryview(data).cast("B")) != want:
            raise ImageError(self.file(name), "checksum mismatch: the file is damaged")

    def verify_file(self, name: str) -> None:
        """Check a file against its recorded checksums: read whole when small (an xstate
        file per thread: no O_DIRECT probe, no 16 MiB buffer), streamed when large."""
        fd = self.open_file(name)
        try:
            want = self.checksums.get(name)
            if want is None:
                raise ImageError(self.file(name), "has no checksum in the inventory")
            size = os.fstat(fd).st_size
            if size <= CRC_CHUNK:
                got = chunk_crcs(memoryview(_read_small(fd, size, self.file(name))))
            else:
                got = []
                for view in _stream(fd, size, self.file(name)):
                    got.extend(chunk_crcs(view))
        finally:
            os.close(fd)
        if got != want:
            bad = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b),
                       min(len(got), len(want)))
            raise ImageError(self.file(name), f"checksum mismatch in the MiB at byte {bad * CRC_CHUNK}:"
                                              " the file is damaged")

    def verify_pages(self, name: str, pm: Pagemap) -> None:
        """Stream a pages file and check every page against its pagemap's checksums
        (for readers that do not use each page: show)."""
        fd = self.open_file(name)
        try:
            pos = 0
            for view in _stream(fd, os.fstat(fd).st_size, self.file(name)):
                _check_sums(self.file(name), pm.sums, pos, pagecrc.sums_of(pm.sums.algo, view))
                pos += len(view)
        finally:
            os.close(fd)

    def read_json(self, name: str, cls: type[T]) -> T:
        """Read and validate a JSON record of type cls."""
        return self._decode(name, self.read_bytes(name, MAX_JSON_BYTES), cls)

    def read_inventory(self, name: str, cls: type[T]) -> T:
        """Read the inventory, check its own CRC, and take its checksums for every other
        file this reader opens."""
        path = self.file(name)
        raw = self.read_bytes(name, MAX_JSON_BYTES)
        m = _SELF_CRC.search(raw)
        if m is None:
            raise ImageError(path, "missing field 'self_crc' (its checksum) at the end")
        text = raw[:m.start()] + b"}"
        if zlib.crc32(text) != int(m.group(1)):
            raise ImageError(path, "self_crc mismatch: the file is damaged")
        record = self._decode(name, text, cls)
        self.checksums = dict(record.checksums)  # type: ignore[attr-defined]
        return record

    def _decode(self, name: str, raw: bytes, cls: type[T]) -> T:
        path = self.file(name)
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise ImageError(path, f"not valid JSON: {e}") from None
        try:
            return from_dict(cls, data)
        except RecordError as e:
            raise ImageError(path, str(e)) from None

    def read_mm(self, name: str, cls: type[T]
                ) -> tuple[T, vmatable.VmaTable, Pagemap]:
        """Read and validate an mm record (write_mm) of type cls, its VMA table (sorted,
        disjoint VMA records), which the caller makes its `vmas`, and its pagemap."""
        path = self.file(name)
        raw = self.read_bytes(name, MAX_JSON_BYTES)
        end = raw.find(b"\n")
        if end < 0 or len(raw) < end + 1 + _MM_TABLE.size:
            raise ImageError(path, "no VMA table after the record")
        record = self._decode(name, raw[:end], cls)
        start = end + 1 + _MM_TABLE.size
        (size,) = _MM_TABLE.unpack_from(raw, end + 1)
        if size > len(raw) - start:
            raise ImageError(path, f"VMA table of {size} bytes beyond the end of the file")
        try:
            table = vmatable.decode(raw[start:start + size])
        except RecordError as e:
            raise ImageError(path, str(e)) from None
        return record, table, decode_pagemap(path, raw[start + size:])

    def read_pagemap(self, name: str) -> Pagemap:
        """Read and validate a binary pagemap file."""
        return decode_pagemap(self.file(name), self.read_bytes(name, MAX_JSON_BYTES))

    def pages_reader(self, name: str, pm: Pagemap) -> PagesReader:
        """Map a pages file read-only after checking it holds exactly the pages `pm`
        stores; whoever uses its data checks it against `pm`'s checksums (verify)."""
        return PagesReader(self.file(name), self.open_file(name), pm.sums)


def encode_pagemap(entries: list[PagemapEntry], sums: PageSums) -> bytes:
    """A binary pagemap (docs/IMAGES.md); entries must be sorted and not overlap, and
    `sums` hold the checksum of every page they store (the pages file's, in file order)."""
    stored = sum(e.nr_pages for e in entries if e.flags & PE_PRESENT)
    if len(sums.values) != stored:
        raise ValueError(f"{len(sums.values)} page checksums for {stored} pages")
    buf = bytearray(_PM_HEADER.pack(PAGEMAP_MAGIC, PAGEMAP_VERSION, _PM_ENTRY.size,
                                    len(entries), stored, sums.algo))
    for e in entries:
        buf += _PM_ENTRY.pack(e.addr, e.nr_pages, e.flags)
    buf += sums.values.tobytes()
    return bytes(buf)


def decode_pagemap(path: str, raw: bytes) -> Pagemap:
    """A binary pagemap's entries and checksums, validated; errors name `path`."""
    if len(raw) < _PM_HEADER.size:
        raise ImageError(path, "truncated pagemap header")
    magic, version, esize, count, stored, algo = _PM_HEADER.unpack_from(raw)
    if magic != PAGEMAP_MAGIC:
        raise ImageError(path, "bad pagemap magic")
    if version != PAGEMAP_VERSION or esize != _PM_ENTRY.size:
        raise ImageError(path, f"unsupported pagemap version {version}/{esize}")
    if algo not in pagecrc.ALGO_NAMES:
        raise ImageError(path, f"unknown page checksum algorithm {algo}")
    sums_at = _PM_HEADER.size + count * esize
    if len(raw) != sums_at + 4 * stored:
        raise ImageError(path, f"pagemap size {len(raw)} does not match {count} entries "
                               f"and {stored} page checksums")
    # Each 16-byte run is u64 address, u32 pages, u32 flags: columns by slicing.
    body = raw[_PM_HEADER.size:sums_at]
    words, halves = array("Q", body), array("I", body)
    pm = Pagemap(words[0::2].tolist(), halves[2::4].tolist(), halves[3::4].tolist(), [],
                 stored, PageSums(algo, array("I", raw[sums_at:])))
    _check_entries(path, pm)
    pm.offsets.extend(_offsets(pm))
    present = sum(itertools.compress(pm.counts, map(PE_PRESENT.__eq__, pm.flags)))
    if present != stored:
        raise ImageError(path, f"header says {stored} pages stored, entries say "
                               f"{present}")
    return pm


def _check_entries(path: str, pm: Pagemap) -> None:
    """Page aligned, not empty, one known flag, sorted without overlap and within 64 bits:
    checked a property at a time over all runs, the run found on error only."""
    addrs, counts, flags = pm.addrs, pm.counts, pm.flags
    if not addrs:
        return
    ends = pm.ends
    bad = (any(map((PAGE_SIZE - 1).__and__, addrs)) or min(counts) == 0
           or any(map(operator.gt, ends, addrs[1:])))
    if bad:
        prev_end = 0
        for e in pm.entries:
            if e.addr % PAGE_SIZE or e.nr_pages == 0 or e.addr < prev_end:
                raise ImageError(path, f"bad or unsorted entry at {e.addr:#x} "
                                       f"({e.nr_pages} pages)")
            prev_end = e.end
    if not set(flags) <= {PE_PRESENT, PE_PARENT}:
        e = next(e for e in pm.entries if e.flags not in (PE_PRESENT, PE_PARENT))
        raise ImageError(path, f"bad flags {e.flags:#x} at {e.addr:#x}")
    if ends[-1] > 1 << 64:
        raise ImageError(path, f"entry at {addrs[-1]:#x} overflows")


def _offsets(pm: Pagemap) -> list[int]:
    """Where each PRESENT run's data starts in the pages file (-1 for the others): the
    running sum of the run sizes where every run is PRESENT (the sum in C)."""
    sizes = list(map(PAGE_SIZE.__mul__, pm.counts))
    if PE_PARENT not in pm.flags:
        return list(itertools.accumulate(sizes[:-1], initial=0)) if sizes else []
    out = []
    pos = 0
    for size, flags in zip(sizes, pm.flags):
        if flags == PE_PRESENT:
            out.append(pos)
            pos += size
        else:
            out.append(-1)
    return out


def chunk_crcs(data: memoryview) -> list[int]:
    """CRC32 of each CRC_CHUNK piece of data (one value for an empty file)."""
    if not data:
        return [0]
    with pagecrc.timed():
        return [zlib.crc32(data[i:i + CRC_CHUNK]) for i in range(0, len(data), CRC_CHUNK)]


def _check_sums(path: str, sums: PageSums, offset: int, got: array[int]) -> None:
    """Compare the checksums of pages found at file `offset` with the recorded ones."""
    first = offset // PAGE_SIZE
    want = sums.values[first:first + len(got)]
    if got != want:
        bad = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(want))
        raise ImageError(path, f"checksum mismatch in the page at byte "
                               f"{(first + bad) * PAGE_SIZE}: the file is damaged")


def _read_to_end(fd: int, most: int) -> bytes:
    """Up to `most` bytes from fd's offset, stopping at the end of the file (plain
    reads: a file object and a dup per file cost a tree's restore milliseconds)."""
    parts = []
    while most > 0:
        part = os.read(fd, most)
        if not part:
            break
        parts.append(part)
        most -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _read_small(fd: int, size: int, path: str) -> bytes:
    """The `size` bytes of a small file, through the page cache."""
    data = os.pread(fd, size, 0)
    while len(data) < size:
        more = os.pread(fd, size - len(data), len(data))
        if not more:
            raise ImageError(path, f"changed size while read (at byte {len(data)})")
        data += more
    return data


def _stream(fd: int, size: int, path: str) -> Iterator[memoryview]:
    """The file read through fd in 16 MiB pieces (each view valid until the next), with
    O_DIRECT where the file allows it: pages files were written with O_DIRECT, so they
    are not in the page cache, and filling fresh page-cache pages costs more than the
    disk read itself."""
    direct = open_direct_read(f"/proc/self/fd/{fd}")
    if direct < 0:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # larger read-ahead
    buf = mmap.mmap(-1, 16 * CRC_CHUNK)  # page aligned, as O_DIRECT wants
    view = memoryview(buf)
    try:
        for pos in range(0, size, len(buf)):
            want = min(len(buf), size - pos)
            _read_exactly(direct, fd, view[:want], pos, path)
            yield view[:want]
    finally:
        if direct >= 0:
            os.close(direct)
        try:
            view.release()
            buf.close()
        except BufferError:
            pass  # slices still held by a propagating exception's frames: the GC unmaps


def _read_exactly(direct: int, fd: int, view: memoryview, pos: int, path: str) -> None:
    """Fill view from file offset pos: O_DIRECT (whole pages; a short tail is read
    through the page cache), or buffered when there is no O_DIRECT descriptor."""
    done = 0
    if direct >= 0:
        aligned = len(view) - len(view) % PAGE_SIZE
        try:
            while done < aligned:
                n = os.preadv(direct, [view[done:aligned]], pos + done)
                if n <= 0:
                    break
                done += n
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise ImageError(path, f"cannot read: {e.strerror}") from None
    while done < len(view):
        n = os.preadv(fd, [view[done:]], pos + done)
        if n <= 0:
            raise ImageError(path, f"changed size while read (at byte {pos + done})")
        done += n


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


class _Mapped:
    """A file mapped read-only into the engine with libc mmap, so its raw address is known
    (an iovec base for process_vm_writev; Python's mmap hides it for read-only maps)."""

    def __init__(self, fd: int, size: int) -> None:
        self.size = size
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.address: int = addr

    def view(self) -> memoryview:
        """A memoryview over the mapping; do not use it after close()."""
        return memoryview((ctypes.c_char * self.size).from_address(self.address)).cast("B")

    def close(self) -> None:
        """Unmap (idempotent)."""
        if self.address:
            _libc.munmap(self.address, self.size)
            self.address = 0


#: Most bytes one buffered write(2) of page data gives the page cache. Larger writes get
#: large folios, taken from the high-order free blocks that this VM's free page reporting
#: has handed back to the host: 64 MiB in 2 MiB writes took 17-152 ms (host faults on
#: first touch), in 64 KiB writes 18-20 ms, every time.
BUFFERED_PIECE = 64 << 10


class PagesWriter:
    """A new pages file, page data in pagemap order, each piece written at its offset.

    The dumper reads target memory into reused staging buffers (process_vm_readv) and
    writes views of them here, so page data never passes through Python objects, and sums
    each page of them on the way; the dumped task writes and sums some runs itself
    (selfwrite), which are only recorded here (`claim`).
    Measured on the reference VM for 1 GiB: process_vm_readv straight into a shared
    mapping of the file 3.4 s (a page fault per page), write(2) through the page cache
    2.3 s (fresh page-cache pages are slow to get here), O_DIRECT write(2) 0.8-1.0 s.
    `close()` checks that exactly `nr_pages` pages were written and summed.
    """

    def __init__(self, path: str, fd: int, nr_pages: int, direct: bool = False) -> None:
        self.path = path
        self.fd = fd
        self.nr_pages = nr_pages
        self.direct = direct  # O_DIRECT is on and was seen working (directio.py)
        self.written = 0
        #: the checksum of every page, by file position (for the pagemap)
        self.sums = PageSums(pagecrc.write_algo(), array("I", bytes(4 * nr_pages)))
        self._summed = 0

    def write_at(self, data: memoryview | bytes, offset: int,
                 sums: array[int] | None = None) -> None:
        """Write whole pages at a file offset (pages of runs that others write between
        them), recording their checksums (`sums`, when the caller computed them already:
        the dump does, while the writer thread writes the slot before)."""
        view = memoryview(data).cast("B")
        self._record(offset, pagecrc.sums_of(self.sums.algo, view) if sums is None else sums)
        piece = len(view) if self.direct else BUFFERED_PIECE
        try:
            while view:
                n = os.pwrite(self.fd, view[:piece], offset)
                view = view[n:]
                offset += n
                self.written += n
        except OSError as e:
            raise ImageError(self.path, f"write failed: {e.strerror}", "write") from None

    def claim(self, offset: int, sums: array[int]) -> None:
        """Record pages another process wrote into the file at `offset` (the dumped task
        itself), with the checksums it computed (algorithm: self.sums.algo)."""
        self._record(offset, sums)
        self.written += len(sums) * PAGE_SIZE

    def _record(self, offset: int, sums: array[int]) -> None:
        first = offset // PAGE_SIZE
        self.sums.values[first:first + len(sums)] = sums
        self._summed += len(sums)

    def abort(self) -> None:
        """Close without the size check (the dump failed; the file is discarded)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            close_quietly(fd)

    def close(self) -> None:
        """Close, checking the file holds exactly the announced number of pages."""
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        try:
            size = os.fstat(fd).st_size
        finally:
            close_quietly(fd)
        if (self.written != self.nr_pages * PAGE_SIZE or size != self.written
                or self._summed != self.nr_pages):
            raise ImageError(self.path, f"wrote {self.written} bytes ({size} in the file, "
                                        f"{self._summed} pages summed), expected "
                                        f"{self.nr_pages * PAGE_SIZE}", "write")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


#: The share of a pages file that must be in the page cache for reads to go through it.
_CACHED_SHARE = 0.9


class PagesReader:
    """A pages file mapped read-only, for process_vm_writev or pwrite to /proc/PID/mem."""

    def __init__(self, path: str, fd: int, sums: PageSums) -> None:
        """Take ownership of `fd`, an opened image file (ImageDir.open_file) that must
        hold the pages `sums` has checksums of."""
        self.path = path
        self.sums = sums
        try:
            size = os.fstat(fd).st_size
            if size != len(sums.values) * PAGE_SIZE:
                raise ImageError(path, f"holds {size} bytes, pagemap says "
                                       f"{len(sums.values) * PAGE_SIZE}")
            self.fd = fd
            self._direct = -2  # the O_DIRECT descriptor: -2 not opened yet, -1 refused
            self._map = _Mapped(fd, size) if size else None
        except OSError as e:
            os.close(fd)
            raise ImageError(path, f"cannot map: {e.strerror}") from None
        except BaseException:
            os.close(fd)
            raise

    @property
    def address(self) -> int:
        """Engine address of the first byte (0 for an empty file)."""
        return self._map.address if self._map else 0

    def view(self) -> memoryview:
        """Read-only view of the whole file."""
        return self._map.view() if self._map else memoryview(b"")

    def verify(self, offset: int, address: int, length: int) -> None:
        """Check the file's pages [offset, offset + length), now at engine `address`,
        against their checksums (offset is a page multiple; a partial last page is
        checked whole, so the memory must hold all of it)."""
        whole = (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        _check_sums(self.path, self.sums, offset,
                    pagecrc.sums_at(self.sums.algo, address, whole))

    def check(self, offset: int, sums: array[int]) -> None:
        """Check checksums computed elsewhere (by the task) of pages from `offset`."""
        _check_sums(self.path, self.sums, offset, sums)

    def direct_fd(self) -> int:
        """A descriptor of the file opened with O_DIRECT (on first call), or -1 where the
        filesystem refuses O_DIRECT, the file is in the page cache or is being read into
        it (read_through_cache). Reads through it skip the cache: a large dump writes its
        pages files with O_DIRECT, so they are not cached, and a restore reads them once;
        a cached file (a small dump's) is read where it is, through the mapping."""
        if self._direct == -2:
            if self.cached():
                self._direct = -1
            else:
                # Reopened through our descriptor: the same file, whatever the path is now.
                self._direct = open_direct_read(f"/proc/self/fd/{self.fd}")
        return self._direct

    def read_through_cache(self) -> None:
        """Read the file through the page cache from now on, never with O_DIRECT: the
        restore asked the kernel to read it ahead (restore.pages.prefetch_files), and an
        O_DIRECT read before that read-ahead ends would fetch it from the disk twice (a
        cold maps06-scale restore: +30 ms, one time in three)."""
        if self._direct >= 0:
            close_quietly(self._direct)
        self._direct = -1

    def cached(self) -> bool:
        """Whether (nearly) every page of the file is in the page cache."""
        if self._map is None:
            return True
        resident = ksys.resident_pages(self._map.address, self._map.size)
        return resident >= _CACHED_SHARE * ((self._map.size + PAGE_SIZE - 1) // PAGE_SIZE)

    def read_into(self, address: int, offset: int, length: int) -> None:
        """Read [offset, offset + length) of the file into engine memory at `address`,
        with O_DIRECT when the file allows it (address, offset and length must then be
        page aligned); a read O_DIRECT refuses (EINVAL) is done through the page cache."""
        fd = self.direct_fd()
        if fd < 0:
            fd = self.fd
        view = memoryview((ctypes.c_char * length).from_address(address)).cast("B")
        done = 0
        try:
            while done < length:
                try:
                    n = os.preadv(fd, [view[done:]], offset + done)
                except OSError as e:
                    if e.errno != errno.EINVAL or fd == self.fd:
                        raise
                    fd = self.fd
                    continue
                if n == 0:
                    raise ImageError(self.path, f"ends before byte {offset + done + 1}")
                done += n
        except OSError as e:
            raise ImageError(self.path, f"cannot read: {e.strerror}") from None

    def close(self) -> None:
        """Unmap and close."""
        if self._map:
            self._map.close()
            self._map = None
        if self._direct >= 0:
            close_quietly(self._direct)
        self._direct = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _entries(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
