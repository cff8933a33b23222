"""Hard-link rules that survive a daemon restart.

A link made inside a pod gives its new path, in every pea, the rule of the
original (policy.add_link). Those rules are state, not policy: they are kept
in ``links.json`` next to the audit log and restored when the pod's file
system is mounted again. The file is replaced atomically (write, fsync,
rename), so a crash leaves the old or the new version, never half of one.
PeaFS saves from its request loop with ``save_off_loop``: the write and its
fsync wait for the disk in a worker thread, and saves that overlap share one
write.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import trio

from . import readloop

LINKS_NAME = "links.json"


class LinkStore:
    def __init__(self, state_dir: Path, policy):
        self.path = Path(state_dir) / LINKS_NAME
        self.policy = policy
        self._lock = trio.Lock()
        self._wanted = 0        # changes asked to be saved
        self._saved = 0         # of those, the ones on disk

    def load(self) -> None:
        """Restore saved link rules into the policy (ValueError if corrupt)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.path}: not JSON ({e})") from None
        self.policy.restore_links(data)

    async def save_off_loop(self) -> None:
        """Write the link rules (write, fsync, rename) from a worker thread.
        Returns once a write that began after the caller's change is on
        disk (so an acknowledged link keeps its rule across a crash)."""
        self._wanted += 1
        mine = self._wanted
        readloop.hand_over()     # another task reads the requests meanwhile
        async with self._lock:
            if self._saved >= mine:
                return          # a write that covers this change has landed
            upto = self._wanted
            data = self._encode()
            await trio.to_thread.run_sync(self._write, data)
            self._saved = upto

    def _encode(self) -> bytes:
        return json.dumps(self.policy.links(), indent=1, sort_keys=True).encode()

    def _write(self, data: bytes) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
