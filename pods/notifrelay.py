"""The supervisor's receiving thread (pods/notif_relay.c), seen from Python.

    relay = Relay()                 # starts the thread
    serial = relay.add(listener)    # the thread receives from it from now on
    relay.arm(tgid, pidfd)          # its alarm()s are continued by the thread
    for rec in relay.read(): ...    # everything else, when relay.fileno is readable;
        relay.done()                # after each NOTIF record: room for the next
    relay.remove(listener)          # then the caller may close it
    relay.close()

Why a thread of C: notif_relay.c's comment. What it answers alone is the
supervisor's rule for a noted process's repeated alarm() (see
``Supervisor._armed_already``); every other notification comes out of
``read()`` exactly as NOTIF_RECV gave it, tagged with its listener and the
serial of that listener's registration. The library is built into the venv
by `make deps`, like PeaFS's (peafs/fusecaps.py).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from pods import notify

LIBRARY = Path(sys.prefix) / "lib" / "peapod" / "notif_relay.so"

# struct record: fd, serial, kind, error, then struct seccomp_notif.
_HEAD = struct.Struct("<iIii")
RECORD_SIZE = _HEAD.size + notify.NOTIF_SIZE
NOTIF, HUP, ERROR = 1, 2, 3

_lib: ctypes.CDLL | None = None


class RelayUnavailable(OSError):
    """The relay library is missing or could not start its thread."""


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is not None:
        return _lib
    if not LIBRARY.exists():
        raise RelayUnavailable(errno.ENOENT, f"{LIBRARY} is missing: the pod's seccomp "
                               "supervisor receives through it; build it with `make deps` "
                               "in the checkout")
    try:
        lib = ctypes.CDLL(str(LIBRARY), use_errno=True)
    except OSError as e:
        raise RelayUnavailable(errno.ENOEXEC, f"cannot load {LIBRARY}: {e}; rebuild it "
                               "with `make deps`") from None
    lib.relay_new.restype = ctypes.c_void_p
    lib.relay_new.argtypes = [ctypes.c_int]
    lib.relay_add.restype = ctypes.c_long
    for name in ("relay_arm", "relay_would_continue"):
        getattr(lib, name).restype = ctypes.c_int
    for name in ("relay_remove", "relay_disarm", "relay_stop", "relay_counts", "relay_done"):
        getattr(lib, name).restype = None
    lib.relay_add.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.relay_remove.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.relay_arm.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.relay_disarm.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.relay_would_continue.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.relay_stop.argtypes = [ctypes.c_void_p]
    lib.relay_done.argtypes = [ctypes.c_void_p]
    lib.relay_counts.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64),
                                 ctypes.POINTER(ctypes.c_uint64)]
    lib.relay_record_size.restype = ctypes.c_uint
    if lib.relay_record_size() != RECORD_SIZE:
        raise RelayUnavailable(errno.EINVAL, f"{LIBRARY} writes records of "
                               f"{lib.relay_record_size()} bytes, not {RECORD_SIZE}: "
                               "rebuild it with `make deps`")
    _lib = lib
    return lib


@dataclass(slots=True)
class Record:
    fd: int
    serial: int
    kind: int                 # NOTIF, HUP (no process uses the filter), ERROR
    error: int                # ERROR: NOTIF_RECV's errno
    note: notify.Notification | None


class Relay:
    def __init__(self):
        lib = _load()
        self._rfd, self._wfd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._rfd, False)
        self._r = lib.relay_new(self._wfd)
        if not self._r:
            e = ctypes.get_errno()
            os.close(self._rfd)
            os.close(self._wfd)
            raise RelayUnavailable(e, f"cannot start the notification relay: {os.strerror(e)}")
        self._lib = lib

    @property
    def fileno(self) -> int:
        """Readable when ``read()`` has records."""
        return self._rfd

    def add(self, fd: int) -> int:
        """Receive from listener ``fd``; its registration's serial."""
        rc = self._lib.relay_add(self._r, fd)
        if rc < 0:
            raise OSError(-rc, f"relay: listener {fd}: {os.strerror(-rc)}")
        return rc

    def remove(self, fd: int) -> None:
        """Stop receiving from ``fd``; on return the thread no longer uses it."""
        self._lib.relay_remove(self._r, fd)

    def arm(self, tgid: int, pidfd: int) -> bool:
        """Continue ``tgid``'s alarm()s while ``pidfd`` (duplicated) lives."""
        return self._lib.relay_arm(self._r, tgid, pidfd) == 0

    def disarm(self, tgid: int) -> None:
        self._lib.relay_disarm(self._r, tgid)

    def would_continue(self, tid: int) -> bool:
        """The thread's own condition for continuing an alarm() of ``tid``."""
        return bool(self._lib.relay_would_continue(self._r, tid))

    def done(self) -> None:
        """A NOTIF record from ``read()`` is decided (or dropped): the thread
        may receive the next notification (notif_relay.c, WINDOW)."""
        self._lib.relay_done(self._r)

    def counts(self) -> tuple[int, int]:
        """(alarm calls continued by the thread, notifications passed on)."""
        fast, passed = ctypes.c_uint64(), ctypes.c_uint64()
        self._lib.relay_counts(self._r, ctypes.byref(fast), ctypes.byref(passed))
        return fast.value, passed.value

    def read(self, most: int = 64) -> list[Record]:
        """The records waiting (at most ``most``); [] if none."""
        try:
            data = os.read(self._rfd, RECORD_SIZE * most)
        except BlockingIOError:
            return []
        out = []
        # Each record is one write of less than PIPE_BUF: reads return whole ones.
        for off in range(0, len(data) - len(data) % RECORD_SIZE, RECORD_SIZE):
            fd, serial, kind, error = _HEAD.unpack_from(data, off)
            note = notify.parse(data[off + _HEAD.size:off + RECORD_SIZE]) if kind == NOTIF else None
            out.append(Record(fd, serial, kind, error, note))
        return out

    def close(self) -> None:
        if self._r is None:
            return
        # The read end first: a thread blocked on a full pipe gets EPIPE
        # and returns to its loop, where it sees the stop.
        os.close(self._rfd)
        self._lib.relay_stop(self._r)
        self._r = None
        os.close(self._wfd)
