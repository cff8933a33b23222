"""Descriptors for open files and directories, shared out among the peas.

Every file or directory a pod process holds open through PeaFS is a real
descriptor in the daemon, and the daemon's RLIMIT_NOFILE is one pool for all
peas. Without a bound, a pea that opens files until the pool is empty makes
every other pea's open fail (EMFILE) until its files are closed. So each pea
may hold at most an equal share of the pool (``total // number of peas``);
beyond it, its own opens fail with ENFILE ("too many open files in system":
the pea's share is full, not the process's table), and the other peas'
shares stay free. The share is a hard partition, not a reservation that a
quiet neighbour lends out: simple to reason about, and with the host's limit
(20 000 here, a million with CAP_SYS_RESOURCE) far above what a service
holds open.
"""

from __future__ import annotations


class OpenBudget:
    def __init__(self, total: int, peas) -> None:
        self.share = max(1, total // max(1, len(peas)))
        self.held: dict[str, int] = {}

    def take(self, pea: str) -> bool:
        """Count one more open descriptor for ``pea``; False if its share
        is full (nothing counted then)."""
        n = self.held.get(pea, 0)
        if n >= self.share:
            return False
        self.held[pea] = n + 1
        return True

    def give(self, pea: str) -> None:
        """``pea`` closed one (its release)."""
        n = self.held.get(pea, 0) - 1
        if n > 0:
            self.held[pea] = n
        else:
            self.held.pop(pea, None)
