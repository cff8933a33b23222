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
