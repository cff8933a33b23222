"""The last close of an unlinked file, made on a thread of its own.

Why. A pod that unlinks a file through PeaFS removes the staging file's last
name, but the daemon still holds the inode: the node's O_PATH descriptor in
the inode table, and perhaps a kept read descriptor (keptfds.py). The kernel
frees the file (ext4: truncates its blocks, frees the inode, journals both)
in whichever close() drops the last reference, which is ours, made when the
kernel FORGETs the node. On the mail pod that is one close per message (each
queue file is deleted after delivery), measured at ~350 us each (perf, the
ext4:ext4_evict_inode tracepoint with call chains: every one under
close -> __fput, on the PeaFS thread). That thread serves every request of
the pod one at a time, so every request queued behind the close waited it
out. A native unlink pays the same cost, but in the caller that unlinks, not
in everyone's queue.

So ``InodeTable`` hands the descriptors of a node it lets go to
``Closer.close``. Those whose file still has a name (fstat's st_nlink > 0:
nothing is freed by the close, ~1 us) are closed at once. Those of a file
with no name left go to one thread that only closes.

Why it is safe to close later:
- The table clears the node's descriptor before the hand-over, and nothing
  else of ours holds the number. The number is not reused before the
  closer's close(), because the descriptor stays open until then.
- An inode that a descriptor holds cannot be freed, so its number cannot be
  reused meanwhile. Holding it a little longer only delays the reuse that
  tests/peafs/test_inode_reuse.py guards against; InodeTable._same never
  trusts a key hit for an entry without a descriptor anyway.
- A FORGET has no reply. The kernel waits for nothing here.
- An unlinked file keeps its blocks until the close, as it would while any
  process of the pod kept it open. The queue is drained by ``stop`` when the
  session ends (session.py), so nothing is pinned past the mount.
"""

from __future__ import annotations

import os
import queue
import sys
import threading


class Closer:
    """Closes descriptors handed over by the inode table: at once, or on
    the closer thread when the close would free an unlinked file.

    ``close`` and ``stop`` are called by the thread that owns the inode
    table (the session's, which also ends it), never concurrently: the
    thread is started and ended without a lock."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def close(self, fds: list[int]) -> None:
        """Close ``fds`` (descriptors of one object; the first is the one
        fstat asks about). They are ours no more when this returns."""
        try:
            unlinked = os.fstat(fds[0]).st_nlink == 0
        except OSError:
            unlinked = False
        if not unlinked:
            for fd in fds:
                os.close(fd)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="peafs-close", daemon=True)
            self._thread.start()
        self._queue.put(fds)

    def _run(self) -> None:
        while True:
            fds = self._queue.get()
            if fds is None:
                return
            for fd in fds:
                try:
                    os.close(fd)
                except OSError as e:
                    # EBADF would be a descriptor closed twice: a bug of ours,
                    # reported, never a reason to stop closing the others.
                    print(f"peafs: closing descriptor {fd} of an unlinked file: {e}",
                          file=sys.stderr, flush=True)

    def stop(self, timeout: float = 30.0) -> None:
        """Close everything handed over so far and end the thread (the end
        of the session). Idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)
