"""Hard-link rules that survive a daemon restart.

A link made inside a pod gives its new path, in every pea, the rule of the
original (policy.add_link). Those rules are state, not policy: they are kept
in ``links.json`` next to the audit log and restored when the pod's file
system is mounted again. The file is replaced atomically (write, fsync,
rename), so a crash leaves the old or the new version, never half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

LINKS_NAME = "links.json"


class LinkStore:
    def __init__(self, state_dir: Path, policy):
        self.path = Path(state_dir) / LINKS_NAME
        self.policy = policy

    def load(self) -> None:
        """Restore saved link rules into the policy (ValueError if corrupt)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.path}: not JSON ({e})") from None
        self.policy.restore_links(data)

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps(self.policy.links(), indent=1, sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
