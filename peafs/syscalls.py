"""System calls Python's os module lacks, through ctypes on libc.

Each wrapper raises OSError with the real errno, like the os module does, so
callers handle them the same way.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)   # the loaded libc; find_library runs ldconfig

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
CLONE_NEWUSER = 0x10000000

_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_libc.fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def renameat2(olddirfd: int, oldname: bytes, newdirfd: int, newname: bytes, flags: int) -> None:
    """rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE, relative to dir fds."""
    _check(_libc.renameat2(olddirfd, oldname, newdirfd, newname, flags), "renameat2")


def fchown_fd(fd: int, uid: int, gid: int) -> None:
    """chown the inode behind ``fd`` itself, O_PATH descriptors and symlinks
    included (fchownat with AT_EMPTY_PATH never follows anything)."""
    _check(_libc.fchownat(fd, b"", uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, AT_EMPTY_PATH), "fchownat")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


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
    _check(_libc.statx(AT_FDCWD, os.fsencode(path), AT_STATX_DONT_SYNC, STATX_INO, buf), "statx")
    raw = buf.raw
    ino = int.from_bytes(raw[32:40], "little")
    major = int.from_bytes(raw[136:140], "little")
    minor = int.from_bytes(raw[140:144], "little")
    return ino, os.makedev(major, minor)
