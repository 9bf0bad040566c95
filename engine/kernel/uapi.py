"""Every kernel constant the engine uses, written once (x86_64, uapi up to Linux 6.18).

The installed headers are 6.1, so newer values (PAGEMAP_SCAN, UFFD_FEATURE_WP_ASYNC,
the syscalls after 450, ...) are carried here from the kernel's uapi headers.
Names follow the kernel's spelling so they can be grepped against the headers.
"""

from __future__ import annotations

PAGE_SIZE = 4096
PAGE_SHIFT = 12


def _ioc(direction: int, typ: int, nr: int, size: int) -> int:
    """Encode an ioctl number like the kernel's _IOC() macro (asm-generic/ioctl.h)."""
    return (direction << 30) | (size << 16) | (typ << 8) | nr


_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2

# ---------------------------------------------------------------------------------------
# Syscall numbers (asm/unistd_64.h of 6.1 plus later additions up to 6.18).
# ---------------------------------------------------------------------------------------
SYS_read = 0
SYS_write = 1
SYS_open = 2
SYS_close = 3
SYS_stat = 4
SYS_fstat = 5
SYS_lstat = 6
SYS_poll = 7
SYS_lseek = 8
SYS_mmap = 9
SYS_mprotect = 10
SYS_munmap = 11
SYS_brk = 12
SYS_rt_sigaction = 13
SYS_rt_sigprocmask = 14
SYS_rt_sigreturn = 15
SYS_ioctl = 16
SYS_pread64 = 17
SYS_pwrite64 = 18
SYS_readv = 19
SYS_writev = 20
SYS_access = 21
SYS_pipe = 22
SYS_select = 23
SYS_sched_yield = 24
SYS_mremap = 25
SYS_msync = 26
SYS_mincore = 27
SYS_madvise = 28
SYS_shmget = 29
SYS_shmat = 30
SYS_shmctl = 31
SYS_dup = 32
SYS_dup2 = 33
SYS_pause = 34
SYS_nanosleep = 35
SYS_getitimer = 36
SYS_alarm = 37
SYS_setitimer = 38
SYS_getpid = 39
SYS_sendfile = 40
SYS_socket = 41
SYS_connect = 42
SYS_accept = 43
SYS_sendto = 44
SYS_recvfrom = 45
SYS_sendmsg = 46
SYS_recvmsg = 47
SYS_shutdown = 48
SYS_bind = 49
SYS_listen = 50
SYS_getsockname = 51
SYS_getpeername = 52
SYS_socketpair = 53
SYS_setsockopt = 54
SYS_getsockopt = 55
SYS_clone = 56
SYS_fork = 57
SYS_vfork = 58
SYS_execve = 59
SYS_exit = 60
SYS_wait4 = 61
SYS_kill = 62
SYS_uname = 63
SYS_semget = 64
SYS_semop = 65
SYS_semctl = 66
SYS_shmdt = 67
SYS_msgget = 68
SYS_msgsnd = 69
SYS_msgrcv = 70
SYS_msgctl = 71
SYS_fcntl = 72
SYS_flock = 73
SYS_fsync = 74
SYS_fdatasync = 75
SYS_truncate = 76
SYS_ftruncate = 77
SYS_getdents = 78
SYS_getcwd = 79
SYS_chdir = 80
SYS_fchdir = 81
SYS_rename = 82
SYS_mkdir = 83
SYS_rmdir = 84
SYS_creat = 85
SYS_link = 86
SYS_unlink = 87
SYS_symlink = 88
SYS_readlink = 89
SYS_chmod = 90
SYS_fchmod = 91
SYS_chown = 92
SYS_fchown = 93
SYS_lchown = 94
SYS_umask = 95
SYS_gettimeofday = 96
SYS_getrlimit = 97
SYS_getrusage = 98
SYS_sysinfo = 99
SYS_times = 100
SYS_ptrace = 101
SYS_getuid = 102
SYS_syslog = 103
SYS_getgid = 104
SYS_setuid = 105
SYS_setgid = 106
SYS_geteuid = 107
SYS_getegid = 108
SYS_setpgid = 109
SYS_getppid = 110
SYS_getpgrp = 111
SYS_setsid = 112
SYS_setreuid = 113
SYS_setregid = 114
SYS_getgroups = 115
SYS_setgroups = 116
SYS_setresuid = 117
SYS_getresuid = 118
SYS_setresgid = 119
SYS_getresgid = 120
SYS_getpgid = 121
SYS_setfsuid = 122
SYS_setfsgid = 123
SYS_getsid = 124
SYS_capget = 125
SYS_capset = 126
SYS_rt_sigpending = 127
SYS_rt_sigtimedwait = 128
SYS_rt_sigqueueinfo = 129
SYS_rt_sigsuspend = 130
SYS_sigaltstack = 131
SYS_utime = 132
SYS_mknod = 133
SYS_uselib = 134
SYS_personality = 135
SYS_ustat = 136
SYS_statfs = 137
SYS_fstatfs = 138
SYS_sysfs = 139
SYS_getpriority = 140
SYS_setpriority = 141
SYS_sched_setparam = 142
SYS_sched_getparam = 143
SYS_sched_setscheduler = 144
SYS_sched_getscheduler = 145
SYS_sched_get_priority_max = 146
SYS_sched_get_priority_min = 147
SYS_sched_rr_get_interval = 148
SYS_mlock = 149
SYS_munlock = 150
SYS_mlockall = 151
SYS_munlockall = 152
SYS_vhangup = 153
SYS_modify_ldt = 154
SYS_pivot_root = 155
SYS__sysctl = 156
SYS_prctl = 157
SYS_arch_prctl = 158
SYS_adjtimex = 159
SYS_setrlimit = 160
SYS_chroot = 161
SYS_sync = 162
SYS_acct = 163
SYS_settimeofday = 164
SYS_mount = 165
SYS_umount2 = 166
SYS_swapon = 167
SYS_swapoff = 168
SYS_reboot = 169
SYS_sethostname = 170
SYS_setdomainname = 171
SYS_iopl = 172
SYS_ioperm = 173
SYS_create_module = 174
SYS_init_module = 175
SYS_delete_module = 176
SYS_get_kernel_syms = 177
SYS_query_module = 178
SYS_quotactl = 179
SYS_nfsservctl = 180
SYS_getpmsg = 181
SYS_putpmsg = 182
SYS_afs_syscall = 183
SYS_tuxcall = 184
SYS_security = 185
SYS_gettid = 186
SYS_readahead = 187
SYS_setxattr = 188
SYS_lsetxattr = 189
SYS_fsetxattr = 190
SYS_getxattr = 191
SYS_lgetxattr = 192
SYS_fgetxattr = 193
SYS_listxattr = 194
SYS_llistxattr = 195
SYS_flistxattr = 196
SYS_removexattr = 197
SYS_lremovexattr = 198
SYS_fremovexattr = 199
SYS_tkill = 200
SYS_time = 201
SYS_futex = 202
SYS_sched_setaffinity = 203
SYS_sched_getaffinity = 204
SYS_set_thread_area = 205
SYS_io_setup = 206
SYS_io_destroy = 207
SYS_io_getevents = 208
SYS_io_submit = 209
SYS_io_cancel = 210
SYS_get_thread_area = 211
SYS_lookup_dcookie = 212
SYS_epoll_create = 213
SYS_epoll_ctl_old = 214
SYS_epoll_wait_old = 215
SYS_remap_file_pages = 216
SYS_getdents64 = 217
SYS_set_tid_address = 218
SYS_restart_syscall = 219
SYS_semtimedop = 220
SYS_fadvise64 = 221
SYS_timer_create = 222
SYS_timer_settime = 223
SYS_timer_gettime = 224
SYS_timer_getoverrun = 225
SYS_timer_delete = 226
SYS_clock_settime = 227
SYS_clock_gettime = 228
SYS_clock_getres = 229
SYS_clock_nanosleep = 230
SYS_exit_group = 231
SYS_epoll_wait = 232
SYS_epoll_ctl = 233
SYS_tgkill = 234
SYS_utimes = 235
SYS_vserver = 236
SYS_mbind = 237
SYS_set_mempolicy = 238
SYS_get_mempolicy = 239
SYS_mq_open = 240
SYS_mq_unlink = 241
SYS_mq_timedsend = 242
SYS_mq_timedreceive = 243
SYS_mq_notify = 244
SYS_mq_getsetattr = 245
SYS_kexec_load = 246
SYS_waitid = 247
SYS_add_key = 248
SYS_request_key = 249
SYS_keyctl = 250
SYS_ioprio_set = 251
SYS_ioprio_get = 252
SYS_inotify_init = 253
SYS_inotify_add_watch = 254
SYS_inotify_rm_watch = 255
SYS_migrate_pages = 256
SYS_openat = 257
SYS_mkdirat = 258
SYS_mknodat = 259
SYS_fchownat = 260
SYS_futimesat = 261
SYS_newfstatat = 262
SYS_unlinkat = 263
SYS_renameat = 264
SYS_linkat = 265
SYS_symlinkat = 266
SYS_readlinkat = 267
SYS_fchmodat = 268
SYS_faccessat = 269
SYS_pselect6 = 270
SYS_ppoll = 271
SYS_unshare = 272
SYS_set_robust_list = 273
SYS_get_robust_list = 274
SYS_splice = 275
SYS_tee = 276
SYS_sync_file_range = 277
SYS_vmsplice = 278
SYS_move_pages = 279
SYS_utimensat = 280
SYS_epoll_pwait = 281
SYS_signalfd = 282
SYS_timerfd_create = 283
SYS_eventfd = 284
SYS_fallocate = 285
SYS_timerfd_settime = 286
SYS_timerfd_gettime = 287
SYS_accept4 = 288
SYS_signalfd4 = 289
SYS_eventfd2 = 290
SYS_epoll_create1 = 291
SYS_dup3 = 292
SYS_pipe2 = 293
SYS_inotify_init1 = 294
SYS_preadv = 295
SYS_pwritev = 296
SYS_rt_tgsigqueueinfo = 297
SYS_perf_event_open = 298
SYS_recvmmsg = 299
SYS_fanotify_init = 300
SYS_fanotify_mark = 301
SYS_prlimit64 = 302
SYS_name_to_handle_at = 303
SYS_open_by_handle_at = 304
SYS_clock_adjtime = 305
SYS_syncfs = 306
SYS_sendmmsg = 307
SYS_setns = 308
SYS_getcpu = 309
SYS_process_vm_readv = 310
SYS_process_vm_writev = 311
SYS_kcmp = 312
SYS_finit_module = 313
SYS_sched_setattr = 314
SYS_sched_getattr = 315
SYS_renameat2 = 316
SYS_seccomp = 317
SYS_getrandom = 318
SYS_memfd_create = 319
SYS_kexec_file_load = 320
SYS_bpf = 321
SYS_execveat = 322
SYS_userfaultfd = 323
SYS_membarrier = 324
SYS_mlock2 = 325
SYS_copy_file_range = 326
SYS_preadv2 = 327
SYS_pwritev2 = 328
SYS_pkey_mprotect = 329
SYS_pkey_alloc = 330
SYS_pkey_free = 331
SYS_statx = 332
SYS_io_pgetevents = 333
SYS_rseq = 334
SYS_pidfd_send_signal = 424
SYS_io_uring_setup = 425
SYS_io_uring_enter = 426
SYS_io_uring_register = 427
SYS_open_tree = 428
SYS_move_mount = 429
SYS_fsopen = 430
SYS_fsconfig = 431
SYS_fsmount = 432
SYS_fspick = 433
SYS_pidfd_open = 434
SYS_clone3 = 435
SYS_close_range = 436
SYS_openat2 = 437
SYS_pidfd_getfd = 438
SYS_faccessat2 = 439
SYS_process_madvise = 440
SYS_epoll_pwait2 = 441
SYS_mount_setattr = 442
SYS_quotactl_fd = 443
SYS_landlock_create_ruleset = 444
SYS_landlock_add_rule = 445
SYS_landlock_restrict_self = 446
SYS_memfd_secret = 447
SYS_process_mrelease = 448
SYS_futex_waitv = 449
SYS_set_mempolicy_home_node = 450
SYS_cachestat = 451
SYS_fchmodat2 = 452
SYS_map_shadow_stack = 453
SYS_futex_wake = 454
SYS_futex_wait = 455
SYS_futex_requeue = 456
SYS_statmount = 457
SYS_listmount = 458
SYS_lsm_get_self_attr = 459
SYS_lsm_set_self_attr = 460
SYS_lsm_list_modules = 461
SYS_mseal = 462

#: name -> number for every SYS_* constant above (e.g. NR["mmap"] == 9), for tables and logs.
NR: dict[str, int] = {k[4:]: v for k, v in dict(globals()).items() if k.startswith("SYS_")}

# ---------------------------------------------------------------------------------------
# errno values the kernel uses internally for syscall restart (include/linux/errno.h).
# A task stopped inside an interrupted syscall shows rax = -ERESTART*.
# ---------------------------------------------------------------------------------------
ERESTARTSYS = 512
ERESTARTNOINTR = 513
ERESTARTNOHAND = 514
ENOIOCTLCMD = 515
ERESTART_RESTARTBLOCK = 516
RESTART_ERRNOS = (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK)

# ---------------------------------------------------------------------------------------
# ptrace (linux/ptrace.h, asm/ptrace-abi.h)
# ---------------------------------------------------------------------------------------
PTRACE_TRACEME = 0
PTRACE_PEEKTEXT = 1
PTRACE_PEEKDATA = 2
PTRACE_PEEKUSER = 3
PTRACE_POKETEXT = 4
PTRACE_POKEDATA = 5
PTRACE_POKEUSER = 6
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_GETFPREGS = 14
PTRACE_SETFPREGS = 15
PTRACE_ATTACH = 16
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_ARCH_PRCTL = 30
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_SETSIGINFO = 0x4203
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
PTRACE_PEEKSIGINFO = 0x4209
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_SECCOMP_GET_FILTER = 0x420C
PTRACE_SECCOMP_GET_METADATA = 0x420D
PTRACE_GET_SYSCALL_INFO = 0x420E
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F
PTRACE_SET_SYSCALL_USER_DISPATCH_CONFIG = 0x4210
PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG = 0x4211

PTRACE_PEEKSIGINFO_SHARED = 1

PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACEFORK = 0x2
PTRACE_O_TRACEVFORK = 0x4
PTRACE_O_TRACECLONE = 0x8
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACEVFORKDONE = 0x20
PTRACE_O_TRACEEXIT = 0x40
PTRACE_O_TRACESECCOMP = 0x80
PTRACE_O_EXITKILL = 0x100000
PTRACE_O_SUSPEND_SECCOMP = 0x200000

PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_VFORK_DONE = 5
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128

# ELF note types for PTRACE_GETREGSET/SETREGSET (linux/elf.h)
NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_X86_XSTATE = 0x202

# wait options (linux/wait.h)
WNOHANG = 0x1
WUNTRACED = 0x2
WEXITED = 0x4
WCONTINUED = 0x8
WNOWAIT = 0x01000000
WALL = 0x40000000  # __WALL: wait for clone children (threads) too
WCLONE = 0x80000000  # __WCLONE

# ---------------------------------------------------------------------------------------
# PAGEMAP_SCAN (linux/fs.h, 6.7+)
# ---------------------------------------------------------------------------------------
PM_SCAN_ARG_SIZE = 96  # sizeof(struct pm_scan_arg)
PAGEMAP_SCAN = _ioc(_IOC_READ | _IOC_WRITE, ord("f"), 16, PM_SCAN_ARG_SIZE)
PM_SCAN_WP_MATCHING = 1 << 0
PM_SCAN_CHECK_WPASYNC = 1 << 1
PAGE_IS_WPALLOWED = 1 << 0
PAGE_IS_WRITTEN = 1 << 1
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6
PAGE_IS_SOFT_DIRTY = 1 << 7
PAGE_IS_GUARD = 1 << 8

# ---------------------------------------------------------------------------------------
# PROCMAP_QUERY (linux/fs.h, 6.11+): one VMA of /proc/PID/maps by address, by ioctl
# ---------------------------------------------------------------------------------------
PROCMAP_QUERY_SIZE = 104  # sizeof(struct procmap_query)
PROCMAP_QUERY = _ioc(_IOC_READ | _IOC_WRITE, ord("f"), 17, PROCMAP_QUERY_SIZE)
PROCMAP_QUERY_VMA_READABLE = 0x01
PROCMAP_QUERY_VMA_WRITABLE = 0x02
PROCMAP_QUERY_VMA_EXECUTABLE = 0x04
PROCMAP_QUERY_VMA_SHARED = 0x08
PROCMAP_QUERY_COVERING_OR_NEXT_VMA = 0x10
PROCMAP_QUERY_FILE_BACKED_VMA = 0x20

# /proc/PID/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst)
PM_PFN_MASK = (1 << 55) - 1
PM_SOFT_DIRTY = 1 << 55
PM_MMAP_EXCLUSIVE = 1 << 56
PM_UFFD_WP = 1 << 57
PM_GUARD_REGION = 1 << 58
PM_FILE = 1 << 61
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63

# ---------------------------------------------------------------------------------------
# userfaultfd (linux/userfaultfd.h)
# ---------------------------------------------------------------------------------------
UFFD_API = 0xAA
UFFD_USER_MODE_ONLY = 1
UFFDIO = 0xAA
UFFDIO_API_SIZE = 24
UFFDIO_RANGE_SIZE = 16
UFFDIO_REGISTER_SIZE = 32
UFFDIO_COPY_SIZE = 40
UFFDIO_ZEROPAGE_SIZE = 32
UFFDIO_WRITEPROTECT_SIZE = 24
UFFDIO_CONTINUE_SIZE = 32
UFFDIO_MOVE_SIZE = 40
UFFDIO_API = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, 0x3F, UFFDIO_API_SIZE)
UFFDIO_REGISTER = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, 0x00, UFFDIO_REGISTER_SIZE)
UFFDIO_UNREGISTER = _ioc(_IOC_READ, UFFDIO, 0x01, UFFDIO_RANGE_SIZE)
UFFDIO_WAKE = _ioc(_IOC_READ, UFFDIO, 0x02, UFFDIO_RANGE_SIZE)
UFFDIO_COPY = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, 0x03, UFFDIO_COPY_SIZE)
UFFDIO_ZEROPAGE = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, 0x04, UFFDIO_ZEROPAGE_SIZE)
UFFDIO_MOVE = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, 0x05, UFFDIO_MOVE_SIZE)
UFFDIO_WRITEPROTECT = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, 0x06, UFFDIO_WRITEPROTECT_SIZE)
UFFDIO_CONTINUE = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, 0x07, UFFDIO_CONTINUE_SIZE)
USERFAULTFD_IOC_NEW = _ioc(_IOC_NONE, UFFDIO, 0x00, 0)  # on /dev/userfaultfd

UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
UFFD_FEATURE_EVENT_FORK = 1 << 1
UFFD_FEATURE_EVENT_REMAP = 1 << 2
UFFD_FEATURE_EVENT_REMOVE = 1 << 3
UFFD_FEATURE_MISSING_HUGETLBFS = 1 << 4
UFFD_FEATURE_MISSING_SHMEM = 1 << 5
UFFD_FEATURE_EVENT_UNMAP = 1 << 6
UFFD_FEATURE_SIGBUS = 1 << 7
UFFD_FEATURE_THREAD_ID = 1 << 8
UFFD_FEATURE_MINOR_HUGETLBFS = 1 << 9
UFFD_FEATURE_MINOR_SHMEM = 1 << 10
UFFD_FEATURE_EXACT_ADDRESS = 1 << 11
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_POISON = 1 << 14
UFFD_FEATURE_WP_ASYNC = 1 << 15
UFFD_FEATURE_MOVE = 1 << 16

UFFDIO_REGISTER_MODE_MISSING = 1 << 0
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_REGISTER_MODE_MINOR = 1 << 2
UFFDIO_COPY_MODE_DONTWAKE = 1 << 0
UFFDIO_COPY_MODE_WP = 1 << 1
UFFDIO_ZEROPAGE_MODE_DONTWAKE = 1 << 0
UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0
UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 1 << 1

UFFD_EVENT_PAGEFAULT = 0x12
UFFD_EVENT_FORK = 0x13
UFFD_EVENT_REMAP = 0x14
UFFD_EVENT_REMOVE = 0x15
UFFD_EVENT_UNMAP = 0x16
UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0
UFFD_PAGEFAULT_FLAG_WP = 1 << 1
UFFD_PAGEFAULT_FLAG_MINOR = 1 << 2
UFFD_MSG_SIZE = 32  # sizeof(struct uffd_msg)

# ---------------------------------------------------------------------------------------
# clone / clone3 (linux/sched.h)
# ---------------------------------------------------------------------------------------
CSIGNAL = 0x000000FF
CLONE_NEWTIME = 0x00000080
CLONE_VM = 0x00000100
CLONE_FS = 0x00000200
CLONE_FILES = 0x00000400
CLONE_SIGHAND = 0x00000800
CLONE_PIDFD = 0x00001000
CLONE_PTRACE = 0x00002000
CLONE_VFORK = 0x00004000
CLONE_PARENT = 0x00008000
CLONE_THREAD = 0x00010000
CLONE_NEWNS = 0x00020000
CLONE_SYSVSEM = 0x00040000
CLONE_SETTLS = 0x00080000
CLONE_PARENT_SETTID = 0x00100000
CLONE_CHILD_CLEARTID = 0x00200000
CLONE_DETACHED = 0x00400000
CLONE_UNTRACED = 0x00800000
CLONE_CHILD_SETTID = 0x01000000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_IO = 0x80000000
CLONE_CLEAR_SIGHAND = 0x100000000
CLONE_INTO_CGROUP = 0x200000000
CLONE_ARGS_SIZE_VER0 = 64
CLONE_ARGS_SIZE_VER1 = 80
CLONE_ARGS_SIZE_VER2 = 88

# pidfd (linux/pidfd.h)
PIDFD_NONBLOCK = 0o4000
PIDFD_THREAD = 0o200

# ---------------------------------------------------------------------------------------
# Memory (asm-generic/mman-common.h, linux/mman.h)
# ---------------------------------------------------------------------------------------
PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
PROT_GROWSDOWN = 0x01000000
PROT_GROWSUP = 0x02000000

MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_SHARED_VALIDATE = 0x03
MAP_TYPE = 0x0F
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_GROWSDOWN = 0x0100
MAP_DENYWRITE = 0x0800
MAP_EXECUTABLE = 0x1000
MAP_LOCKED = 0x2000
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000
MAP_NONBLOCK = 0x10000
MAP_STACK = 0x20000
MAP_HUGETLB = 0x40000
MAP_SYNC = 0x80000
MAP_FIXED_NOREPLACE = 0x100000
MAP_FAILED = -1

MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
MREMAP_DONTUNMAP = 4

MADV_NORMAL = 0
MADV_RANDOM = 1
MADV_SEQUENTIAL = 2
MADV_WILLNEED = 3
MADV_DONTNEED = 4
MADV_FREE = 8
MADV_REMOVE = 9
MADV_DONTFORK = 10
MADV_DOFORK = 11
MADV_MERGEABLE = 12
MADV_UNMERGEABLE = 13
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_DONTDUMP = 16
MADV_DODUMP = 17
MADV_WIPEONFORK = 18
MADV_KEEPONFORK = 19
MADV_COLD = 20
MADV_PAGEOUT = 21
MADV_POPULATE_READ = 22
MADV_POPULATE_WRITE = 23
MADV_DONTNEED_LOCKED = 24
MADV_COLLAPSE = 25
MADV_GUARD_INSTALL = 102
MADV_GUARD_REMOVE = 103

MFD_CLOEXEC = 0x0001
MFD_ALLOW_SEALING = 0x0002
MFD_NOEXEC_SEAL = 0x0008
MFD_EXEC = 0x0010

# lseek whence (linux/fs.h)
SEEK_SET = 0
SEEK_CUR = 1
SEEK_END = 2
SEEK_DATA = 3
SEEK_HOLE = 4

# ---------------------------------------------------------------------------------------
# prctl (linux/prctl.h) and arch_prctl (asm/prctl.h)
# ---------------------------------------------------------------------------------------
PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_GET_NAME = 16
PR_GET_SECCOMP = 21
PR_SET_SECCOMP = 22
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_GET_SECUREBITS = 27
PR_SET_SECUREBITS = 28
PR_SET_TIMERSLACK = 29
PR_GET_TIMERSLACK = 30
PR_SET_MM = 35
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_GET_TID_ADDRESS = 40
PR_SET_THP_DISABLE = 41
PR_GET_THP_DISABLE = 42
PR_CAP_AMBIENT = 47
# timer_create() takes the id to give from *created_timer_id while ON (Linux 6.15)
PR_TIMER_CREATE_RESTORE_IDS = 77
PR_TIMER_CREATE_RESTORE_IDS_OFF = 0
PR_TIMER_CREATE_RESTORE_IDS_ON = 1
PR_TIMER_CREATE_RESTORE_IDS_GET = 2
PR_SET_PTRACER = 0x59616D61

PR_SET_MM_START_CODE = 1
PR_SET_MM_END_CODE = 2
PR_SET_MM_START_DATA = 3
PR_SET_MM_END_DATA = 4
PR_SET_MM_START_STACK = 5
PR_SET_MM_START_BRK = 6
PR_SET_MM_BRK = 7
PR_SET_MM_ARG_START = 8
PR_SET_MM_ARG_END = 9
PR_SET_MM_ENV_START = 10
PR_SET_MM_ENV_END = 11
PR_SET_MM_AUXV = 12
PR_SET_MM_EXE_FILE = 13
PR_SET_MM_MAP = 14
PR_SET_MM_MAP_SIZE = 15
PRCTL_MM_MAP_SIZE = 104  # sizeof(struct prctl_mm_map), what PR_SET_MM_MAP_SIZE reports

ARCH_SET_GS = 0x1001
ARCH_SET_FS = 0x1002
ARCH_GET_FS = 0x1003
ARCH_GET_GS = 0x1004
ARCH_GET_CPUID = 0x1011
ARCH_SET_CPUID = 0x1012
ARCH_MAP_VDSO_X32 = 0x2001
ARCH_MAP_VDSO_32 = 0x2002
ARCH_MAP_VDSO_64 = 0x2003
ARCH_SHSTK_ENABLE = 0x5001
ARCH_SHSTK_DISABLE = 0x5002
ARCH_SHSTK_LOCK = 0x5003
ARCH_SHSTK_STATUS = 0x5005

# personality (linux/personality.h)
ADDR_NO_RANDOMIZE = 0x0040000
PER_LINUX = 0
PERSONALITY_QUERY = 0xFFFFFFFF

# ---------------------------------------------------------------------------------------
# rseq (linux/rseq.h) - glibc 2.35+ registers it in every thread with this signature.
# ---------------------------------------------------------------------------------------
RSEQ_FLAG_UNREGISTER = 1
RSEQ_SIG_X86 = 0x53053053
RSEQ_MIN_SIZE = 32

# ---------------------------------------------------------------------------------------
# Signals (asm/signal.h)
# ---------------------------------------------------------------------------------------
SIGHUP = 1
SIGINT = 2
SIGQUIT = 3
SIGILL = 4
SIGTRAP = 5
SIGABRT = 6
SIGBUS = 7
SIGFPE = 8
SIGKILL = 9
SIGUSR1 = 10
SIGSEGV = 11
SIGUSR2 = 12
SIGPIPE = 13
SIGALRM = 14
SIGTERM = 15
SIGSTKFLT = 16
SIGCHLD = 17
SIGCONT = 18
SIGSTOP = 19
SIGTSTP = 20
SIGTTIN = 21
SIGTTOU = 22
SIGURG = 23
SIGXCPU = 24
SIGXFSZ = 25
SIGVTALRM = 26
SIGPROF = 27
SIGWINCH = 28
SIGIO = 29
SIGPWR = 30
SIGSYS = 31
SIGRTMIN = 32
SIGRTMAX = 64
NSIG = 64  # _NSIG: signals 1..64
SIGSET_SIZE = 8  # kernel sigset_t bytes on x86_64
ALL_SIGNALS = (1 << 64) - 1  # a sigset with every signal
#: orig_rax of a thread not in a syscall (-1): nothing for the kernel to restart
ORIG_RAX_NONE = (1 << 64) - 1

SIG_DFL = 0
SIG_IGN = 1
SIG_BLOCK = 0
SIG_UNBLOCK = 1
SIG_SETMASK = 2

SA_NOCLDSTOP = 0x00000001
SA_NOCLDWAIT = 0x00000002
SA_SIGINFO = 0x00000004
SA_UNSUPPORTED = 0x00000400
SA_EXPOSE_TAGBITS = 0x00000800
SA_RESTORER = 0x04000000
SA_ONSTACK = 0x08000000
SA_RESTART = 0x10000000
SA_NODEFER = 0x40000000
SA_RESETHAND = 0x80000000

SS_ONSTACK = 1
SS_DISABLE = 2
SS_AUTODISARM = 1 << 31

# struct sigevent sigev_notify (POSIX timers)
SIGEV_SIGNAL = 0
SIGEV_NONE = 1
SIGEV_THREAD = 2
SIGEV_THREAD_ID = 4

# siginfo si_code values that matter to the engine
SI_USER = 0
SI_KERNEL = 0x80
SI_QUEUE = -1
SI_TIMER = -2
SI_TKILL = -6
TRAP_BRKPT = 1
TRAP_TRACE = 2
SIGINFO_SIZE = 128

# ---------------------------------------------------------------------------------------
# Files (asm-generic/fcntl.h)
# ---------------------------------------------------------------------------------------
O_RDONLY = 0o0
O_WRONLY = 0o1
O_RDWR = 0o2
O_ACCMODE = 0o3
O_CREAT = 0o100
O_EXCL = 0o200
O_NOCTTY = 0o400
O_TRUNC = 0o1000
O_APPEND = 0o2000
O_NONBLOCK = 0o4000
O_DSYNC = 0o10000
O_ASYNC = 0o20000
O_DIRECT = 0o40000
O_LARGEFILE = 0o100000
O_DIRECTORY = 0o200000
O_NOFOLLOW = 0o400000
O_NOATIME = 0o1000000
O_CLOEXEC = 0o2000000
O_PATH = 0o10000000
O_TMPFILE = 0o20000000 | O_DIRECTORY
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
F_DUPFD = 0
F_GETFD = 1
F_SETFD = 2
F_GETFL = 3
F_SETFL = 4
F_SETOWN = 8
F_GETOWN = 9
F_SETSIG = 10
F_GETSIG = 11
F_SETOWN_EX = 15
F_GETOWN_EX = 16
F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
F_DUPFD_CLOEXEC = 1030
FD_CLOEXEC = 1
FIONREAD = 0x541B
CLOSE_RANGE_UNSHARE = 1 << 1
CLOSE_RANGE_CLOEXEC = 1 << 2

# kcmp types (linux/kcmp.h)
KCMP_FILE = 0
KCMP_VM = 1
KCMP_FILES = 2
KCMP_FS = 3
KCMP_SIGHAND = 4
KCMP_IO = 5
KCMP_SYSVSEM = 6
KCMP_EPOLL_TFD = 7

# mount (linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_FORCE = 1
MNT_DETACH = 2

# resource limits (asm-generic/resource.h): index order of /proc/PID/limits rows
RLIMIT_NAMES = (
    "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS",
    "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME",
)
RLIM_INFINITY = (1 << 64) - 1

# auxv types (linux/auxvec.h, asm/auxvec.h)
AT_NULL = 0
AT_PHDR = 3
AT_PAGESZ = 6
AT_BASE = 7
AT_ENTRY = 9
AT_HWCAP = 16
AT_RANDOM = 25
AT_EXECFN = 31
AT_SYSINFO_EHDR = 33
AT_MINSIGSTKSZ = 51
AT_VECTOR_SIZE = 64 * 2  # slots of mm->saved_auxv (unsigned longs), upper bound for PR_SET_MM

# x86 eflags bits the injector clears before running code in a target
X86_EFLAGS_TF = 0x100
X86_EFLAGS_IF = 0x200
X86_EFLAGS_DF = 0x400

# tty ioctls (asm-generic/ioctls.h)
TIOCSCTTY = 0x540E
TIOCSPGRP = 0x5410
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431
TIOCGPTLCK = 0x80045439
TIOCGPTPEER = 0x5441
TIOCGDEV = 0x80045432  # the device number of the terminal behind an fd (/dev/tty too)
TCGETS = 0x5401
TCSETS = 0x5402
TIOCGWINSZ = 0x5413
TIOCSWINSZ = 0x5414
DEVPTS_SUPER_MAGIC = 0x1CD1

# socket options beyond Python's socket module (asm-generic/socket.h)
SO_PEEK_OFF = 42
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SIOCGSKNS = 0x894C  # linux/sockios.h: an fd of the socket's network namespace

# membarrier(2) commands (include/uapi/linux/membarrier.h). Registrations are per mm;
# GET_REGISTRATIONS (6.6+) returns the REGISTER_* bits the mm holds.
MEMBARRIER_CMD_QUERY = 0
MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED = 1 << 2
MEMBARRIER_CMD_PRIVATE_EXPEDITED = 1 << 3
MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED = 1 << 4
MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE = 1 << 5
MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE = 1 << 6
MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ = 1 << 7
MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ = 1 << 8
MEMBARRIER_CMD_GET_REGISTRATIONS = 1 << 9
MEMBARRIER_REGISTRATIONS = (MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED
                            | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED
                            | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE
                            | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ)

# SysV IPC (linux/ipc.h, shm.h, sem.h, msg.h)
IPC_PRIVATE = 0
IPC_CREAT = 0o1000
IPC_EXCL = 0o2000
IPC_NOWAIT = 0o4000
IPC_RMID = 0
IPC_SET = 1
IPC_STAT = 2
SHM_RDONLY = 0o10000
SHM_LOCK = 11
SHM_DEST = 0o1000  # shm_perm.mode: marked for removal (IPC_RMID while attached)
SHM_LOCKED = 0o2000  # shm_perm.mode: SHM_LOCK
GETPID = 11
GETVAL = 12
GETALL = 13
SETVAL = 16
SETALL = 17
SEMVMX = 32767  # a semaphore's largest value
MSG_COPY = 0o40000  # msgrcv: copy message number msgtyp, do not dequeue it
HUGETLBFS_MAGIC = 0x958458F6
MQUEUE_MAGIC = 0x19800202

# inotify (linux/inotify.h): the watch the engine sets to learn an inode's identity
IN_ATTRIB = 0x00000004
IN_DONT_FOLLOW = 0x02000000
