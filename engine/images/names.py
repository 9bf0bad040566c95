"""File names inside an image directory (one place, so writer and reader agree)."""

INVENTORY = "inventory.json"
FILES = "files.json"
STATS = "stats.json"
IPC = "ipc.json"


def core(pid: int) -> str:
    """Per-task core record."""
    return f"core-{pid}.json"


def mm(pid: int) -> str:
    """Per-task memory layout record, VMA table and pagemap (ImageDir.write_mm)."""
    return f"mm-{pid}.img"


def pages(pid: int) -> str:
    """Per-task page data."""
    return f"pages-{pid}.img"


def shmem_id(inode: int) -> str:
    """Id of a shared memory object (its shmem inode number)."""
    return f"shmem-{inode}"


def shmem_pagemap(sid: str) -> str:
    """Pagemap of a shared memory object."""
    return f"pagemap-{sid}.img"


def shmem_pages(sid: str) -> str:
    """Page data of a shared memory object."""
    return f"pages-{sid}.img"


def file_content(file_id: int) -> str:
    """Saved content of an unlinked regular file."""
    return f"file-{file_id}.data"


def pipe_content(pipe_ino: int) -> str:
    """Unread data of a pipe (once per pipe, shared by both ends)."""
    return f"pipe-{pipe_ino}.data"


def socket_queue(ino: int) -> str:
    """Data queued for reading on a unix socket (the messages back to back)."""
    return f"sock-{ino}.data"


def sysv_shm_pagemap(shmid: int) -> str:
    """Pagemap of a SysV shared memory segment (offsets into the segment)."""
    return f"pagemap-sysv-{shmid}.img"


def sysv_shm_pages(shmid: int) -> str:
    """Page data of a SysV shared memory segment."""
    return f"pages-sysv-{shmid}.img"


def sysv_msg_content(msqid: int) -> str:
    """The messages of a SysV message queue, back to back."""
    return f"msg-{msqid}.data"


def mqueue_content(ino: int) -> str:
    """The messages of a POSIX message queue, back to back (once per queue)."""
    return f"mqueue-{ino}.data"
