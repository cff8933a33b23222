"""The pod daemon keeps serving under hostile load (SECURITY.md, "Crashes and
load"; ARCHITECTURE.md, "The daemon's threads").

A sockaddr in a PeaFS mapping: bind() is mediated, and the supervisor copies
the caller's address with process_vm_readv. When the address lies in an
mmap of a PeaFS file whose page was never read, that copy faults into FUSE.
With the file system served on the supervisor's own thread, nothing could
answer the fault: PeaFS, the supervisor and `pod stop` hung until the
daemon was killed. PeaFS now serves from a thread of its own.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess

BIND_FROM_MAPPING = r'''
import ctypes, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
PROT_READ, MAP_PRIVATE = 1, 2
fd = os.open(sys.argv[1], os.O_RDONLY)
addr = libc.mmap(None, 4096, PROT_READ, MAP_PRIVATE, fd, 0)
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
# The page is not touched here: the first read of it is the supervisor's.
r = libc.bind(s.fileno(), ctypes.c_void_p(addr), 16)
err = ctypes.get_errno()
print(json.dumps({"bind": "OK" if r == 0 else os.strerror(err),
                  "port": s.getsockname()[1] if r == 0 else None}))
'''


def test_a_sockaddr_in_an_unread_peafs_mapping_does_not_hang_the_daemon(pods):
    pod = pods.start()
    # Written on the host side: the pod has never read it, so its page is in
    # no FUSE cache and the copy must go through PeaFS.
    (pod.root / "srv").mkdir(mode=0o755)
    sa = struct.pack("=HH4s8x", socket.AF_INET, 0, socket.inet_aton("127.0.0.1"))
    (pod.root / "srv" / "addr").write_bytes(sa + b"\0" * (4096 - len(sa)))
    try:
        r = pod.py(BIND_FROM_MAPPING, "/srv/addr", timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError("bind() with a sockaddr in a PeaFS mapping hung the pod daemon")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["bind"] == "OK" and got["port"] > 0, got
    # The daemon still serves files and control requests afterwards.
    assert pod.exec("/bin/cat", "/etc/group").returncode == 0
    assert pod.stop().returncode == 0

