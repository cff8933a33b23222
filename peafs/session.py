"""PeaFSSession: one PeaFS mount, for `peafs mount` and the per-pod daemon.

    s = PeaFSSession(root, mountpoint, policy, state_dir)
    s.mount()          # synchronous; the mount is live on return
    await s.serve()    # pyfuse3's main loop, inside the caller's trio nursery,
                       # until s.close() or an unmount
    s.close()          # unmount (idempotent)

pyfuse3 allows one session per process. ``serve()`` gives its own thread a
umask of 0 (modes arriving from the kernel already carry the caller's umask),
in a file-system context of that thread alone (unshare(CLONE_FS): umask,
cwd and root become per thread), so no other part of the process (the pod
daemon, its children) inherits it. ``mount()``
raises the soft RLIMIT_NOFILE to the hard limit, then divides the descriptors: a
bounded cache of O_PATH handles (inodes.py), a reserve for the daemon's own
use (the pods' supervisor, pidfds, the control socket, /proc reads), and the
rest for open files and directories, shared out equally among the peas
(budget.py). ``state_dir`` holds audit.log and links.json.
"""

from __future__ import annotations

import os
import resource
import threading
from pathlib import Path

import pyfuse3
import trio

from kernel import cgroup, libc, mountinfo

from . import execwatch, fusecaps, readloop
from .audit import AuditLog
from .budget import OpenBudget
from .enforce import Enforcer
from .fs import PeaFS
from .ids import Ids
from .inodes import DEFAULT_FD_CACHE, MIN_FD_CACHE
from .linkstate import LinkStore

# Descriptors kept out of the peas' budget for the daemon itself.
RESERVED_FDS = 1024
# FUSE worker tasks: most handlers never await, but one that waits for a
# worker thread (fsync, a read from the disk) must not hold up the rest.
MAX_TASKS = 32


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return it.

    The hard limit is the host's word (a service manager's LimitNOFILE=);
    going past it would need CAP_SYS_RESOURCE, and pod processes inherit
    the daemon's limits, so the daemon does not."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def divide_descriptors(limit: int) -> tuple[int, int]:
    """(O_PATH cache size, descriptors for the peas' open files).

    $PEAFS_FD_CACHE sets the cache size (at least MIN_FD_CACHE): the tests
    make it tiny, so that every object is evicted and re-opened by handle."""
    cache = max(64, min(DEFAULT_FD_CACHE, limit // 8))
    try:
        cache = max(MIN_FD_CACHE, int(os.environ["PEAFS_FD_CACHE"]))
    except (KeyError, ValueError):
        pass
    return cache, max(64, limit - cache - RESERVED_FDS)


def mount_options(pod: str) -> set[str]:
    # default_permissions: the kernel applies the Unix mode/owner checks
    # (which the pea mask is ANDed with) and, for FIFOs and sockets, our
    # per-pea attributes. nodev/nosuid: a pod can never make a device node
    # or a set-id program count on the host.
    return {"allow_other", "default_permissions", "nodev", "nosuid",
            f"fsname=peafs:{pod}", "subtype=peafs"}


class PeaFSSession:
    def __init__(self, root: Path, mountpoint: Path, policy, state_dir: Path):
        self.root = Path(root)
        self.mountpoint = Path(mountpoint)
        self.policy = policy
        self.state_dir = Path(state_dir)
        self.ops: PeaFS | None = None
        self.audit: AuditLog | None = None
        self.watch: execwatch.ExecWatch | None = None   # only with exec rules
        self._thread: threading.Thread | None = None     # serve_in_thread
        self._mounted = False
        self._serving = False
        self._closed = False

    def mount(self) -> None:
        # First: without the symlink-cache library nothing is made (no
        # cgroup, no state), and the reason is the library's.
        fusecaps.load()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd_cache, for_peas = divide_descriptors(raise_nofile())
        root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            cgroup.ensure_peas(self.policy.name, self.policy.peas)
            links = LinkStore(self.state_dir, self.policy)
            links.load()
            self.audit = AuditLog(self.state_dir, self.policy.name)
            ids = Ids(self.policy.uid_map, self.policy.gid_map)
            if any(p.exec for p in self.policy.peas.values()):
                execwatch.check_kernel()
                self.watch = execwatch.ExecWatch(self.policy.name, self.audit,
                                                 self._fuse_dev)
            enforcer = Enforcer(self.policy, ids, self.audit, self.watch)
            self.ops = PeaFS(root_fd, self.policy, ids, enforcer, links,
                             fd_cache=fd_cache,
                             budget=OpenBudget(for_peas, self.policy.peas))
            pyfuse3.init(self.ops, str(self.mountpoint), mount_options(self.policy.name))
            try:
                fusecaps.check_wrapped()
            except BaseException:
                pyfuse3.close(unmount=True)     # mounted without the cache: undo
                raise
        except BaseException:
            os.close(root_fd)
            raise
        self._mounted = True

    def settle(self) -> None:
        """Apply committed exec transitions now (the supervisor calls this
        before it asks which pea a process is in)."""
        if self.watch is not None and self.watch.busy:
            self.watch.settle()

    def pending_transition(self, tgid: int) -> bool:
        """Whether ``tgid`` is in an exec whose transition has not committed."""
        return self.watch is not None and tgid in self.watch.pending

    def set_transition_guard(self, guard) -> None:
        """``guard(tgid) -> reason | None``: asked before a transition is
        recorded and again at its commit (the pods' supervisor knows
        signals armed towards a process)."""
        if self.watch is not None:
            self.watch.guard = guard

    def restoring(self, on: bool) -> None:
        """While ``on``, every caller in a pea of this pod is judged as the
        checkpointer (every file right: enforce.CHECKPOINTER). For `pod
        restore` only, while criu runs: the pod then holds nothing but our
        pid 1 and keeper and the tasks criu is restoring, which run criu's
        code and open their files (and "/", their cwd) after criu moved them
        into their peas. The daemon turns it off before any restored code
        runs (pods/checkpoint.py)."""
        self.ops.enf.restoring = bool(on)

    def adopt_links(self, data: dict) -> bool:
        """`pod restore` onto a root whose link rules were not copied with
        it: take the checkpoint's (``policy.links()`` as it was saved) and
        write them to links.json, if this PeaFS has none. Called before
        any pod process runs. Returns whether they were taken; ValueError
        for rules the policy cannot hold."""
        if self.policy.links() or not data or self.ops is None:
            return False
        self.policy.restore_links(data)
        self.ops.links._write(self.ops.links._encode())
        return True

    def swap_policy(self, new) -> None:
        """Decide every later request by ``new`` (`pod rules reload`). Run it
        on the file system's own loop (``trio.from_thread.run_sync`` with
        ``pyfuse3.trio_token``): there it falls between two handlers' steps,
        so no link rule added under the old policy is lost, and no request
        sees half of each. The link rules made in the pod are state, not
        policy: they carry over. The kernel caches nothing a pea decides
        (ARCHITECTURE.md, "Caches"), so nothing needs dropping there."""
        links = {}
        for path, entry in self.policy.links().items():
            # A pea the new policy drops loses its link rules; a link that
            # moved a process into such a pea now grants nothing.
            links[path] = {pea: (rule if rule["exec_to"] in (None, *new.peas)
                                 else {"perm": "", "exec_to": None})
                           for pea, rule in entry.items() if pea in new.peas}
        new.restore_links(links)
        self.policy = new
        if self.ops is not None:
            self.ops.policy = new
            self.ops.links.policy = new
            self.ops.enf.policy = new

    def _fuse_dev(self) -> int:
        """The device number of our mount (a stat of the mount point would
        be a request to ourselves)."""
        want = os.path.realpath(self.mountpoint)
        devs = [m.dev for m in mountinfo.mounts()
                if m.point == want and m.fstype.startswith("fuse")]
        if not devs:
            raise RuntimeError(f"{want} is not in /proc/self/mountinfo")
        return devs[-1]

    async def serve(self) -> None:
        if not self._mounted:
            raise RuntimeError("PeaFSSession.serve() before mount()")
        self._serving = True
        libc.unshare(libc.CLONE_FS)
        os.umask(0)
        try:
            # Most handlers never await (each runs to completion) and one
            # task serves them; pyfuse3 starts another when a handler waits
            # for a worker thread (fs.py: fsync, a read from the disk).
            async with trio.open_nursery() as nursery:
                if self.watch is not None:
                    nursery.start_soon(self.watch.run)
                readloop.install()
                await pyfuse3.main(min_tasks=1, max_tasks=MAX_TASKS)
                nursery.cancel_scope.cancel()
        finally:
            self._serving = False
            self._finish()

    def serve_in_thread(self, on_exit=None) -> threading.Thread:
        """Serve from a thread of its own, with its own trio loop.

        The pod daemon does this so that nothing else it does (the seccomp
        supervisor copying a caller's memory, which may fault into this very
        file system; subprocesses; the control socket) can make the file
        system wait on itself. ``on_exit(exc_or_None)`` runs in that thread
        when serving ends."""
        def run():
            exc = None
            try:
                trio.run(self.serve)
            except BaseException as e:  # noqa: BLE001 - reported to the owner
                exc = e
            if on_exit is not None:
                on_exit(exc)
        self._thread = threading.Thread(target=run, name="peafs", daemon=True)
        self._thread.start()
        return self._thread

    def close(self) -> None:
        """Unmount. While ``serve()`` runs, this ends its loop and ``serve``
        unmounts on its way out; otherwise it unmounts at once. From another
        thread than the serving one, it waits until the loop has ended."""
        if self._closed or not self._mounted:
            return
        if self._serving:
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                try:
                    trio.from_thread.run_sync(pyfuse3.terminate, trio_token=pyfuse3.trio_token)
                except (trio.RunFinishedError, RuntimeError):
                    pass   # the loop ended meanwhile
                thread.join(timeout=30)
            else:
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
                self.ops.readers.close()
                self.ops.table.closer.stop()
                self.ops.enf.peas.close()
            if self.watch is not None:
                self.watch.close()
            if self.audit is not None:
                self.audit.close()
