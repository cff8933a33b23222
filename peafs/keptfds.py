"""Kept read descriptors: one read-only open of each regular file, shared by
the plain read-only opens of every pea (each gets its own dup of it).

Why: an OPEN used to re-open the node's O_PATH descriptor through
/proc/self/fd/N, a path walk through procfs: 4.1 us with its close in
Python here, against 0.5 us for a dup and its close. A static GET of the
web example is exactly one OPEN and one RELEASE, and py-spy put that
re-open at 13% of the PeaFS thread's samples on the static page.

Why sharing cannot widen a pea's rights: the pea's rule is checked by
PeaFS's open() before a descriptor is handed out, on every open, exactly
as before; only the kernel's open file description is shared, and only
where no caller can tell:

- plain read-only opens of regular files on the staging root's file
  system (the open's flags, besides O_LARGEFILE and O_CLOEXEC, are
  O_RDONLY and nothing else). A description carries its status flags
  (O_APPEND, O_NONBLOCK, O_NOATIME), which would then be shared; opens
  that ask for any take their own, as before. (O_DIRECT and the exec flag
  never reach our descriptors: fs.py's _real_flags drops them, so an
  exec's open, which the kernel reads the program through, shares too.)
- A description also carries a file offset and flock() locks. PeaFS reads
  at explicit offsets (pread), and it implements no lock operations: the
  kernel keeps a FUSE file's locks on its own file objects, never on our
  descriptors.
- Per node id, and node ids never name a second object
  (peafs/inodes.py). A file changed through another open, or renamed, is
  the same inode, read through the same description as separate opens
  would read it.

The set is bounded (least recently used first out), and a node's kept
descriptor is closed with the node's O_PATH descriptor, when the inode
table's cache evicts it or the kernel forgets the node
(InodeTable.take_kept). So the daemon pins no inode it did not pin before:
an unlinked file's blocks are not held past that, and a freed inode number
can be reused as before (tests/peafs/test_inode_reuse.py needs it to be).
Only the trio thread that runs the handlers touches the set.
"""

from __future__ import annotations

import os
from collections import OrderedDict

# 0o100000: the kernel adds O_LARGEFILE to every open on 64-bit; Python's
# os.O_LARGEFILE is 0 there, so it is named by value.
O_LARGEFILE = 0o100000
SHAREABLE = os.O_RDONLY | os.O_CLOEXEC
DEFAULT_KEPT = 256


def shareable(real_flags: int) -> bool:
    """Whether an open with these flags (after PeaFS's _real_flags) may be
    served from a kept description."""
    return real_flags & ~O_LARGEFILE == SHAREABLE


class KeptReaders:
    """node id -> one O_RDONLY descriptor of that node, least recently used
    first; ``open`` hands out a dup of it."""

    def __init__(self, size: int = DEFAULT_KEPT):
        self.size = size
        self._fds: OrderedDict[int, int] = OrderedDict()

    def open(self, node_id: int, proc_path: str) -> int:
        """A new descriptor (close-on-exec) sharing the kept read-only
        description of ``node_id``; ``proc_path`` re-opens the node when
        none is kept."""
        fd = self._fds.get(node_id)
        if fd is None:
            fd = os.open(proc_path, SHAREABLE)
            self._fds[node_id] = fd
            if len(self._fds) > self.size:
                _, oldest = self._fds.popitem(last=False)
                os.close(oldest)
        else:
            self._fds.move_to_end(node_id)
        return os.dup(fd)

    def take(self, node_id: int) -> int | None:
        """Stop keeping ``node_id``'s descriptor and hand it to the caller,
        who closes it (InodeTable, with the node's O_PATH descriptor)."""
        return self._fds.pop(node_id, None)

    def close(self) -> None:
        fds, self._fds = self._fds, OrderedDict()
        for fd in fds.values():
            os.close(fd)

    def __len__(self) -> int:
        return len(self._fds)
