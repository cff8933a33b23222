"""Opens for writing only are uncached (FOPEN_DIRECT_IO): what that must not
change.

Why they are uncached (fs.py, ``_direct_io``): a write through the page
cache makes the kernel ask GETXATTR security.capability before every write
(file_remove_privs; FUSE never marks an inode S_NOSEC), one more round trip
through the daemon's one request thread per write; a direct write does not.
What the kernel then no longer does for us, and these tests hold PeaFS to:

- dropping set-id bits: a write by a process without CAP_FSETID in the
  host's namespace (every pod process) clears S_ISUID and S_ISGID, which
  the kernel does for a cached write with a SETATTR; a direct write only
  carries FUSE_WRITE_KILL_SUIDGID, which pyfuse3 does not hand to us. A
  set-id file left so on disk after the pod rewrote it is a host binary
  of the pod's making (fs.no_setid: why none may exist);
- coherence: readers of the same file that hold its pages (an earlier
  read, a shared mapping) see what was written.
"""

from __future__ import annotations

import os
import stat

from helpers_peafs import run_snippet

POLICY = '[pea.all.files]\n"/" = "rwx"\n'


def test_a_setid_file_rewritten_by_the_pod_loses_its_bits(peafs_mount):
    """A set-id file already in the root (a Debian image has some), world
    writable here so that a pod user may write it: written through the
    mount by pod user 1000, it must come out without S_ISUID and S_ISGID
    on disk, as a write on a native file system leaves it. Fails with
    every write-only open uncached (the bits stay: 0o106777)."""
    m = peafs_mount(POLICY)
    for name in ("w", "a", "rw"):
        p = m.root / name
        p.write_bytes(b"#!/bin/sh\n")
        os.chmod(p, 0o6777)
    out = run_snippet(m, "all", r'''
for name, flags in (("w", os.O_WRONLY), ("a", os.O_WRONLY | os.O_APPEND), ("rw", os.O_RDWR)):
    fd = os.open(name, flags)
    os.write(fd, b"echo pod\n")
    os.close(fd)
out = {n: oct(os.stat(n).st_mode) for n in ("w", "a", "rw")}
''', 1000)
    on_disk = {n: oct(os.stat(m.root / n).st_mode) for n in ("w", "a", "rw")}
    assert on_disk == {n: oct(stat.S_IFREG | 0o777) for n in ("w", "a", "rw")}, on_disk
    assert out == on_disk


def test_readers_holding_pages_see_a_write_only_write(peafs_mount):
    """A reader that has read the file (its pages cached: PeaFS opens keep
    the cache) and a shared read-only mapping of it both see bytes written
    afterwards through a write-only open, as natively."""
    m = peafs_mount(POLICY)
    (m.root / "f").write_bytes(b"old-old-old\n" * 400)
    out = run_snippet(m, "all", r'''
import mmap
r = os.open("f", os.O_RDONLY)
first = os.pread(r, 12, 0)
whole = os.pread(r, 1 << 20, 0)
mm = mmap.mmap(r, 0, mmap.MAP_SHARED, mmap.PROT_READ)
seen = bytes(mm[4800 - 12:])
w = os.open("f", os.O_WRONLY)
os.pwrite(w, b"NEW", 0)
os.pwrite(w, b"END", 4800 - 4)
os.close(w)
a = os.open("f", os.O_WRONLY | os.O_APPEND)
os.write(a, b"tail\n")
os.close(a)
out = {"first": first.decode(), "len": len(whole), "seen": seen.decode(),
       "pread": os.pread(r, 12, 0).decode(), "end": os.pread(r, 20, 4800 - 12).decode(),
       "map": bytes(mm[:12]).decode(), "map_end": bytes(mm[4800 - 12:4800]).decode(),
       "size": os.fstat(r).st_size}
with open("f", "rb") as f:
    out["fresh"] = f.read()[-17:].decode()
''')
    assert out == {"first": "old-old-old\n", "len": 4800, "seen": "old-old-old\n",
                   "pread": "NEW-old-old\n", "end": "old-old-END\ntail\n",
                   "map": "NEW-old-old\n", "map_end": "old-old-END\n", "size": 4805,
                   "fresh": "old-old-END\ntail\n"}
