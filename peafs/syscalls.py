"""System calls Python's os module lacks, through ctypes on libc.

Each wrapper raises OSError with the real errno, like the os module does, so
callers handle them the same way.
"""

from __future__ import annotations

import ctypes
import errno
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
        err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EOVERFLOW):
            return None
        raise OSError(err, f"name_to_handle_at: {os.strerror(err)}")
    raw = fh.handle_type.to_bytes(4, "little", signed=True) + bytes(fh.f_handle[:fh.handle_bytes])
    return raw, mnt.value


def open_by_handle(mount_fd: int, handle: bytes, flags: int) -> int:
    """A new descriptor on the object ``handle`` (from ``handle_of``) names."""
    fh = _FileHandle()
    body = handle[4:]
    fh.handle_type = int.from_bytes(handle[:4], "little", signed=True)
    fh.handle_bytes = len(body)
    ctypes.memmove(fh.f_handle, body, len(body))
    fd = _libc.open_by_handle_at(mount_fd, ctypes.byref(fh), flags)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_by_handle_at: {os.strerror(err)}")
    return fd


# openat2(2), for opening a file inside a tree someone else controls: with
# RESOLVE_IN_ROOT the kernel resolves the path as if dirfd were "/", so
# ".." and absolute symlinks stop at that directory instead of reaching the
# host's. Used by host root to read a pod's /etc/passwd from its staging
# directory, where pod root may plant a link to /etc/shadow. The syscall
# number is 437 on every architecture of the unified table; libc has no
# wrapper (glibc 2.36 neither), hence syscall(2). (pods/namespaces.py has
# open_no_symlinks, the AT_FDCWD / RESOLVE_NO_SYMLINKS case of the same call.)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = 437


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc.syscall.restype = ctypes.c_long


def openat2(dirfd: int, path: str | bytes, flags: int, resolve: int, mode: int = 0) -> int:
    """A new descriptor on ``path`` relative to ``dirfd``, resolved under the
    RESOLVE_* rules in ``resolve`` (ENOSYS before Linux 5.6)."""
    how = _OpenHow(flags & 0xFFFFFFFFFFFFFFFF, mode, resolve)
    fd = _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd),
                       ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                       ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fsdecode(path))
    return fd
