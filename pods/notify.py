"""seccomp user notification: the ioctls on a listener fd, and the few
process system calls the supervisor needs (pidfds, reading a caller's memory).

Structures (include/uapi/linux/seccomp.h):
  struct seccomp_data       { int nr; u32 arch; u64 ip; u64 args[6]; }      64 bytes
  struct seccomp_notif      { u64 id; u32 pid; u32 flags; seccomp_data; }   80
  struct seccomp_notif_resp { u64 id; s64 val; s32 error; u32 flags; }      24
  struct seccomp_notif_addfd{ u64 id; u32 flags, srcfd, newfd, newfd_flags} 24
The kernel reports its own sizes (SECCOMP_GET_NOTIF_SIZES); :func:`check_sizes`
refuses to run against a kernel whose structures differ.

``pid`` in a notification is the calling *thread*, in the pid namespace of
the process that receives the notification (the supervisor: the host).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from dataclasses import dataclass

from kernel.libc import check

# The C library already loaded into this process (CDLL(None)): find_library
# would run ldconfig in a subprocess, milliseconds on every pod exec.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("!") << 8) | nr


NOTIF_SIZE, RESP_SIZE, DATA_SIZE, ADDFD_SIZE = 80, 24, 64, 24
IOCTL_RECV = _ioc(3, 0, NOTIF_SIZE)
IOCTL_SEND = _ioc(3, 1, RESP_SIZE)
IOCTL_ID_VALID = _ioc(1, 2, 8)
IOCTL_ADDFD = _ioc(1, 3, ADDFD_SIZE)
IOCTL_SET_FLAGS = _ioc(1, 4, 8)
USER_NOTIF_FD_SYNC_WAKE_UP = 1

FLAG_CONTINUE = 1
ADDFD_FLAG_SETFD = 1
ADDFD_FLAG_SEND = 2

_SYS_seccomp = 317
_SYS_pidfd_open = 434
_SYS_pidfd_send_signal = 424
PIDFD_THREAD = os.O_EXCL          # pidfd_open: a pidfd of one thread (Linux 6.9)
PIDFD_SIGNAL_THREAD = 1 << 0
PIDFD_SIGNAL_THREAD_GROUP = 1 << 1
PIDFD_SIGNAL_PROCESS_GROUP = 1 << 2

_NOTIF = struct.Struct("<QIIiIQ6Q")
_RESP = struct.Struct("<QqiI")
_ADDFD = struct.Struct("<QIIII")


def check_sizes() -> None:
    """Refuse a kernel whose notification structures are not the ones above."""
    sizes = (ctypes.c_ushort * 3)()
    if _libc.syscall(ctypes.c_long(_SYS_seccomp), ctypes.c_uint(3), ctypes.c_uint(0),
                     ctypes.byref(sizes)) < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"seccomp(SECCOMP_GET_NOTIF_SIZES): {os.strerror(e)} "
                         "(seccomp user notification needs Linux >= 5.0)")
    got = tuple(sizes)
    if got[0] < NOTIF_SIZE or got[1] < RESP_SIZE or got[2] != DATA_SIZE:
        raise OSError(errno.EINVAL, f"unexpected seccomp notification sizes {got}")


@dataclass(slots=True)
class Notification:
    id: int
    pid: int          # calling thread, host tid
    nr: int
    arch: int
    args: tuple

    def arg_int(self, i: int) -> int:
        """Argument i as the kernel reads an ``int`` (low word, signed)."""
        v = self.args[i] & 0xFFFFFFFF
        return v - (1 << 32) if v & 0x80000000 else v

    def arg_uint(self, i: int) -> int:
        return self.args[i] & 0xFFFFFFFF


def recv(fd: int) -> Notification:
    """SECCOMP_IOCTL_NOTIF_RECV. The buffer must be zeroed (the kernel checks).
    Raises OSError(ENOENT) if the caller went away between poll and recv."""
    buf = bytearray(NOTIF_SIZE)
    fcntl.ioctl(fd, IOCTL_RECV, buf, True)
    return parse(buf)


def parse(buf) -> Notification:
    """A struct seccomp_notif, as NOTIF_RECV fills it."""
    nid, pid, _flags, nr, arch, _ip, *args = _NOTIF.unpack(buf)
    return Notification(nid, pid, nr, arch, tuple(args))


def respond(fd: int, nid: int, val: int = 0, error: int = 0, cont: bool = False) -> bool:
    """SECCOMP_IOCTL_NOTIF_SEND: the call returns ``val``, or fails with
    ``error`` (a positive errno), or (cont) runs in the kernel as made.
    Returns False if the caller is gone (ENOENT), which is not an error."""
    buf = bytearray(_RESP.pack(nid, val, -error if error else 0, FLAG_CONTINUE if cont else 0))
    try:
        fcntl.ioctl(fd, IOCTL_SEND, buf, True)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def id_valid(fd: int, nid: int) -> bool:
    """True while the notification ``nid`` is pending: its caller is alive and
    still waiting, so its pid has not been reused."""
    try:
        fcntl.ioctl(fd, IOCTL_ID_VALID, bytearray(struct.pack("<Q", nid)), True)
        return True
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise


def addfd_send(fd: int, nid: int, srcfd: int, cloexec: bool = True) -> int | None:
    """Install ``srcfd`` into the caller and make it the call's result,
    atomically (SECCOMP_ADDFD_FLAG_SEND). None if the caller is gone."""
    buf = bytearray(_ADDFD.pack(nid, ADDFD_FLAG_SEND, srcfd, 0, os.O_CLOEXEC if cloexec else 0))
    try:
        return fcntl.ioctl(fd, IOCTL_ADDFD, buf, True)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise


def set_sync_wakeup(fd: int) -> bool:
    """Ask the kernel to wake the supervisor and the caller on the current
    CPU (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, Linux 6.6): a mediated call is
    a synchronous round trip, and on this 2-CPU VM the cross-CPU wake-ups
    were most of it: 51-55 us per round trip without the flag, 7-14 us with
    it (a thread or a trio task answering 5000 alarm() calls of a C loop
    with CONTINUE).

    The flags are the ioctl's argument itself, not a pointer to them: a
    pointer was passed here until 2026-12-03, and every call failed with
    EINVAL unnoticed. Returns False when the kernel refuses (before 6.6 the
    request is unknown: EINVAL); the flag only speeds things up."""
    try:
        fcntl.ioctl(fd, IOCTL_SET_FLAGS, USER_NOTIF_FD_SYNC_WAKE_UP)
        return True
    except OSError:
        return False


# ------------------------------------------------------------ pidfds
def pidfd_open(pid: int, flags: int = 0) -> int:
    return check(_libc.syscall(ctypes.c_long(_SYS_pidfd_open), ctypes.c_int(pid),
                               ctypes.c_uint(flags)))


def pidfd_send_signal(pidfd: int, sig: int, info: bytes | None = None, flags: int = 0) -> None:
    infobuf = ctypes.create_string_buffer(info, 128) if info is not None else None
    check(_libc.syscall(ctypes.c_long(_SYS_pidfd_send_signal), ctypes.c_int(pidfd),
                        ctypes.c_int(sig), infobuf, ctypes.c_uint(flags)))


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc.process_vm_readv.restype = ctypes.c_ssize_t


def read_mem(pid: int, addr: int, size: int) -> bytes:
    """Copy ``size`` bytes at ``addr`` out of process ``pid`` (one copy: the
    supervisor decides on these bytes and never reads the caller's memory
    again). Short reads raise EFAULT, as the kernel would for the caller."""
    if size == 0:
        return b""
    buf = ctypes.create_string_buffer(size)
    local = _IOVec(ctypes.cast(buf, ctypes.c_void_p), size)
    remote = _IOVec(addr, size)
    n = _libc.process_vm_readv(ctypes.c_int(pid), ctypes.byref(local), ctypes.c_ulong(1),
                               ctypes.byref(remote), ctypes.c_ulong(1), ctypes.c_ulong(0))
    if n < 0:
        e = ctypes.get_errno()
        if e == errno.ESRCH:
            raise OSError(e, "caller gone")
        raise OSError(errno.EFAULT, "bad address in the caller")
    if n != size:
        raise OSError(errno.EFAULT, "bad address in the caller")
    return buf.raw


# PIDFD_GET_INFO (Linux 6.13): a pinned process's pids, credentials and cgroup id.
_PIDFD_INFO = struct.Struct("<QQIIIIIIIIIIIiII")
PIDFD_GET_INFO = (3 << 30) | (_PIDFD_INFO.size << 16) | (0xFF << 8) | 11
PIDFD_INFO_PID, PIDFD_INFO_CREDS, PIDFD_INFO_CGROUPID = 1, 2, 4


@dataclass(slots=True)
class PidfdInfo:
    cgroupid: int
    pid: int
    tgid: int
    ruid: int
    euid: int
    suid: int
    rgid: int
    egid: int
    sgid: int


def pidfd_info(pidfd: int) -> PidfdInfo:
    """Facts about the process a pidfd pins, in the supervisor's namespaces
    (host pids and ids). ESRCH once that process has been reaped."""
    buf = bytearray(_PIDFD_INFO.pack(PIDFD_INFO_PID | PIDFD_INFO_CREDS | PIDFD_INFO_CGROUPID,
                                     *([0] * 15)))
    fcntl.ioctl(pidfd, PIDFD_GET_INFO, buf, True)
    (mask, cgid, pid, tgid, _ppid, ruid, rgid, euid, egid, suid, sgid,
     _fsuid, _fsgid, _exit, _cd, _sp) = _PIDFD_INFO.unpack(buf)
    return PidfdInfo(cgid if mask & PIDFD_INFO_CGROUPID else 0, pid, tgid,
                     ruid, euid, suid, rgid, egid, sgid)
