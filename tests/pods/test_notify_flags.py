"""The listener's flags (pods/notify.py): the supervisor asks for
synchronous wake-ups on every listener, and the kernel takes them."""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import socket

import pytest

from pods import notify, seccomp


def _listener() -> tuple[int, int]:
    """(a listener of the pod's filter, the pid of the child that installed
    it; the child waits until its socket closes)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            fd = seccomp.install(True)
            socket.send_fds(theirs, [b"l"], [fd])
            theirs.recv(1)
        finally:
            os._exit(0)
    theirs.close()
    _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    ours.close()
    return fds[0], pid


def test_sync_wakeup_is_set_on_a_listener():
    release = tuple(int(x) for x in platform.release().split(".")[:2])
    fd, pid = _listener()
    try:
        assert notify.set_sync_wakeup(fd) is (release >= (6, 6)), platform.release()
        # The kernel checks the flags it is given, so the True above means
        # the flag was taken: an unknown flag is refused.
        with pytest.raises(OSError) as e:
            fcntl.ioctl(fd, notify.IOCTL_SET_FLAGS, 2)
        assert e.value.errno == errno.EINVAL
    finally:
        os.close(fd)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
