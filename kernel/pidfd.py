"""Whether the process behind a pidfd has exited.

A pidfd polls readable once its process has exited (zombie or reaped): the
one wait that cannot be fooled by a reused pid. poll, not select: the
daemon's descriptors go far beyond FD_SETSIZE.
"""

from __future__ import annotations

import select


def process_exited(pidfd: int, timeout: float = 0.0) -> bool:
    """True once the process has exited, waiting up to ``timeout`` seconds
    for it (0: just look)."""
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return bool(p.poll(max(0, int(timeout * 1000))))
