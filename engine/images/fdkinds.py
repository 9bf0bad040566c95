"""Records of the anon-inode file kinds (eventfd, signalfd, timerfd, epoll, inotify,
fanotify, pidfd) in files.json.

Each is the state the kernel shows in /proc/PID/fdinfo for that kind and lets a new file
be given back; a FileRecord of type "anon_inode" carries exactly one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

U64_MAX = (1 << 64) - 1
#: eventfd's counter saturates one below 2^64 (a write that would reach it blocks).
EVENTFD_MAX = U64_MAX - 1
#: clocks timerfd_create accepts: REALTIME, MONOTONIC, BOOTTIME, REALTIME_ALARM, BOOTTIME_ALARM
TIMERFD_CLOCKS = (0, 1, 7, 8, 9)
TFD_TIMER_ABSTIME = 1
TFD_TIMER_CANCEL_ON_SET = 2
NSEC_MAX = (1 << 63) - 1
#: EPOLL* event bits epoll_ctl(EPOLL_CTL_ADD) accepts from user space
EPOLL_EVENT_MASK = 0x3FFF | (1 << 28) | (1 << 29) | (1 << 30) | (1 << 31)


def _check(cond: bool, message: str) -> None:
    if not cond:
        # imported here: records.py imports this module for FileRecord's fields
        from engine.images.records import RecordError
        raise RecordError(message)


@dataclass
class EventfdState:
    """An eventfd: its counter and whether it is in semaphore mode."""

    count: int
    semaphore: bool

    def validate(self) -> None:
        """Counter within what the kernel can hold."""
        _check(0 <= self.count <= EVENTFD_MAX, f"eventfd count out of range: {self.count}")


@dataclass
class SignalfdState:
    """A signalfd: the set of signals it reads (bit n-1 for signal n)."""

    sigmask: int

    def validate(self) -> None:
        """A 64-bit mask."""
        _check(0 <= self.sigmask <= U64_MAX, f"signalfd mask out of range: {self.sigmask}")


@dataclass
class TimerfdState:
    """A timerfd: clock, settime flags, expiry and interval, expirations not yet read.

    `value_ns` is the time left until the next expiry for a relative timer and the
    absolute expiry on the timer's clock for one set with TFD_TIMER_ABSTIME; 0 is
    disarmed."""

    clockid: int
    settime_flags: int
    value_ns: int
    interval_ns: int
    ticks: int

    def validate(self) -> None:
        """Clock known, flags known, times non-negative."""
        _check(self.clockid in TIMERFD_CLOCKS, f"timerfd clock {self.clockid} unknown")
        _check(self.settime_flags & ~(TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET) == 0,
               f"timerfd settime flags {self.settime_flags:#x} unknown")
        for what, v in (("value", self.value_ns), ("interval", self.interval_ns)):
            _check(0 <= v <= NSEC_MAX, f"timerfd {what} out of range: {v}")
        _check(0 <= self.ticks <= U64_MAX, f"timerfd ticks out of range: {self.ticks}")


@dataclass
class EpollWatch:
    """One entry of an epoll interest list: the watched fd number (as the task that
    registered it numbers it), the file it is, and the events and data given to
    epoll_ctl."""

    tfd: int
    file_id: int
    events: int
    data: int

    def validate(self) -> None:
        """fd number and event bits in range."""
        _check(0 <= self.tfd < (1 << 31), f"epoll watch fd out of range: {self.tfd}")
        _check(self.events & ~EPOLL_EVENT_MASK == 0,
               f"epoll watch of fd {self.tfd}: events {self.events:#x} unknown")
        _check(0 <= self.data <= U64_MAX, f"epoll watch of fd {self.tfd}: data out of range")


#: inotify mask bits a watch keeps: IN_ALL_EVENTS, IN_EXCL_UNLINK, IN_ONESHOT
INOTIFY_MASK = 0xFFF | 0x04000000 | 0x80000000


@dataclass
class InotifyWatch:
    """One inotify watch: the watch descriptor the program was given, the event mask, and
    the watched inode (its path in the tree's root, and what a stat() of it returns, with
    `dev` in the kernel's encoding major << 20 | minor)."""

    wd: int
    mask: int
    path: str
    dev: int
    ino: int

    def validate(self) -> None:
        """Positive wd, known mask bits, an absolute path."""
        _check(0 < self.wd < (1 << 31), f"inotify wd out of range: {self.wd}")
        _check(self.mask & ~INOTIFY_MASK == 0 and self.mask & 0xFFF != 0,
               f"inotify watch {self.wd}: mask {self.mask:#x} unknown")
        _check(self.path.startswith("/"), f"inotify watch {self.wd}: path not absolute")


FANOTIFY_MARK_KINDS = ("inode", "mount", "filesystem")


@dataclass
class FanotifyMark:
    """One fanotify mark: on an inode, a mount or a filesystem, named by a path (of the
    inode, of the mount point, of any file of the filesystem), with the FAN_MARK_* flags
    the kernel shows for it and its event and ignored masks."""

    kind: str
    path: str
    mflags: int
    mask: int
    ignored_mask: int

    def validate(self) -> None:
        """Known kind, absolute path, 32-bit values (a mark keeps 32-bit masks)."""
        _check(self.kind in FANOTIFY_MARK_KINDS, f"fanotify mark kind {self.kind!r} unknown")
        _check(self.path.startswith("/"), "fanotify mark path not absolute")
        for v in (self.mflags, self.mask, self.ignored_mask):
            _check(0 <= v < (1 << 32), f"fanotify mark value out of range: {v}")


@dataclass
class FanotifyState:
    """A fanotify group: fanotify_init's flags and event_f_flags, and its marks."""

    flags: int
    event_flags: int
    marks: list[FanotifyMark]

    def validate(self) -> None:
        """32-bit flags."""
        _check(0 <= self.flags < (1 << 32) and 0 <= self.event_flags < (1 << 32),
               "fanotify flags out of range")


@dataclass
class PidfdState:
    """A pidfd: the task of the dumped tree it refers to (by its pid in the image)."""

    pid: int

    def validate(self) -> None:
        """A pid."""
        _check(self.pid > 0, f"pidfd of pid {self.pid}")


#: socket types of unix sockets: SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
UNIX_TYPES = (1, 2, 5)


UNIX_STATES = (1, 7, 10)  # TCP_* numbering: connected (or dgram), unconnected, listening
UNIX_PATH_MAX = 108


@dataclass
class UnixSocketState:
    """A unix socket: its type, its peer (by inode, 0 for none: unconnected, its peer
    gone, or a connection still waiting in a listener's queue), which directions are
    shut down (1 read, 2 write), and the lengths of the messages queued for it to read
    (the data is the record's content; a stream socket has one length, or one per
    stretch ending in a message that carries fds).

    `name` is the bound address as the kernel holds it (a leading NUL: abstract), `dir`
    the absolute directory a relative path name resolves against, `mode` its socket
    file's permissions. A listener has its `backlog` and the inodes of the connecting
    sockets waiting in its queue (`icons`, in accept order). Per queued message (when
    any has one): `rights`, the file ids of the fds sent with it, and `senders`, the
    name of a datagram's sender ("" unnamed). Buffer sizes other than a new socket's
    are kept (a queue that fitted may need them)."""

    type: int
    peer: int
    shutdown: int
    queued: list[int]
    name: str = ""
    dir: str = ""
    mode: int = 0
    state: int = 1
    backlog: int = 0
    icons: list[int] = field(default_factory=list)
    rights: list[list[int]] = field(default_factory=list)
    senders: list[str] = field(default_factory=list)
    sndbuf: int = 0  # SO_SNDBUF / SO_RCVBUF as getsockopt reads them; 0: the default
    rcvbuf: int = 0

    def validate(self) -> None:
        """Type, state, shutdown bits, name and per-message lists in range."""
        _check(self.type in UNIX_TYPES, f"unix socket type {self.type} unknown")
        _check(self.state in UNIX_STATES, f"unix socket state {self.state} unknown")
        _check(self.peer >= 0, "unix socket peer inode out of range")
        _check(self.shutdown & ~3 == 0, f"unix socket shutdown {self.shutdown:#x} unknown")
        _check(all(0 <= n < (1 << 31) for n in self.queued), "unix socket message length")
        _check(len(self.name) <= UNIX_PATH_MAX, "unix socket name too long")
        _check(not self.dir or self.dir.startswith("/") and self.name[:1] not in ("", "/",
                                                                                  "\0"),
               "unix socket directory goes with a relative path name only")
        _check(0 <= self.mode <= 0o7777 and 0 <= self.backlog < (1 << 31), "unix socket mode")
        _check(0 <= self.sndbuf < (1 << 31) and 0 <= self.rcvbuf < (1 << 31),
               "unix socket buffer size")
        _check(self.state == 10 or not self.icons and not self.backlog,
               "pending connections go with a listening unix socket only")
        for extra in (self.rights, self.senders):
            _check(not extra or len(extra) == len(self.queued),
                   "unix socket: one entry per queued message")


@dataclass
class PtyState:
    """A pty master: the pair's number, whether the slave is still locked, its termios
    (struct termios from TCGETS, hex) and window size, how many bytes of the record's
    content are its input queue (written to the master, unread by the slave; the rest is
    its output queue, written to the slave, unread by the master), and the devpts mount
    point and options the pair lives in (mounted again in a new root without it)."""

    index: int
    locked: bool
    termios: str
    winsize: list[int]
    inq_len: int
    devpts: str
    devpts_opts: str

    def validate(self) -> None:
        """Index, termios size, window size and queue length in range."""
        _check(0 <= self.index < (1 << 20), f"pty index out of range: {self.index}")
        _check(len(self.termios) == 72 and all(c in "0123456789abcdef" for c in self.termios),
               "pty termios is not 36 bytes of hex")
        _check(len(self.winsize) == 4 and all(0 <= v < (1 << 16) for v in self.winsize),
               "pty window size")
        _check(0 <= self.inq_len < (1 << 31), "pty input queue length")
        _check(self.devpts.startswith("/") and "," not in self.devpts, "devpts mount point")


#: address families of inet sockets, and the states the engine gives back
INET_FAMILIES = (2, 10)  # AF_INET, AF_INET6
TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN = 1, 7, 10
#: half-closed: this side shut down for writing (its FIN acked), or the peer did
TCP_FIN_WAIT2, TCP_CLOSE_WAIT = 5, 8
TCP_STATES = (TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN, TCP_FIN_WAIT2, TCP_CLOSE_WAIT)
TCP_CONNECTED = (TCP_ESTABLISHED, TCP_FIN_WAIT2, TCP_CLOSE_WAIT)


@dataclass
class TcpRepair:
    """What TCP repair mode reads of an established connection: the sequence numbers of
    the first byte of each queue, the queues' lengths (the data is the record's content,
    send queue first), the options negotiated at connect time, the window state and the
    timestamp clock."""

    send_seq: int
    recv_seq: int
    send_len: int
    recv_len: int
    mss: int
    snd_wscale: int
    rcv_wscale: int
    options: int  # tcpi_options: 1 timestamps, 2 SACK, 4 window scaling
    window: list[int]  # struct tcp_repair_window: snd_wl1 snd_wnd max_window rcv_wnd rcv_wup
    timestamp: int

    def validate(self) -> None:
        """32-bit sequence numbers and window fields, scales a TCP option can carry."""
        for v in (self.send_seq, self.recv_seq, self.timestamp, *self.window):
            _check(0 <= v < (1 << 32), f"tcp repair value out of range: {v}")
        _check(len(self.window) == 5, "tcp repair window needs 5 fields")
        _check(0 <= self.send_len < (1 << 31) and 0 <= self.recv_len < (1 << 31),
               "tcp queue length out of range")
        _check(0 < self.mss < (1 << 16), f"tcp mss out of range: {self.mss}")
        _check(0 <= self.snd_wscale <= 14 and 0 <= self.rcv_wscale <= 14, "tcp window scale")
        _check(self.options & ~7 == 0, f"tcp options {self.options:#x} unknown")


#: a classic BPF program has at most this many instructions of 8 bytes (BPF_MAXINSNS)
BPF_MAX_BYTES = 4096 * 8


def check_filter(program: str) -> None:
    """A socket filter field: whole instructions as hex, within the kernel's limit."""
    _check(len(program) % 16 == 0 and len(program) // 2 <= BPF_MAX_BYTES,
           f"socket filter of {len(program)} hex digits")
    bytes.fromhex(program)


@dataclass
class InetSocketState:
    """A TCP, UDP or raw IP socket: family, type, state, addresses ("host", port), the socket
    options the engine gives back (name -> value), the listen backlog, and for an
    established (or half-closed) TCP connection its repair state. A listener counts the
    connections `waiting` in its accept queue; a connection waiting there is `pending`:
    its client is connected again (a new handshake, nothing was sent on it yet)."""

    family: int
    type: int  # SOCK_STREAM (TCP), SOCK_DGRAM (UDP) or SOCK_RAW
    state: int  # TCP_* numbering (UDP, raw: 1 connected, 7 not)
    local: list[str]  # [host, port] ("" host: not bound; raw: the port is the protocol)
    peer: list[str]  # [] when not connected
    options: dict[str, int]
    backlog: int
    repair: TcpRepair | None
    protocol: int = 0  # SOCK_RAW: the IP protocol (0 for TCP and UDP)
    bpf_filter: str = ""  # SO_ATTACH_FILTER: the classic BPF instructions as hex
    filter_locked: bool = False  # SO_LOCK_FILTER
    waiting: int = 0
    pending: bool = False

    def validate(self) -> None:
        """Family, type, state and the fields the state needs."""
        _check(self.family in INET_FAMILIES, f"inet socket family {self.family} unknown")
        _check(self.type in (1, 2, 3), f"inet socket type {self.type} unknown")
        _check(0 <= self.protocol < 256 and (self.type == 3) >= (self.protocol > 0),
               f"inet socket protocol {self.protocol} out of range")
        _check(self.state in TCP_STATES, f"inet socket state {self.state} not supported")
        for addr in (self.local, self.peer):
            _check(len(addr) in (0, 2), "inet address needs host and port")
            _check(not addr or addr[1].isdigit() and int(addr[1]) < 65536, "inet port")
        _check((self.repair is not None) == (self.type == 1 and self.state in TCP_CONNECTED),
               "tcp repair state goes with an established connection only")
        _check(self.waiting == 0 or self.state == TCP_LISTEN, "waiting connections: listener")
        _check(not self.pending or self.state == TCP_ESTABLISHED, "pending: a connection")
        _check(0 <= self.backlog < (1 << 31), "listen backlog out of range")
        check_filter(self.bpf_filter)


LOCK_KINDS = ("posix", "flock", "ofd")


@dataclass
class LockRecord:
    """A file lock held through this open file: kind (posix: owned by task `owner`;
    flock and ofd: owned by the open file itself, owner 0), read or write, and the byte
    range (`length` 0: to the end of the file, however far it grows)."""

    kind: str
    write: bool
    owner: int
    start: int
    length: int

    def validate(self) -> None:
        """Kind known, owner only for POSIX locks, range non-negative."""
        _check(self.kind in LOCK_KINDS, f"lock kind {self.kind!r} unknown")
        _check((self.owner > 0) == (self.kind == "posix"), "lock owner goes with POSIX only")
        _check(0 <= self.start < (1 << 63) and 0 <= self.length < (1 << 63), "lock range")


#: netlink socket options given back (linux/netlink.h, level SOL_NETLINK): name -> number
NETLINK_OPTIONS = {"NETLINK_PKTINFO": 3, "NETLINK_BROADCAST_ERROR": 4,
                   "NETLINK_NO_ENOBUFS": 5, "NETLINK_LISTEN_ALL_NSID": 8,
                   "NETLINK_CAP_ACK": 10, "NETLINK_EXT_ACK": 11,
                   "NETLINK_GET_STRICT_CHK": 12}
#: buffer sizes given back when not the default (engine.kernel.tcprepair.buffer_options)
BUFFER_OPTIONS = ("SO_SNDBUF", "SO_RCVBUF")


@dataclass
class NetlinkSocketState:
    """A netlink socket: type (SOCK_RAW or SOCK_DGRAM), protocol, its port id (0: never
    bound), the multicast groups it joined, the default destination set by connect()
    (port id and group; 0 0: none) and its options (NETLINK_OPTIONS and BUFFER_OPTIONS
    names -> value)."""

    type: int
    protocol: int
    portid: int
    groups: list[int]
    dst_portid: int
    dst_group: int
    options: dict[str, int]
    bpf_filter: str = ""  # as InetSocketState's
    filter_locked: bool = False

    def validate(self) -> None:
        """Type, protocol and numbers in range; options known."""
        check_filter(self.bpf_filter)
        _check(self.type in (2, 3), f"netlink socket type {self.type} unknown")
        _check(0 <= self.protocol < 32, f"netlink protocol {self.protocol} out of range")
        for n in (self.portid, self.dst_portid, self.dst_group):
            _check(0 <= n < 1 << 32, "netlink port id or group out of range")
        _check(all(0 < g < 1 << 32 for g in self.groups), "netlink group out of range")
        for name in self.options:
            _check(name in NETLINK_OPTIONS or name in BUFFER_OPTIONS,
                   f"netlink socket option {name} unknown")


#: packet socket options given back (linux/if_packet.h, level SOL_PACKET): name -> number
PACKET_OPTIONS = {"PACKET_AUXDATA": 8, "PACKET_ORIGDEV": 9, "PACKET_VERSION": 10,
                  "PACKET_RESERVE": 12, "PACKET_LOSS": 14, "PACKET_VNET_HDR": 15,
                  "PACKET_TIMESTAMP": 17, "PACKET_QDISC_BYPASS": 20,
                  "PACKET_IGNORE_OUTGOING": 23}


@dataclass
class PacketSocketState:
    """A packet socket: type (SOCK_RAW or SOCK_DGRAM), the protocol it was made with
    (network byte order, as socket() took it), the interface it is bound to ("" none) with
    the protocol of the binding (host order), and its options (PACKET_OPTIONS and the
    SOL_SOCKET ones of engine.kernel.tcprepair, name -> value)."""

    type: int
    protocol: int
    ifname: str
    bound_protocol: int
    options: dict[str, int]
    bpf_filter: str = ""  # as InetSocketState's
    filter_locked: bool = False

    def validate(self) -> None:
        """Type known, protocols 16-bit."""
        check_filter(self.bpf_filter)
        _check(self.type in (2, 3), f"packet socket type {self.type} unknown")
        _check(0 <= self.protocol < 1 << 16 and 0 <= self.bound_protocol < 1 << 16,
               "packet socket protocol out of range")
        _check(len(self.ifname) < 16, "packet socket interface name too long")


#: POSIX message queue limits (ipc/mqueue.c HARD_MSGMAX, HARD_MSGSIZEMAX, MQ_PRIO_MAX)
MQ_MAXMSG_MAX = 65536
MQ_MSGSIZE_MAX = 1 << 24
MQ_PRIO_MAX = 32768
MQ_NAME_MAX = 255


@dataclass
class MqueueState:
    """A POSIX message queue: its name (without the leading "/"), mq_maxmsg and
    mq_msgsize, its file's mode, owner (as the dumper sees ids) and times, and the
    priority and size of each queued message in receive order; the record's content holds
    their data back to back (once per queue: every description of it names the same
    file). Whether it was linked is the record's `deleted`."""

    name: str
    maxmsg: int
    msgsize: int
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    prios: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    def validate(self) -> None:
        """A name mq_open takes, limits the kernel allows, messages that fit them."""
        _check(0 < len(self.name) <= MQ_NAME_MAX and "/" not in self.name
               and "\0" not in self.name and self.name not in (".", ".."),
               f"mqueue name {self.name!r} is not one mq_open takes")
        _check(0 < self.maxmsg <= MQ_MAXMSG_MAX and 0 < self.msgsize <= MQ_MSGSIZE_MAX,
               f"mqueue {self.name}: limits {self.maxmsg}/{self.msgsize} out of range")
        _check(0 <= self.mode <= 0o7777 and min(self.uid, self.gid) >= 0
               and max(self.uid, self.gid) < 0xFFFFFFFF, f"mqueue {self.name}: bad owner")
        _check(0 <= self.atime_ns < (1 << 63) and 0 <= self.mtime_ns < (1 << 63),
               f"mqueue {self.name}: bad times")
        _check(len(self.prios) == len(self.sizes) <= self.maxmsg,
               f"mqueue {self.name}: {len(self.sizes)} messages, room for {self.maxmsg}")
        _check(all(0 <= p < MQ_PRIO_MAX for p in self.prios)
               and self.prios == sorted(self.prios, reverse=True),
               f"mqueue {self.name}: priorities out of range or out of receive order")
        _check(all(0 <= n <= self.msgsize for n in self.sizes),
               f"mqueue {self.name}: a message larger than mq_msgsize")
