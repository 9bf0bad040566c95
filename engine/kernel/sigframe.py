"""A signal frame that puts a task back as it was, for injection that survives the engine.

The injector writes, below the task's stack pointer (past the 128-byte red zone, where a
signal handler's frame would go: nothing there belongs to the program), an x86_64
`struct rt_sigframe` holding the task's own registers, FPU/extended state and signal mask.
Every injected syscall then runs with rsp just above that frame and returns into a
`mov $15, %(e)ax; syscall` (libc's __restore_rt, found in the task's code): while the
engine lives, it catches each syscall's stops and never lets that rt_sigreturn run; if it
dies (SIGKILL), the task returns into it and rt_sigreturn restores everything itself.

A syscall the task was stopped in is rewound as the kernel does when no handler runs
(re-executed, or restart_syscall for ERESTART_RESTARTBLOCK, whose restart block the task
still holds), since rt_sigreturn clears the kernel's restart state.
"""

from __future__ import annotations

import struct

from engine.kernel import uapi
from engine.kernel.structs import UserRegs

RED_ZONE = 128
_UC_FLAGS = 0x1 | 0x2 | 0x4  # UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS
# uc_stack.ss_flags: an invalid mode (not 0, SS_ONSTACK or SS_DISABLE), so rt_sigreturn's
# restore_altstack leaves the task's alternate signal stack as it is (EINVAL, ignored)
_KEEP_ALTSTACK = 4
_FP_XSTATE_MAGIC1 = 0x46505853
_FP_XSTATE_MAGIC2 = 0x46505845
# struct _fpx_sw_bytes inside the legacy FXSAVE area, where ptrace's copy holds XCR0
_SW_BYTES = 464
_SW = struct.Struct("<IIQI")  # magic1, extended_size, xfeatures, xstate_size
_XSAVE_MIN = 576  # legacy area and XSAVE header
# pretcode, uc_flags, uc_link, uc_stack (sp, flags, size), sigcontext (32 u64: r8..r15,
# rdi rsi rbp rbx rdx rax rcx rsp rip eflags, cs gs fs ss as u16, err trapno oldmask cr2
# fpstate, 8 reserved), uc_sigmask; then siginfo (128 bytes)
_HEAD = struct.Struct("<QQQQi4xQ" + "Q" * 18 + "HHHH" + "QQQQQ" + "8Q" + "Q")
_SIGINFO = 128
FRAME_BYTES = _HEAD.size + _SIGINFO
#: where a restorer sequence (`mov $15, %rax; syscall` or `mov $15, %eax; syscall`) ends
RESTORERS = (b"\x48\xc7\xc0\x0f\x00\x00\x00\x0f\x05", b"\xb8\x0f\x00\x00\x00\x0f\x05")


class Frame:
    """A frame for one thread: where it goes and its bytes."""

    def __init__(self, regs: UserRegs, xstate: bytes, mask: int, restorer: int) -> None:
        """`xstate` as PTRACE_GETREGSET NT_X86_XSTATE gives it; raise ValueError when it
        is too short to be an XSAVE area."""
        if len(xstate) < _XSAVE_MIN:
            raise ValueError(f"xstate of {len(xstate)} bytes")
        # the software bytes rt_sigreturn checks (ptrace leaves XCR0 in their place)
        fp = bytearray(xstate)
        xcr0 = int.from_bytes(fp[_SW_BYTES:_SW_BYTES + 8], "little")
        _SW.pack_into(fp, _SW_BYTES, _FP_XSTATE_MAGIC1, len(fp) + 4, xcr0, len(fp))
        self.restorer = restorer
        self.fpstate = (regs.rsp - RED_ZONE - len(xstate) - 4) & ~63
        # frame + 8 is 16-byte aligned, as at a function's entry (like the kernel's)
        self.address = ((self.fpstate - FRAME_BYTES) & ~15) - 8
        r = _resumed(regs)
        head = _HEAD.pack(
            restorer, _UC_FLAGS, 0, 0, _KEEP_ALTSTACK, 0,
            r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15,
            r.rdi, r.rsi, r.rbp, r.rbx, r.rdx, r.rax, r.rcx, r.rsp, r.rip, r.eflags,
            r.cs, 0, 0, r.ss, 0, 0, 0, 0, self.fpstate, *([0] * 8), mask)
        gap = self.fpstate - (self.address + FRAME_BYTES)
        self.data = head + bytes(_SIGINFO + gap) + fp + _FP_XSTATE_MAGIC2.to_bytes(4, "little")

    @property
    def sp(self) -> int:
        """The stack pointer injected code runs with: rt_sigreturn reads the frame at
        rsp - 8 (the slot of the return address a handler's `ret` popped)."""
        return int(self.address + 8)


def _resumed(regs: UserRegs) -> UserRegs:
    """Registers as the task must resume them without the kernel's restart handling."""
    out = regs.copy()
    if out.signed("orig_rax") < 0:
        return out
    err = -out.signed("rax")
    if err in (uapi.ERESTARTSYS, uapi.ERESTARTNOINTR, uapi.ERESTARTNOHAND):
        out.rax, out.rip = out.orig_rax, out.rip - 2
    elif err == uapi.ERESTART_RESTARTBLOCK:
        out.rax, out.rip = uapi.SYS_restart_syscall, out.rip - 2
    return out
