"""Thin ctypes wrappers for the kernel calls Python 3.11 does not expose
and only pods needs (unshare, pidfd_getfd, openat2 and the CLONE_* flags,
which peafs uses too, are in kernel/libc.py).

setns, mount, umount2, pivot_root, prctl, sethostname, mount_setattr: each
raises OSError with the kernel's errno (kernel.libc.check), so callers (and
tests) can assert exact errors. Nothing here decides policy; the callers
comment why each call is made.
"""

from __future__ import annotations

import ctypes
import os
import signal

from kernel.libc import AT_EMPTY_PATH, check

# The C library already loaded into this process (CDLL(None)): find_library
# would run ldconfig in a subprocess, milliseconds on every pod exec.
_libc = ctypes.CDLL(None, use_errno=True)

# <sys/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24

# <linux/capability.h>
CAP_SYS_PTRACE = 19

# x86_64 syscall numbers
_SYS_pivot_root = 155

_libc.syscall.restype = ctypes.c_long


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace(s) of ``fd``: a /proc/PID/ns/* file or a pidfd
    (then ``nstype`` is a set of CLONE_NEW* flags, joined atomically)."""
    check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)))


def _b(s):
    if s is None:
        return None
    return os.fsencode(s)


def mount(source, target, fstype, flags: int = 0, data: str | None = None) -> None:
    rc = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    check(rc, os.fsdecode(target))


def umount2(target, flags: int = 0) -> None:
    check(_libc.umount2(_b(target), ctypes.c_int(flags)), os.fsdecode(target))


def pivot_root(new_root, put_old) -> None:
    rc = _libc.syscall(ctypes.c_long(_SYS_pivot_root), _b(new_root), _b(put_old))
    check(rc, os.fsdecode(new_root))


def prctl(option: int, arg2: int = 0) -> int:
    return check(
        _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(0),
                    ctypes.c_ulong(0), ctypes.c_ulong(0)))


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def sethostname(name: str) -> None:
    b = name.encode()
    check(_libc.sethostname(b, ctypes.c_size_t(len(b))))


_SYS_mount_setattr = 442
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr_tree(fd: int, attr_set: int) -> None:
    """Set mount attributes on the mount at ``fd`` and every mount below it,
    at once (mount_setattr(2) with AT_RECURSIVE, Linux 5.12): unlike a
    remount, which changes one mount, no submount is left writable."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    rc = _libc.syscall(ctypes.c_long(_SYS_mount_setattr), ctypes.c_int(fd), b"",
                       ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE), ctypes.byref(attr),
                       ctypes.c_size_t(ctypes.sizeof(attr)))
    check(rc)

