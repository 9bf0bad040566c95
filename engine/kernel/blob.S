/*
 * In-target syscall table runner (source of engine/kernel/blob.py:CODE).
 *
 * The engine maps this code into a stopped tracee, writes a table of entries after it
 * and sets the registers below, then PTRACE_CONTs the task.  The routine runs every entry
 * and stops with int3 at `done` (r13 == 0) or at `fail` on the first entry whose result is
 * a negative errno (r13 = entries left including the failed one, rax = the result).
 * It touches no stack and no memory except the table and the result slots.
 *
 *   r12  address of the current entry       r13  entries left
 *   r14  saved value (see flag bit 6)        r15  region base (see flag bit 8)
 *
 * Entry (64 bytes): u64 nr, u64 args[6], u64 flags
 *   bits 0-5  replace args[i] with r14 (e.g. the fd of a previous open)
 *   bit  6    save the result in r14
 *   bit  7    a failure of this entry is not fatal
 *   bit  8    store the result as u64 at r15 + (flags >> 32)
 *
 * Rebuild the bytes with: as -o blob.o blob.S && objdump -d blob.o
 */
	.text
	.globl table_runner
table_runner:
	test %r13, %r13
	jz done
	mov 0(%r12), %rax
	mov 8(%r12), %rdi
	mov 16(%r12), %rsi
	mov 24(%r12), %rdx
	mov 32(%r12), %r10
	mov 40(%r12), %r8
	mov 48(%r12), %r9
	mov 56(%r12), %rbx
	test $1, %bl
	jz 1f
	mov %r14, %rdi
1:	test $2, %bl
	jz 1f
	mov %r14, %rsi
1:	test $4, %bl
	jz 1f
	mov %r14, %rdx
1:	test $8, %bl
	jz 1f
	mov %r14, %r10
1:	test $16, %bl
	jz 1f
	mov %r14, %r8
1:	test $32, %bl
	jz 1f
	mov %r14, %r9
1:	syscall
	/* unsigned rax >= -4095 is a negative errno */
	cmp $-4095, %rax
	jb 2f
	test $128, %bl
	jz fail
2:	test $64, %bl
	jz 3f
	mov %rax, %r14
3:	test $0x100, %ebx
	jz 4f
	mov %rbx, %rcx
	shr $32, %rcx
	mov %rax, (%r15,%rcx)
4:	add $64, %r12
	dec %r13
	jmp table_runner
fail:
	int3
done:
	int3
