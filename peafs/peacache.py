"""Which pea is the calling thread in: /proc/TID/cgroup, read once per thread.

Every FUSE request names its caller by thread id. Reading /proc/TID/cgroup
for every request was PeaFS's largest single cost (an open, a read that makes
the kernel format the cgroup path, a close: 42% of the daemon's busy time on
a fork+exec loop, py-spy). This cache keeps, per thread id, a pidfd of that
thread and the pea read when the pidfd was taken.

Why a reused thread id cannot inherit a dead thread's pea: the entry holds a
pidfd of the thread itself (PIDFD_THREAD, Linux 6.9), which keeps naming that
thread whatever happens to the number. A hit is used only if a signal 0
through that pidfd finds the thread alive. While it is alive the number is
not free, so the live caller that carries this number in its request is that
thread. A dead one fails the probe and the entry is read again: the pid-reuse
attack tests (tests/peafs/test_attack_pid_reuse.py) fork a process onto a
freed pid in another pea and must see that pea's rights.

Why a moved process is never judged under its old pea: a thread changes pea
only when PeaFS's exec watch moves it (a committed transition, or a fork
that raced one); the watch calls ``moved()`` after every cgroup write. The
tagger places a new process in its pea before it runs anything, and a
process in no pea is never cached, so it is read again once it has one.
``moved()`` bumps a generation and empties the table under a lock; a miss
records its answer only if no move happened while it read /proc (a read that
raced a move may be stale; the next request reads again). The one other mover is
criu, which restores tasks in the checkpoint cgroup (kernel.cgroup
CHECKPOINT) and moves each into its pea: a thread in that cgroup is never
cached. Moving a pod
process by hand (writing to a pea's cgroup.procs from the host) is not
supported: the cache would keep the old pea for that thread until it exits.

The table is bounded: past ``MAX_ENTRIES`` threads it is emptied (its pidfds
closed) and refilled by the next requests.
"""

from __future__ import annotations

import os
import signal
import threading

from kernel import cgroup

PIDFD_THREAD = os.O_EXCL          # pidfd_open: a pidfd of one thread (Linux 6.9)
MAX_ENTRIES = 1024


class PeaCache:
    """tid -> pea name for one pod, safe against reused ids and moves."""

    def __init__(self, pod: str, max_entries: int = MAX_ENTRIES):
        self.pod = pod
        self.max_entries = max_entries
        self._entries: dict[int, tuple[int, str]] = {}     # tid -> (pidfd, pea)
        self._generation = 0
        self._lock = threading.Lock()

    def pea_of(self, tid: int) -> str | None:
        """The pea of thread ``tid`` (of a pending request: it cannot be
        reaped while we answer), or None if it is in no pea of this pod."""
        # Under the lock: the exec watch may empty the table from the
        # supervisor's thread, and a pidfd closed there could be reopened
        # as another thread's before our probe used its number.
        with self._lock:
            entry = self._entries.get(tid)
            if entry is not None:
                try:
                    signal.pidfd_send_signal(entry[0], 0)
                    return entry[1]
                except OSError:
                    # The cached thread is gone: the number now names another.
                    del self._entries[tid]
                    os.close(entry[0])
            generation = self._generation
        try:
            fd = os.pidfd_open(tid, PIDFD_THREAD)
        except OSError:
            return cgroup.pea_of(tid, self.pod)
        # The pidfd is taken before /proc is read: if the number were
        # reused between the two, the pidfd would name the new thread and
        # the read would describe it too.
        pea = cgroup.pea_of(tid, self.pod)
        if pea is None or pea == cgroup.CHECKPOINT:
            # Never cached in the checkpoint cgroup: criu moves the tasks it
            # restores into their peas itself (--manage-cgroups), without a
            # call to moved(), and they must be judged under their peas.
            os.close(fd)
            return pea
        with self._lock:
            if generation != self._generation or tid in self._entries:
                os.close(fd)          # a move raced this read, or a twin did
                return pea
            if len(self._entries) >= self.max_entries:
                self._clear_locked()
            self._entries[tid] = (fd, pea)
        return pea

    def moved(self) -> None:
        """A process changed pea: forget every thread's answer. Called
        after the cgroup write, so that a read that starts now sees it."""
        with self._lock:
            self._generation += 1
            self._clear_locked()

    def close(self) -> None:
        with self._lock:
            self._clear_locked()

    def __len__(self) -> int:
        return len(self._entries)

    def _clear_locked(self) -> None:
        entries, self._entries = self._entries, {}
        for fd, _ in entries.values():
            os.close(fd)
