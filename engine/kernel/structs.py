"""ctypes mirrors of the kernel structures the engine passes to syscalls (x86_64 layout).

Sizes are asserted at import time against the kernel's sizeof(), so a wrong field order
fails loudly instead of corrupting a target.
"""

from __future__ import annotations

import ctypes

from engine.kernel import uapi

u8 = ctypes.c_uint8
u16 = ctypes.c_uint16
u32 = ctypes.c_uint32
s32 = ctypes.c_int32
u64 = ctypes.c_uint64
s64 = ctypes.c_int64


class UserRegs(ctypes.Structure):
    """struct user_regs_struct (asm/user_64.h): what PTRACE_GETREGS/NT_PRSTATUS return."""

    _fields_ = [
        ("r15", u64), ("r14", u64), ("r13", u64), ("r12", u64),
        ("rbp", u64), ("rbx", u64), ("r11", u64), ("r10", u64),
        ("r9", u64), ("r8", u64), ("rax", u64), ("rcx", u64),
        ("rdx", u64), ("rsi", u64), ("rdi", u64), ("orig_rax", u64),
        ("rip", u64), ("cs", u64), ("eflags", u64), ("rsp", u64),
        ("ss", u64), ("fs_base", u64), ("gs_base", u64), ("ds", u64),
        ("es", u64), ("fs", u64), ("gs", u64),
    ]

    def copy(self) -> UserRegs:
        """Return an independent copy (ctypes assignment would alias the buffer)."""
        return UserRegs.from_buffer_copy(self)

    def to_dict(self) -> dict[str, int]:
        """All registers by name, as unsigned integers (for JSON images)."""
        return {name: getattr(self, name) for name, *_ in self._fields_}

    @classmethod
    def from_dict(cls, values: dict[str, int]) -> UserRegs:
        """Build from to_dict() output; a missing register is an error (KeyError)."""
        regs = cls()
        for name, *_ in cls._fields_:
            setattr(regs, name, values[name] & 0xFFFFFFFFFFFFFFFF)
        return regs

    def signed(self, name: str) -> int:
        """A register as a signed 64-bit value (rax after a syscall, orig_rax)."""
        value = int(getattr(self, name))
        return value - (1 << 64) if value >= (1 << 63) else value


class Iovec(ctypes.Structure):
    """struct iovec."""

    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class PmScanArg(ctypes.Structure):
    """struct pm_scan_arg (linux/fs.h) for the PAGEMAP_SCAN ioctl."""

    _fields_ = [
        ("size", u64), ("flags", u64), ("start", u64), ("end", u64), ("walk_end", u64),
        ("vec", u64), ("vec_len", u64), ("max_pages", u64), ("category_inverted", u64),
        ("category_mask", u64), ("category_anyof_mask", u64), ("return_mask", u64),
    ]


class ProcmapQuery(ctypes.Structure):
    """struct procmap_query (linux/fs.h) for the PROCMAP_QUERY ioctl."""

    _fields_ = [
        ("size", u64), ("query_flags", u64), ("query_addr", u64), ("vma_start", u64),
        ("vma_end", u64), ("vma_flags", u64), ("vma_page_size", u64), ("vma_offset", u64),
        ("inode", u64), ("dev_major", u32), ("dev_minor", u32), ("vma_name_size", u32),
        ("build_id_size", u32), ("vma_name_addr", u64), ("build_id_addr", u64),
    ]


class PageRegion(ctypes.Structure):
    """struct page_region: one output run of PAGEMAP_SCAN, [start, end) with categories."""

    _fields_ = [("start", u64), ("end", u64), ("categories", u64)]


class CloneArgs(ctypes.Structure):
    """struct clone_args (linux/sched.h), version 2 (with cgroup)."""

    _fields_ = [
        ("flags", u64), ("pidfd", u64), ("child_tid", u64), ("parent_tid", u64),
        ("exit_signal", u64), ("stack", u64), ("stack_size", u64), ("tls", u64),
        ("set_tid", u64), ("set_tid_size", u64), ("cgroup", u64),
    ]


class RseqConfig(ctypes.Structure):
    """struct ptrace_rseq_configuration (PTRACE_GET_RSEQ_CONFIGURATION)."""

    _fields_ = [
        ("rseq_abi_pointer", u64), ("rseq_abi_size", u32), ("signature", u32),
        ("flags", u32), ("pad", u32),
    ]


class PrctlMmMap(ctypes.Structure):
    """struct prctl_mm_map (linux/prctl.h) for prctl(PR_SET_MM, PR_SET_MM_MAP)."""

    _fields_ = [
        ("start_code", u64), ("end_code", u64), ("start_data", u64), ("end_data", u64),
        ("start_brk", u64), ("brk", u64), ("start_stack", u64), ("arg_start", u64),
        ("arg_end", u64), ("env_start", u64), ("env_end", u64), ("auxv", u64),
        ("auxv_size", u32), ("exe_fd", u32),
    ]


class SigInfo(ctypes.Structure):
    """siginfo_t (128 bytes): the common header plus the raw union (kept byte-exact)."""

    _fields_ = [
        ("si_signo", s32), ("si_errno", s32), ("si_code", s32), ("_pad0", s32),
        ("_union", u8 * (uapi.SIGINFO_SIZE - 16)),
    ]


class PeekSiginfoArgs(ctypes.Structure):
    """struct ptrace_peeksiginfo_args."""

    _fields_ = [("off", u64), ("flags", u32), ("nr", s32)]


class KSigaction(ctypes.Structure):
    """The kernel's struct sigaction for rt_sigaction on x86_64 (not glibc's layout)."""

    _fields_ = [("handler", u64), ("flags", u64), ("restorer", u64), ("mask", u64)]


class StackT(ctypes.Structure):
    """stack_t for sigaltstack."""

    _fields_ = [("ss_sp", u64), ("ss_flags", s32), ("_pad", s32), ("ss_size", u64)]


class UffdioApi(ctypes.Structure):
    """struct uffdio_api."""

    _fields_ = [("api", u64), ("features", u64), ("ioctls", u64)]


class UffdioRange(ctypes.Structure):
    """struct uffdio_range."""

    _fields_ = [("start", u64), ("len", u64)]


class UffdioRegister(ctypes.Structure):
    """struct uffdio_register."""

    _fields_ = [("range", UffdioRange), ("mode", u64), ("ioctls", u64)]


class UffdioWriteprotect(ctypes.Structure):
    """struct uffdio_writeprotect."""

    _fields_ = [("range", UffdioRange), ("mode", u64)]


class UffdioCopy(ctypes.Structure):
    """struct uffdio_copy; ``copy`` receives bytes copied or a negative errno."""

    _fields_ = [("dst", u64), ("src", u64), ("len", u64), ("mode", u64), ("copy", s64)]


class UffdioZeropage(ctypes.Structure):
    """struct uffdio_zeropage."""

    _fields_ = [("range", UffdioRange), ("mode", u64), ("zeropage", s64)]


class UffdMsg(ctypes.Structure):
    """struct uffd_msg (32 bytes); for UFFD_EVENT_PAGEFAULT arg is (flags, address, ptid)."""

    _fields_ = [
        ("event", u8), ("reserved1", u8), ("reserved2", u16), ("reserved3", u32),
        ("pf_flags", u64), ("pf_address", u64), ("pf_ptid", u32), ("_pad", u32),
    ]


class IpcPerm(ctypes.Structure):
    """struct ipc64_perm (asm-generic/ipcbuf.h): owner, creator and mode of a SysV object."""

    _fields_ = [("key", s32), ("uid", u32), ("gid", u32), ("cuid", u32), ("cgid", u32),
                ("mode", u32), ("seq", u16), ("_pad2", u16), ("_unused1", u64),
                ("_unused2", u64)]


class ShmidDs(ctypes.Structure):
    """struct shmid64_ds (asm-generic/shmbuf.h, 64-bit)."""

    _fields_ = [("perm", IpcPerm), ("segsz", u64), ("atime", s64), ("dtime", s64),
                ("ctime", s64), ("cpid", s32), ("lpid", s32), ("nattch", u64),
                ("_unused4", u64), ("_unused5", u64)]


class SemidDs(ctypes.Structure):
    """struct semid64_ds (x86_64 asm/sembuf.h)."""

    _fields_ = [("perm", IpcPerm), ("otime", s64), ("_unused1", u64), ("ctime", s64),
                ("_unused2", u64), ("nsems", u64), ("_unused3", u64), ("_unused4", u64)]


class MsqidDs(ctypes.Structure):
    """struct msqid64_ds (asm-generic/msgbuf.h, 64-bit)."""

    _fields_ = [("perm", IpcPerm), ("stime", s64), ("rtime", s64), ("ctime", s64),
                ("cbytes", u64), ("qnum", u64), ("qbytes", u64), ("lspid", s32),
                ("lrpid", s32), ("_unused4", u64), ("_unused5", u64)]


class SemBuf(ctypes.Structure):
    """struct sembuf: one semop() operation."""

    _fields_ = [("num", u16), ("op", ctypes.c_int16), ("flg", ctypes.c_int16)]


class MqAttr(ctypes.Structure):
    """struct mq_attr (linux/mqueue.h)."""

    _fields_ = [("flags", s64), ("maxmsg", s64), ("msgsize", s64), ("curmsgs", s64),
                ("_reserved", s64 * 4)]


def _check_sizes() -> None:
    expected = {
        UserRegs: 27 * 8, Iovec: 16, PmScanArg: uapi.PM_SCAN_ARG_SIZE, PageRegion: 24,
        ProcmapQuery: uapi.PROCMAP_QUERY_SIZE,
        CloneArgs: uapi.CLONE_ARGS_SIZE_VER2, RseqConfig: 24,
        PrctlMmMap: uapi.PRCTL_MM_MAP_SIZE, SigInfo: uapi.SIGINFO_SIZE, PeekSiginfoArgs: 16,
        KSigaction: 32, StackT: 24, UffdioApi: uapi.UFFDIO_API_SIZE,
        UffdioRegister: uapi.UFFDIO_REGISTER_SIZE,
        UffdioWriteprotect: uapi.UFFDIO_WRITEPROTECT_SIZE, UffdioCopy: uapi.UFFDIO_COPY_SIZE,
        UffdioZeropage: uapi.UFFDIO_ZEROPAGE_SIZE, UffdMsg: uapi.UFFD_MSG_SIZE,
        IpcPerm: 48, ShmidDs: 112, SemidDs: 104, MsqidDs: 120, SemBuf: 6, MqAttr: 64,
    }
    for cls, size in expected.items():
        if ctypes.sizeof(cls) != size:
            raise AssertionError(f"{cls.__name__}: sizeof {ctypes.sizeof(cls)} != {size}")


_check_sizes()
