"""System calls only PeaFS needs that Python's os module lacks, through
ctypes on libc (those pods needs too are in kernel/libc.py).

Each wrapper raises OSError with the real errno, like the os module does
(kernel.libc.check), so callers handle them the same way.
"""

from __future__ import annotations

import ctypes
import errno
import os

from kernel.libc import AT_EMPTY_PATH, AT_FDCWD, check

_libc = ctypes.CDLL(None, use_errno=True)   # the loaded libc; find_library runs ldconfig

RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1

_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_libc.fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int]


def renameat2(olddirfd: int, oldname: bytes, newdirfd: int, newname: bytes, flags: int) -> None:
    """rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE, relative to dir fds."""
    check(_libc.renameat2(olddirfd, oldname, newdirfd, newname, flags))


def fchown_fd(fd: int, uid: int, gid: int) -> None:
    """chown the inode behind ``fd`` itself, O_PATH descriptors and symlinks
    included (fchownat with AT_EMPTY_PATH never follows anything)."""
    check(_libc.fchownat(fd, b"", uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, AT_EMPTY_PATH))


# statx(2), for one purpose: identify the file behind a magic link such as
# /proc/PID/exe *without* a FUSE round trip. With AT_STATX_DONT_SYNC the
# kernel answers from what it has cached (FUSE: the node id we gave and the
# connection's device), so the daemon can ask about its own mount from its
# own request loop without waiting on itself.
AT_STATX_DONT_SYNC = 0x4000
STATX_INO = 0x100
_STATX_SIZE = 256
_libc.statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]


def statx_ino_dev(path: str) -> tuple[int, int]:
    """(st_ino, st_dev) of ``path`` (links followed) from the kernel's cache."""
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    check(_libc.statx(AT_FDCWD, os.fsencode(path), AT_STATX_DONT_SYNC, STATX_INO, buf), path)
    raw = buf.raw
    ino = int.from_bytes(raw[32:40], "little")
    major = int.from_bytes(raw[136:140], "little")
    minor = int.from_bytes(raw[140:144], "little")
    return ino, os.makedev(major, minor)


# File handles (name_to_handle_at/open_by_handle_at): how the inode table
# names an object without holding a descriptor on it. A handle carries the
# inode's generation, so once the object is gone it opens nothing (ESTALE),
# never a newer file that reused the inode number. Opening one needs
# CAP_DAC_READ_SEARCH (the daemon is host root) and a descriptor on the same
# mount that is not O_PATH (the kernel refuses those with EBADF).
MAX_HANDLE_SZ = 128


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ)]


_libc.name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p,
                                    ctypes.c_void_p, ctypes.c_int]
_libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]


def handle_of(fd: int, name: str | bytes = b"") -> tuple[bytes, int] | None:
    """(handle, mount id) of the object behind ``fd`` (O_PATH is fine), or
    of ``fd``/``name`` (a symlink itself, never followed), or None where the
    file system cannot make handles (EOPNOTSUPP)."""
    fh = _FileHandle()
    fh.handle_bytes = MAX_HANDLE_SZ
    mnt = ctypes.c_int()
    if _libc.name_to_handle_at(fd, os.fsencode(name), ctypes.byref(fh), ctypes.byref(mnt),
                               0 if name else AT_EMPTY_PATH):
        if ctypes.get_errno() in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EOVERFLOW):
            return None
        check(-1)   # raise the errno the call left
    raw = fh.handle_type.to_bytes(4, "little", signed=True) + bytes(fh.f_handle[:fh.handle_bytes])
    return raw, mnt.value


def open_by_handle(mount_fd: int, handle: bytes, flags: int) -> int:
    """A new descriptor on the object ``handle`` (from ``handle_of``) names."""
    fh = _FileHandle()
    body = handle[4:]
    fh.handle_type = int.from_bytes(handle[:4], "little", signed=True)
    fh.handle_bytes = len(body)
    ctypes.memmove(fh.f_handle, body, len(body))
    return check(_libc.open_by_handle_at(mount_fd, ctypes.byref(fh), flags))

