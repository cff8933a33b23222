"""The pod daemon keeps serving under hostile load (SECURITY.md, "Crashes and
load"; ARCHITECTURE.md, "The daemon's threads").

A mediated call's argument in a PeaFS mapping: the supervisor copies it
from the caller with process_vm_readv (bind's sockaddr, until bind moved
into the kernel; pidfd_send_signal's siginfo now). When it lies in an mmap
of a PeaFS file whose page was never read, that copy faults into FUSE.
With the file system served on the supervisor's own thread, nothing could
answer the fault: PeaFS, the supervisor and `pod stop` hung until the
daemon was killed. PeaFS now serves from a thread of its own.
"""

from __future__ import annotations

import json
import struct
import subprocess

SIGINFO_FROM_MAPPING = r'''
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.syscall.restype = ctypes.c_long
PROT_READ, MAP_PRIVATE, SYS_pidfd_send_signal = 1, 2, 424
fd = os.open(sys.argv[1], os.O_RDONLY)
addr = libc.mmap(None, 4096, PROT_READ, MAP_PRIVATE, fd, 0)
pidfd = os.pidfd_open(os.getpid())
# The page is not touched here: the first read of it is the supervisor's.
r = libc.syscall(ctypes.c_long(SYS_pidfd_send_signal), ctypes.c_int(pidfd), ctypes.c_int(0),
                 ctypes.c_void_p(addr), ctypes.c_uint(0))
err = ctypes.get_errno()
print(json.dumps({"pidfd_send_signal": "OK" if r == 0 else os.strerror(err)}))
'''


def test_an_argument_in_an_unread_peafs_mapping_does_not_hang_the_daemon(pods):
    pod = pods.start()
    # Written on the host side: the pod has never read it, so its page is in
    # no FUSE cache and the copy must go through PeaFS. A siginfo for signal
    # 0 (si_signo 0, si_code SI_QUEUE): a probe, the kernel delivers nothing.
    (pod.root / "srv").mkdir(mode=0o755)
    info = struct.pack("=iii", 0, 0, -1)
    (pod.root / "srv" / "info").write_bytes(info + b"\0" * (4096 - len(info)))
    try:
        r = pod.py(SIGINFO_FROM_MAPPING, "/srv/info", timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError("a siginfo in a PeaFS mapping hung the pod daemon")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"pidfd_send_signal": "OK"}
    # The daemon still serves files and control requests afterwards.
    assert pod.exec("/bin/cat", "/etc/group").returncode == 0
    assert pod.stop().returncode == 0

