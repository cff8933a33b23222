"""What the benchmarks share: FUSE mounts and the bindfs floor.

Not a benchmark (bench/__main__.py does not list this name). The bindfs leg
of a benchmark is its stack in a root served by bindfs (the C FUSE file
system, mirroring a directory as it is): it pays for FUSE, not for PeaFS's
rules, so pod/bindfs is what PeaFS, the peas and the namespaces cost above
the FUSE floor and bindfs/host is the floor itself.

``BindfsRoot(src, mnt, mounts)`` mounts, on the host, the [[pod.mount]] host
directories into ``src`` the way a pod places them in its staging tree
(pods.rootfs.place_host_mounts: a recursive bind, read-only unless rw,
nosuid and nodev on each submount), then bindfs of ``src`` on ``mnt`` (as
root, ``-o allow_other``: ownership and modes kept as they are, new files
owned by their creator). So /usr reaches the bindfs leg through FUSE, as it
reaches a pod through PeaFS. ``stop()`` unmounts all of it, and is safe to
call twice or after a failed start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path


def mounts_under(top: Path) -> list[str]:
    """The mount points at or below ``top`` in this mount namespace (a bind
    of a directory of the same file system included, which
    os.path.ismount does not see)."""
    from kernel import mountinfo  # noqa: PLC0415 - the workers do not need it

    top = os.path.realpath(top)
    return [m.point for m in mountinfo.mounts()
            if m.point == top or m.point.startswith(top.rstrip("/") + "/")]


def remove_tree(top: Path) -> list[str]:
    """Remove ``top`` unless something is still mounted in it (a bind of the
    host's /usr, say): then leave it all and return those mounts."""
    left = mounts_under(top)
    if not left:
        shutil.rmtree(top, ignore_errors=True)
    return left


def wait_mounted(path: Path, proc: subprocess.Popen | None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(path):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mount of {path} exited with status {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{path} not mounted after {timeout}s")


def unmount(path: Path, proc: subprocess.Popen | None, cmd: list[str] | None = None) -> None:
    """Unmount the FUSE file system on ``path`` (``cmd``, by default
    ``fusermount3 -u``; lazily if that fails) and wait for its daemon."""
    if os.path.ismount(path):
        r = subprocess.run((cmd or ["fusermount3", "-u"]) + [str(path)], capture_output=True,
                           timeout=30)
        if r.returncode != 0 and os.path.ismount(path):
            subprocess.run(["fusermount3", "-u", "-z", str(path)], timeout=30)
    if proc is not None:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def bindfs(src: Path, mnt: Path) -> subprocess.Popen:
    """bindfs of ``src`` on ``mnt`` in the foreground (its process is the
    daemon), mounted when this returns."""
    proc = subprocess.Popen(["bindfs", "-f", "-o", "allow_other", str(src), str(mnt)],
                            stdin=subprocess.DEVNULL)
    try:
        wait_mounted(mnt, proc)
    except BaseException:
        unmount(mnt, proc)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    return proc


@dataclass(frozen=True)
class HostMount:
    """One [[pod.mount]] (the fields pods.rootfs.place_host_mounts reads)."""
    host: str
    path: str
    rw: bool = False


def policy_mounts(policy: Path) -> list[HostMount]:
    with open(policy, "rb") as f:
        pod = tomllib.load(f)["pod"]
    return [HostMount(m["host"], m["path"], bool(m.get("rw", False)))
            for m in pod.get("mount", [])]


class BindfsRoot:
    """A root tree served by bindfs, its host directories bound in first."""

    def __init__(self, src: Path, mnt: Path, mounts: list[HostMount]):
        self.src, self.mnt, self.mounts = Path(src), Path(mnt), list(mounts)
        self.proc: subprocess.Popen | None = None
        self.placed: list[Path] = []

    def start(self) -> None:
        from pods import rootfs  # noqa: PLC0415 - only the drivers need it

        self.mnt.mkdir(exist_ok=True)
        for m in self.mounts:
            # One at a time, so that stop() knows which ones to take down.
            self.placed.append(self.src / m.path.lstrip("/"))
            rootfs.place_host_mounts(self.src, [m])
        self.proc = bindfs(self.src, self.mnt)

    def stop(self) -> list[str]:
        """Unmount everything; return what could not be (empty when clean)."""
        left = []
        unmount(self.mnt, self.proc)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if os.path.ismount(self.mnt):
            left.append(f"bindfs mount {self.mnt}")
        for target in reversed(self.placed):
            if mounts_under(target):
                r = subprocess.run(["umount", "--recursive", str(target)], capture_output=True,
                                   timeout=30)
                if r.returncode != 0 and mounts_under(target):
                    subprocess.run(["umount", "--lazy", str(target)],
                                   capture_output=True, timeout=30)
            if mounts_under(target):
                left.append(f"bind mount {target}")
        self.placed = []
        return left

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        left = self.stop()
        if left and exc[0] is None:
            raise RuntimeError(f"left mounted: {left}")
        return False
