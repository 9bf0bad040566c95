"""engine/kernel/uapi.py and structs.py against the installed kernel headers (6.1), and
the newer uapi (PAGEMAP_SCAN, WP_ASYNC) against the kernel's own encoding macros."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import pytest

from engine.kernel import structs, uapi

# name in C -> name in uapi (same unless given)
_CONSTANTS = [
    "PTRACE_SEIZE", "PTRACE_INTERRUPT", "PTRACE_LISTEN", "PTRACE_GETREGSET",
    "PTRACE_SETREGSET", "PTRACE_PEEKSIGINFO", "PTRACE_GETSIGMASK", "PTRACE_SETSIGMASK",
    "PTRACE_GET_RSEQ_CONFIGURATION", "PTRACE_GET_SYSCALL_INFO", "PTRACE_O_TRACESYSGOOD",
    "PTRACE_O_EXITKILL", "PTRACE_EVENT_STOP", "PTRACE_PEEKSIGINFO_SHARED", "NT_X86_XSTATE",
    "NT_PRSTATUS", "UFFDIO_API", "UFFDIO_REGISTER", "UFFDIO_UNREGISTER", "UFFDIO_WAKE",
    "UFFDIO_COPY", "UFFDIO_ZEROPAGE", "UFFDIO_WRITEPROTECT", "UFFDIO_CONTINUE",
    "UFFD_FEATURE_WP_HUGETLBFS_SHMEM", "UFFD_FEATURE_EXACT_ADDRESS", "UFFD_USER_MODE_ONLY",
    "UFFDIO_REGISTER_MODE_WP", "USERFAULTFD_IOC_NEW", "CLONE_NEWTIME", "CLONE_PIDFD",
    "CLONE_INTO_CGROUP", "CLONE_CLEAR_SIGHAND", "CLONE_ARGS_SIZE_VER2", "MAP_GROWSDOWN",
    "MAP_FIXED_NOREPLACE", "MAP_SHARED_VALIDATE", "MREMAP_DONTUNMAP", "MADV_POPULATE_WRITE",
"PR_SET_MM_MAP", "PR_SET_MM_MAP_SIZE", "PR_SET_CHILD_SUBREAPER",
    "RSEQ_FLAG_UNREGISTER", "ARCH_SET_FS",
    "ARCH_MAP_VDSO_64", "F_GETPIPE_SZ", "O_TMPFILE", "SEEK_HOLE", "FIONREAD",
    "MFD_ALLOW_SEALING", "CLOSE_RANGE_CLOEXEC", "AT_SYSINFO_EHDR",
    "AT_MINSIGSTKSZ",
]

_SIZES = {
    "struct user_regs_struct": structs.UserRegs,
    "struct clone_args": structs.CloneArgs,
    "struct prctl_mm_map": structs.PrctlMmMap,
    "struct ptrace_rseq_configuration": structs.RseqConfig,
    "struct ptrace_peeksiginfo_args": structs.PeekSiginfoArgs,
    "siginfo_t": structs.SigInfo,
    "stack_t": structs.StackT,
    "struct iovec": structs.Iovec,
    "struct uffdio_api": structs.UffdioApi,
    "struct uffdio_register": structs.UffdioRegister,
    "struct uffdio_copy": structs.UffdioCopy,
    "struct uffdio_zeropage": structs.UffdioZeropage,
    "struct uffdio_writeprotect": structs.UffdioWriteprotect,
    "struct uffd_msg": structs.UffdMsg,
}

_OFFSETS = [("struct user_regs_struct", name) for name in
            ("orig_rax", "rip", "rsp", "eflags", "fs_base", "gs_base", "r10", "gs")]

_HEADERS = """
#define _GNU_SOURCE
#include <stdio.h>
#include <stddef.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/mman.h>
#include <asm/prctl.h>
#include <linux/auxvec.h>
#include <linux/close_range.h>
#include <linux/elf.h>
#include <linux/memfd.h>
#include <linux/prctl.h>
#include <linux/ptrace.h>
#include <linux/rseq.h>
#include <linux/sched.h>
#include <linux/userfaultfd.h>
#include <asm/unistd_64.h>

/* struct pm_scan_arg of linux/fs.h 6.7+ (not in the installed headers) */
struct pm_scan_arg {
    unsigned long long size, flags, start, end, walk_end, vec, vec_len, max_pages,
        category_inverted, category_mask, category_anyof_mask, return_mask;
};
"""


@pytest.fixture(scope="module")
def header_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Compile and run a C program printing every value as ``name value``."""
    lines = [_HEADERS, "int main(void) {"]
    for c in _CONSTANTS:
        lines.append(f'  printf("{c} %llu\\n", (unsigned long long)({c}));')
    for c in _SIZES:
        lines.append(f'  printf("sizeof {c} %zu\\n", sizeof({c}));')
    for s, f in _OFFSETS:
        lines.append(f'  printf("offsetof {f} %zu\\n", offsetof({s}, {f}));')
    for name in uapi.NR:
        if uapi.NR[name] <= 450:
            lines.append(f"#ifdef __NR_{name}\n"
                         f'  printf("NR {name} %d\\n", __NR_{name});\n#endif')
    lines.append('  printf("PAGEMAP_SCAN %lu\\n", (unsigned long)_IOWR(\'f\', 16, '
                 'struct pm_scan_arg));')
    lines.append("  return 0;\n}")
    d: Path = tmp_path_factory.mktemp("uapi")
    (d / "u.c").write_text("\n".join(lines))
    subprocess.run(["gcc", "-o", str(d / "u"), str(d / "u.c")], check=True, timeout=60)
    out = subprocess.run([str(d / "u")], check=True, timeout=30, capture_output=True,
                         text=True).stdout
    values: dict[str, int] = {}
    for line in out.splitlines():
        key, _, val = line.rpartition(" ")
        values[key] = int(val)
    return values


def test_constants_match_headers(header_values: dict[str, int]) -> None:
    wrong = {c: (getattr(uapi, c), header_values[c]) for c in _CONSTANTS
             if getattr(uapi, c) & (2**64 - 1) != header_values[c]}
    assert not wrong


def test_syscall_numbers_match_headers(header_values: dict[str, int]) -> None:
    seen = {k[3:]: v for k, v in header_values.items() if k.startswith("NR ")}
    assert len(seen) > 300
    assert {k: uapi.NR[k] for k in seen if uapi.NR[k] != seen[k]} == {}
    # the later ones we carry ourselves (asm/unistd_64.h of 6.18)
    assert (uapi.SYS_cachestat, uapi.SYS_map_shadow_stack, uapi.SYS_mseal) == (451, 453, 462)


def test_struct_sizes_and_offsets(header_values: dict[str, int]) -> None:
    for cname, cls in _SIZES.items():
        assert ctypes.sizeof(cls) == header_values[f"sizeof {cname}"], cname
    for _, field in _OFFSETS:
        assert getattr(structs.UserRegs, field).offset == header_values[f"offsetof {field}"]


def test_newer_uapi_encodings(header_values: dict[str, int]) -> None:
    """Values the 6.1 headers lack, against the kernel's _IOWR and documented bits."""
    assert uapi.PAGEMAP_SCAN == header_values["PAGEMAP_SCAN"] == 0xC0606610
    assert ctypes.sizeof(structs.PmScanArg) == 96
    assert (uapi.UFFD_FEATURE_WP_UNPOPULATED, uapi.UFFD_FEATURE_WP_ASYNC) == (1 << 13, 1 << 15)
    assert uapi.PAGE_IS_WRITTEN == 2 and uapi.PM_SCAN_CHECK_WPASYNC == 2
    assert uapi.NR["pidfd_getfd"] == uapi.SYS_pidfd_getfd == 438
