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
 *   bit  9    rows: run the syscall once per row of six arguments, args[1] rows at
 *             args[0] (each advances args[0] by 48 and counts args[1] down, so at a
 *             failure args[1] is the rows left including the failed one); bits 0-5
 *             and 7 apply to each row
 *   bit 10    child jumps: where the syscall returns 0 (the child of a clone or
 *             fork), the table goes on at entry args[2] with args[3] entries left
 *             (the syscall takes at most two arguments; not for rows), as a child:
 *             it never returns (see child_fail)
 *   bit 11    zero fails: a result of 0 is a failure too (a read at end of file)
 *   bit 12    retry: a failure with EEXIST is retried args[4] times (counted down),
 *             after nanosleep(args[5]) each (e.g. a pid a thread that just ended still
 *             holds; the syscall takes at most four arguments)
 *
 * table_call (below) runs a table the same way as a function called in a task that
 * goes on running afterwards: it returns instead of stopping with int3 (an int3 is a
 * forced SIGTRAP, which resets a blocked or ignored SIGTRAP disposition).
 *
 * After it, page_crcs (see below), callable in the engine and in a task.
 *
 * Rebuild the bytes with: as -o blob.o blob.S && objdump -d blob.o
 */
	.text
	.globl table_runner
table_runner:
	xor %ebp, %ebp		/* ebp 0: end with int3 (ebp 1: return, table_call) */
run_entries:
	test %r13, %r13
	jz done
	mov 56(%r12), %rbx
	lea 8(%r12), %rcx	/* the arguments: the entry's own */
	test $0x200, %ebx
	jz 5f
	cmpq $0, 16(%r12)	/* rows: args[1] rows left */
	je 4f
	mov 8(%r12), %rcx	/* this row's six arguments */
5:	mov 0(%r12), %rax
	mov 0(%rcx), %rdi
	mov 8(%rcx), %rsi
	mov 16(%rcx), %rdx
	mov 24(%rcx), %r10
	mov 32(%rcx), %r8
	mov 40(%rcx), %r9
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
	test $0x400, %ebx
	jz 7f
	test %rax, %rax
	jnz 7f
	mov 32(%r12), %r13	/* the child of a clone: on to its own entries */
	mov 24(%r12), %r12
	mov $2, %ebp		/* a child: fails or ends in child_fail */
	jmp run_entries
	/* unsigned rax >= -4095 is a negative errno */
7:	cmp $-4095, %rax
	jae 8f
	test $0x800, %ebx
	jz 2f
	test %rax, %rax
	jnz 2f
8:	test $0x1000, %ebx
	jz 9f
	cmp $-17, %rax		/* -EEXIST */
	jne 9f
	cmpq $0, 40(%r12)
	je 9f
	decq 40(%r12)
	mov $35, %eax		/* nanosleep(args[5], NULL), then the entry again */
	mov 48(%r12), %rdi
	xor %esi, %esi
	syscall
	jmp run_entries
9:	test $128, %bl
	jz fail
2:	test $64, %bl
	jz 3f
	mov %rax, %r14
3:	test $0x100, %ebx
	jz 6f
	mov %rbx, %rcx
	shr $32, %rcx
	mov %rax, (%r15,%rcx)
6:	test $0x200, %ebx
	jz 4f
	addq $48, 8(%r12)	/* the next row of this entry */
	decq 16(%r12)
	jmp run_entries
4:	add $64, %r12
	dec %r13
	jmp run_entries
fail:
	cmp $2, %ebp
	je child_fail
	test %ebp, %ebp
	jnz table_return
	int3
done:
	cmp $2, %ebp
	je child_fail
	test %ebp, %ebp
	jnz table_return
	int3
/*
 * A child of a jumping entry does not return where its parent called the table (the
 * caller's memory may not be there: MADV_DONTFORK). Where one of its entries fails (or,
 * which its table should never let happen, it runs to the end) it writes that entry's
 * report and exits with status 1. At r15: u64 the fd to write to, u64 the address of
 * an array of report addresses (one per entry, then one for the end), u64 the address
 * of entry 0. A report: u64 magic, i64 result, u64 rows left, u64 its length, text;
 * the first two u64 after the magic are filled in here (the child's own copy).
 */
child_fail:
	mov %r12, %rcx
	sub 16(%r15), %rcx
	shr $6, %rcx		/* the entry's index */
	mov 8(%r15), %rdx
	mov (%rdx,%rcx,8), %rsi
	mov %rax, 8(%rsi)
	mov 16(%r12), %rdx
	mov %rdx, 16(%rsi)
	mov 24(%rsi), %rdx
	mov (%r15), %rdi
	mov $1, %eax		/* write(fd, report, length) */
	syscall
	mov $231, %eax		/* exit_group(1) */
	mov $1, %edi
	syscall
table_return:
	pop %rcx
	mov %r13, (%rcx)	/* entries left, 0 when all ran */
	mov %rax, 8(%rcx)	/* the last result (a failed entry's -errno) */
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %rbp
	pop %rbx
	ret

/*
 * void table_call(entries, count, base, status)   (SysV ABI: rdi rsi rdx rcx)
 * Runs `count` entries at `entries` as table_runner does (r15 = base for the result
 * slots), then stores u64 entries left (0: all ran; else the failed one's and those after
 * it) and u64 last result at `status`, and returns. Needs 64 bytes of stack; keeps rbx,
 * rbp and r12-r15 (crc_return's registers, for a task whose tracer died meanwhile).
 * Not .globl: table_notify's call to a global symbol would be left to a linker (there is
 * none: the bytes are taken as they are).
 */
table_call:
	push %rbx
	push %rbp
	push %r12
	push %r13
	push %r14
	push %r15
	push %rcx
	mov %rdi, %r12
	mov %rsi, %r13
	mov %rdx, %r15
	xor %r14d, %r14d
	mov $1, %ebp
	jmp run_entries

/*
 * void page_crcs(u32 *out, const void *pages, u64 npages)
 * out[i] = CRC32C (Castagnoli; initial and final xor ~0) of the i-th 4096-byte page.
 * Three pages at a time: three independent crc32 chains hide the instruction's latency;
 * a cache line of each per round, prefetching the next three pages' (the hardware
 * prefetcher stops at each 4 KiB page: 15-25% faster on the reference VM).
 * SysV ABI, needs SSE4.2; clobbers rax rcx rdx rsi rdi r8 r9 and nothing in memory but
 * out. The engine calls it through ctypes; in a task it returns to crc_return.
 */
	.globl page_crcs
page_crcs:
	cmp $3, %rdx
	jb 2f
1:	mov $-1, %eax
	mov $-1, %ecx
	mov $-1, %r8d
	xor %r9d, %r9d
3:	prefetcht0 12288(%rsi,%r9)
	prefetcht0 16384(%rsi,%r9)
	prefetcht0 20480(%rsi,%r9)
	crc32q (%rsi,%r9), %rax
	crc32q 4096(%rsi,%r9), %rcx
	crc32q 8192(%rsi,%r9), %r8
	crc32q 8(%rsi,%r9), %rax
	crc32q 4104(%rsi,%r9), %rcx
	crc32q 8200(%rsi,%r9), %r8
	crc32q 16(%rsi,%r9), %rax
	crc32q 4112(%rsi,%r9), %rcx
	crc32q 8208(%rsi,%r9), %r8
	crc32q 24(%rsi,%r9), %rax
	crc32q 4120(%rsi,%r9), %rcx
	crc32q 8216(%rsi,%r9), %r8
	crc32q 32(%rsi,%r9), %rax
	crc32q 4128(%rsi,%r9), %rcx
	crc32q 8224(%rsi,%r9), %r8
	crc32q 40(%rsi,%r9), %rax
	crc32q 4136(%rsi,%r9), %rcx
	crc32q 8232(%rsi,%r9), %r8
	crc32q 48(%rsi,%r9), %rax
	crc32q 4144(%rsi,%r9), %rcx
	crc32q 8240(%rsi,%r9), %r8
	crc32q 56(%rsi,%r9), %rax
	crc32q 4152(%rsi,%r9), %rcx
	crc32q 8248(%rsi,%r9), %r8
	add $64, %r9
	cmp $4096, %r9
	jb 3b
	not %eax
	not %ecx
	not %r8d
	mov %eax, (%rdi)
	mov %ecx, 4(%rdi)
	mov %r8d, 8(%rdi)
	add $12, %rdi
	add $12288, %rsi
	sub $3, %rdx
	cmp $3, %rdx
	jae 1b
2:	test %rdx, %rdx
	jz 5f
	mov $-1, %eax
	xor %r9d, %r9d
4:	crc32q (%rsi,%r9), %rax
	add $8, %r9
	cmp $4096, %r9
	jb 4b
	not %eax
	mov %eax, (%rdi)
	add $4, %rdi
	add $4096, %rsi
	dec %rdx
	jmp 2b
5:	ret

/*
 * table_notify(entries, count, base, status, sock, peer)   (SysV ABI: rdi rsi rdx rcx r8 r9)
 * close(peer), the task's copy of the socket's other end, which its tracer also holds;
 * table_call, then the status (16 bytes) is sent on the stream socket `sock`, and the
 * task waits in read(sock) for its tracer, which stops it there (PTRACE_INTERRUPT) and
 * takes it back: the tracer runs the task freely meanwhile (PTRACE_CONT), so it does not
 * stop at each syscall of the table. Should the tracer die, the send fails quietly and the
 * read ends (end of file: the tracer held the other end) and the routine returns to
 * crc_return. 80 bytes of stack.
 */
	.globl table_notify
table_notify:
	push %r8
	push %rcx
	push %rdi
	push %rsi
	push %rdx
	mov $3, %eax		/* close(peer): only the tracer holds that end now */
	mov %r9, %rdi
	syscall
	pop %rdx
	pop %rsi
	pop %rdi
	mov (%rsp), %rcx	/* status (the syscall took rcx) */
	call table_call
	mov (%rsp), %rsi
	mov 8(%rsp), %rdi
	mov $16, %edx
	mov $0x4000, %r10d	/* MSG_NOSIGNAL: no SIGPIPE (kept pending, then fatal) */
	xor %r8d, %r8d
	xor %r9d, %r9d
	mov $44, %eax		/* sendto(sock, status, 16, MSG_NOSIGNAL, NULL, 0) */
	syscall
	mov (%rsp), %rsi
	mov 8(%rsp), %rdi
	mov $1, %edx
	xor %eax, %eax		/* read(sock, status, 1): the tracer stops the task here */
	syscall
	add $16, %rsp
	ret

/*
 * crc_return: page_crcs and table_notify return here in a task, and injected syscalls too
 * while this code is mapped there (engine/dump/selfwrite.py, engine/kernel/intask.py). Its
 * first close gives the tracer a syscall entry stop (no trap signal is raised), where it
 * skips the call or turns it into the one it injects. A task whose tracer died runs on: it
 * closes fds r12 and rbp (-1: none), unmaps [r13, r13 + r14) (this code's own mapping)
 * through the `syscall; ret` at rbx (libc's) with rsp = r15, the signal frame whose
 * restorer that `ret` takes: rt_sigreturn puts the task back as it was
 * (engine/kernel/sigframe.py).
 */
crc_pair_return:	/* injected syscalls' entry around a socketpair: the fds it wrote */
	movslq 4096(%r13), %r12	/* at the start of the page after this code (-1 -1 before) */
	movslq 4100(%r13), %rbp
	jmp crc_return
crc_open_return:
	mov %rax, %r12	/* the fd an open just returned (injected syscalls' entry) */
crc_return:
	mov $3, %eax
	mov %r12, %rdi
	syscall
	mov $3, %eax
	mov %rbp, %rdi
	syscall
	mov $11, %eax
	mov %r13, %rdi
	mov %r14, %rsi
	mov %r15, %rsp
	jmp *%rbx

/*
 * table_signal(entries, count, base, status, sig)   (SysV ABI: rdi rsi rdx rcx r8)
 * table_call, then tkill(gettid(), sig), then returns to crc_return. The tracer runs the
 * task freely meanwhile (PTRACE_CONT) and takes it back at the signal's delivery stop;
 * `sig` is one the task ignores and does not block, so a task whose tracer died meanwhile
 * drops it and goes home. 16 bytes of stack above table_call's.
 */
	.globl table_signal
table_signal:
	push %r8
	call table_call
	mov $186, %eax		/* gettid: the tid as the task's pid namespace knows it */
	syscall
	mov %eax, %edi
	pop %rsi
	mov $200, %eax		/* tkill(tid, sig): the tracer stops the task here */
	syscall
	ret
