"""Pod user names: looked up in the pod's own /etc/passwd, from the host.

The file lives in the pod's staging directory, which pod root controls: it
may be a symlink to a host file (/etc/shadow), a FIFO that never ends, or a
huge file. The lookup is made as host root, so it is confined the way the
kernel confines a path walk inside a root: openat2(2) with RESOLVE_IN_ROOT
(symlinks and ".." resolve inside the staging directory) and
RESOLVE_NO_MAGICLINKS (no /proc/self/fd jumps), opened non-blocking, and read
only if it is a regular file, at most PASSWD_MAX bytes.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path

SYS_openat2 = 437           # x86_64 (and every architecture since 5.6)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
PASSWD_MAX = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def open_in_root(root_fd: int, path: str, flags: int) -> int:
    """openat2(root_fd, path, flags) with every path component resolved
    inside ``root_fd``, as a chroot would."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(SYS_openat2, root_fd, os.fsencode(path), ctypes.byref(how),
                       ctypes.sizeof(how))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return fd


class UserError(Exception):
    """A user that cannot be resolved; the message is for the administrator."""


def read_pod_file(root: Path, path: str, limit: int = PASSWD_MAX) -> bytes:
    """The content of ``path`` in the pod whose staging directory is ``root``."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_in_root(root_fd, path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    finally:
        os.close(root_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        data = os.read(fd, limit + 1)
        if len(data) > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", path)
        return data
    finally:
        os.close(fd)


def lookup(root: Path, name: str) -> tuple[int, int]:
    """(uid, gid) of user ``name`` in the pod's /etc/passwd (pod ids)."""
    try:
        data = read_pod_file(root, "/etc/passwd")
    except OSError as e:
        raise UserError(f"cannot read the pod's /etc/passwd: {e.strerror}") from e
    for line in data.decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == name:
            try:
                return int(fields[2]), int(fields[3])
            except ValueError:
                raise UserError(f"user {name!r} has a malformed line in the pod's "
                                f"/etc/passwd") from None
    raise UserError(f"no user {name!r} in the pod's /etc/passwd")
