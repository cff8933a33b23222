"""PeaFSSession: one PeaFS mount, for `peafs mount` and the per-pod daemon.

    s = PeaFSSession(root, mountpoint, policy, state_dir)
    s.mount()          # synchronous; the mount is live on return
    await s.serve()    # pyfuse3's main loop, inside the caller's trio nursery,
                       # until s.close() or an unmount
    s.close()          # unmount (idempotent)

pyfuse3 allows one session per process. ``mount()`` sets the process umask to
0 (modes arriving from the kernel already carry the caller's umask) and
raises RLIMIT_NOFILE to its hard limit (every object the kernel holds is an
open O_PATH descriptor). ``state_dir`` holds audit.log and links.json.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pyfuse3

from . import cgroup
from .audit import AuditLog
from .enforce import Enforcer
from .fs import PeaFS
from .ids import Ids
from .linkstate import LinkStore


def mount_options(pod: str) -> set[str]:
    # default_permissions: the kernel applies the Unix mode/owner checks
    # (which the pea mask is ANDed with) and, for FIFOs and sockets, our
    # per-pea attributes. nodev/nosuid: a pod can never make a device node
    # or a set-id program count on the host.
    return {"allow_other", "default_permissions", "nodev", "nosuid",
            f"fsname=peafs:{pod}", "subtype=peafs"}


class PeaFSSession:
    def __init__(self, root: Path, mountpoint: Path, policy, state_dir: Path, *,
                 writeback: bool = False):
        self.root = Path(root)
        self.mountpoint = Path(mountpoint)
        self.policy = policy
        self.state_dir = Path(state_dir)
        self.writeback = writeback
        self.ops: PeaFS | None = None
        self.audit: AuditLog | None = None
        self._mounted = False
        self._serving = False
        self._closed = False

    def mount(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.umask(0)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            cgroup.ensure_peas(self.policy.name, self.policy.peas)
            links = LinkStore(self.state_dir, self.policy)
            links.load()
            self.audit = AuditLog(self.state_dir, self.policy.name)
            ids = Ids(self.policy.uid_map, self.policy.gid_map)
            enforcer = Enforcer(self.policy, ids, self.audit)
            self.ops = PeaFS(root_fd, self.policy, ids, enforcer, links,
                             writeback=self.writeback)
            pyfuse3.init(self.ops, str(self.mountpoint), mount_options(self.policy.name))
        except BaseException:
            os.close(root_fd)
            raise
        self._mounted = True

    async def serve(self) -> None:
        if not self._mounted:
            raise RuntimeError("PeaFSSession.serve() before mount()")
        self._serving = True
        try:
            # Handlers never await (each runs to completion), so one worker
            # task does all the work; more would only add task churn.
            await pyfuse3.main(min_tasks=1, max_tasks=1)
        finally:
            self._serving = False
            self._finish()

    def close(self) -> None:
        """Unmount. While ``serve()`` runs, this ends its loop and ``serve``
        unmounts on its way out; otherwise it unmounts at once."""
        if self._closed or not self._mounted:
            return
        if self._serving:
            pyfuse3.terminate()
        else:
            self._finish()

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            pyfuse3.close(unmount=True)
        finally:
            if self.ops is not None:
                self.ops.table.close_all()
            if self.audit is not None:
                self.audit.close()
