"""The mounts of the caller's mount namespace, from /proc/self/mountinfo.

One parser for everything that asks "what is mounted where": the cgroup
hierarchies (kernel/cgroup.py, pods/limits.py), whether a path is a mount
(peafs/runtime.py), the device of a PeaFS mount (peafs/session.py), and the
mounts the pod daemon detaches (pods/rootfs.py). Paths in mountinfo escape
space, tab, newline and backslash as octal (\\040 ...); they are decoded
here, so a mount point is compared as the path it is.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

_OCTAL = re.compile(rb"\\([0-7]{3})")


class Mount(NamedTuple):
    point: str          # where it is mounted
    dev: int            # st_dev of its file system
    fstype: str         # "fuse.peafs", "cgroup2", ...
    super_options: str  # the file system's options ("rw,memory" for a v1 cgroup)


def _decode(field: bytes) -> str:
    return _OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field).decode(
        "utf-8", "surrogateescape")


def mounts() -> list[Mount]:
    """Every mount of this namespace, in the kernel's order."""
    out = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            left, _, right = line.rstrip(b"\n").partition(b" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3:
                continue
            major, _, minor = fields[2].partition(b":")
            out.append(Mount(_decode(fields[4]), os.makedev(int(major), int(minor)),
                             tail[0].decode("ascii", "replace"),
                             tail[2].decode("ascii", "replace")))
    return out
