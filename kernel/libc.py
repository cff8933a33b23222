"""System calls Python's os module lacks, through ctypes, and the one way
their failures are raised.

``check`` raises like the os module does: OSError(errno, the system's
words for it[, the path]), so callers catch and compare errno as they would
for os.open, and a message shows the kernel's reason, not ours.
"""

from __future__ import annotations

import ctypes
import os

# The C library already loaded into this process (CDLL(None)): find_library
# would run ldconfig in a subprocess, milliseconds on every pod exec.
# use_errno: ctypes saves errno right after each call, before Python code
# can overwrite it; ctypes.get_errno() reads that copy (per thread, shared
# by every use_errno library object).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# <linux/sched.h>
CLONE_NEWTIME = 0x00000080
CLONE_FS = 0x00000200
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <linux/fcntl.h>
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000

# System call numbers without a libc wrapper (glibc 2.36 has none for
# these). Both are in the unified table added in Linux 5.x, the same
# number on every architecture.
_SYS_openat2 = 437
_SYS_pidfd_getfd = 438


def check(rc: int, *filename) -> int:
    """``rc`` if the call succeeded (>= 0), else OSError(errno, strerror)
    with the errno the call left, and ``filename`` when a path was involved."""
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), *filename)
    return int(rc)


def unshare(flags: int) -> None:
    """unshare(2): new namespaces (CLONE_NEW*) for this process. It must be
    single-threaded for CLONE_NEWUSER (EINVAL otherwise)."""
    check(_libc.unshare(ctypes.c_int(flags)))


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """A duplicate of fd ``targetfd`` of the process behind ``pidfd``
    (Linux 5.6; the kernel checks PTRACE_MODE_ATTACH_REALCREDS on it)."""
    return check(_libc.syscall(ctypes.c_long(_SYS_pidfd_getfd), ctypes.c_int(pidfd),
                               ctypes.c_int(targetfd), ctypes.c_uint(0)))


# openat2(2) (Linux 5.6), for opening a file inside a tree someone else
# controls. With RESOLVE_IN_ROOT the kernel resolves the path as if dirfd
# were "/", so ".." and absolute symlinks stop at that directory instead of
# reaching the host's (host root reading a pod's /etc/passwd from its
# staging directory, where pod root may plant a link to /etc/shadow); with
# RESOLVE_NO_SYMLINKS any symlink on the way fails ELOOP (a privileged
# process opening /dev/pts/ptmx inside a pod).
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    # struct open_how: three __u64, in this order (the kernel checks the size)
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str | bytes, flags: int, resolve: int, mode: int = 0) -> int:
    """A new descriptor on ``path`` relative to ``dirfd`` (or AT_FDCWD),
    resolved under the RESOLVE_* rules in ``resolve``. ``flags`` are used as
    given: add O_CLOEXEC. ENOSYS before Linux 5.6."""
    how = _OpenHow(flags & 0xFFFFFFFFFFFFFFFF, mode, resolve)
    fd = _libc.syscall(ctypes.c_long(_SYS_openat2), ctypes.c_int(dirfd),
                       ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                       ctypes.c_size_t(ctypes.sizeof(how)))
    return check(fd, os.fsdecode(path))


def close_all_but(keep: set[int]) -> None:
    """Close every descriptor from 3 up except those in ``keep``
    (os.closerange is the close_range(2) system call: one call a gap)."""
    low = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 0x7FFFFFFF)
