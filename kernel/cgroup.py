"""Pea membership: every pea is a cgroup in the cgroup2 (unified) hierarchy.

A pea of pod POD is the cgroup ``<cgroup2 mount>/peapod/POD/PEA``. Membership
is what the kernel says it is: children inherit their parent's cgroup
atomically at fork, and a pod process cannot move itself (it does not own the
cgroup files and, inside its cgroup namespace, cannot even name the host
hierarchy). "Which pea is this process in?" has two answers here, both
from the kernel: ``pea_of`` reads ``/proc/PID/cgroup`` for a pid that cannot
be reused while it is asked (PeaFS: the request is pending), and caches
nothing, so a reused pid can never inherit a dead process's pea;
``pea_ids`` maps cgroup ids to peas for a process pinned by a pidfd, whose
cgroup id the kernel gives (the pod's supervisor, pods/seccomp_procs.py).

The unified hierarchy is used even on hosts whose controllers are still on v1
(this machine mounts cgroup2 at /sys/fs/cgroup/unified with no controllers):
membership needs no controller. Resource limits are the tagger's business.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from kernel.names import CGROUP_PREFIX

from . import mountinfo


class CgroupError(RuntimeError):
    """The cgroup2 hierarchy is missing or a pea cgroup cannot be managed."""


_root_cache: Path | None = None


def _cgroup2_mount():
    """The mountinfo entry of the cgroup2 hierarchy we use (the first
    cgroup2 mount), or None. OSError if mountinfo cannot be read."""
    return next((m for m in mountinfo.mounts() if m.fstype == "cgroup2"), None)


def cgroup2_root() -> Path:
    """The mount point of the cgroup2 hierarchy, from /proc/self/mountinfo."""
    global _root_cache
    if _root_cache is not None:
        return _root_cache
    try:
        m = _cgroup2_mount()
    except OSError as e:
        raise CgroupError(f"cannot read /proc/self/mountinfo: {e}") from e
    if m is None:
        raise CgroupError(
            "no cgroup2 (unified) hierarchy is mounted; pea membership needs one "
            "(mount -t cgroup2 none /sys/fs/cgroup/unified)"
        )
    _root_cache = Path(m.point)
    return _root_cache


def favors_dynamic_moves() -> bool:
    """Whether the cgroup2 hierarchy is mounted with ``favordynmods``.

    Moving a process (a write to cgroup.procs: every pea transition) takes
    the kernel's cgroup_threadgroup_rwsem for writing. Without the option
    that write waits for an RCU grace period whenever no other move came
    shortly before: measured here (Linux 6.18, 2 vCPUs), 5.5-22 ms per move
    at one move every 50 ms, against 0.07-0.5 ms with it. The exec watch
    makes the move on PeaFS's request thread, so every pea of the pod waits
    that long (peafs/execwatch.py). The option costs fork and exit a little
    (the kernel's documentation) and, once set, cannot be undone until the
    next boot (Linux 6.18: the per-threadgroup lock it turns on is a one-way
    switch)."""
    try:
        m = _cgroup2_mount()
    except OSError:
        return False
    return m is not None and "favordynmods" in m.super_options.split(",")


# The checkpoint cgroup: a sibling of the peas, made by the daemon only while
# it runs criu there (pods/criu.py, pods/checkpoint.py). PeaFS gives its
# processes every file right (peafs/enforce.py); no pea's network programs
# are attached to it. Its name cannot be a pea's (pea names start with a
# lowercase letter, kernel/names.py), so no policy can name it, and only
# host root can move a process into it (the pod does not own its cgroups).
CHECKPOINT = "_criu"


def pod_cgroup(pod: str) -> Path:
    return cgroup2_root() / CGROUP_PREFIX / pod


def pea_cgroup(pod: str, pea: str) -> Path:
    return pod_cgroup(pod) / pea


def ensure_peas(pod: str, peas) -> None:
    """Create the pod's cgroup and one child per pea (idempotent)."""
    for pea in peas:
        pea_cgroup(pod, pea).mkdir(parents=True, exist_ok=True)


def join(pid: int, pod: str, pea: str) -> None:
    """Move process ``pid`` (all its threads) into the pea's cgroup."""
    path = pea_cgroup(pod, pea)
    path.mkdir(parents=True, exist_ok=True)
    try:
        (path / "cgroup.procs").write_text(f"{pid}\n")
    except OSError as e:
        raise CgroupError(f"cannot move pid {pid} into {path}: {e.strerror}") from e


def cgroup_of(pid: int) -> str | None:
    """The unified-hierarchy cgroup path of ``pid`` (a process or thread id),
    as the host sees it, or None if the process is gone."""
    try:
        fd = os.open(f"/proc/{pid}/cgroup", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    for line in data.split(b"\n"):
        if line.startswith(b"0::"):
            return line[3:].decode("utf-8", "surrogateescape")
    return None


def pea_of(pid: int, pod: str) -> str | None:
    """The pea of ``pid`` in ``pod``, or None if it is in no pea of that pod.
    (For a process pinned by a pidfd, see ``pea_ids``.)

    A process in a sub-cgroup of a pea (``/peapod/POD/PEA/...``) belongs to
    that pea. The caller must hold a reference that keeps ``pid`` from being
    reused while it acts on the answer (for FUSE: the request is pending, so
    the calling thread cannot have been reaped).
    """
    cg = cgroup_of(pid)
    if cg is None:
        return None
    parts = cg.strip("/").split("/")
    if len(parts) >= 3 and parts[0] == CGROUP_PREFIX and parts[1] == pod:
        return parts[2]
    return None


def pea_ids(pod: str) -> dict[int, str]:
    """cgroup id -> pea name, for every cgroup of every pea of ``pod`` (a
    pea's sub-cgroups included: their processes belong to that pea).

    The other way to ask "which pea is this process in", for a process
    pinned by a pidfd: the kernel gives its cgroup id (PIDFD_GET_INFO),
    which stays the process's whatever happens to pid numbers, where
    ``pea_of`` reads /proc/PID/cgroup, a path a reused pid could redirect.
    A cgroup2 id is the inode number of the cgroup's directory, so the map
    is a walk of the pod's cgroups; the caller caches it and calls again
    on a miss (a pea cgroup made since)."""
    out: dict[int, str] = {}
    try:
        peas = [e for e in os.scandir(pod_cgroup(pod)) if e.is_dir(follow_symlinks=False)]
    except OSError:
        peas = []
    for e in peas:
        for dirpath, _, _ in os.walk(e.path):
            try:
                out[os.stat(dirpath).st_ino] = e.name
            except OSError:
                pass
    return out


def remove_pod(pod: str) -> None:
    """Remove the pod's cgroups, deepest first. Cgroups that still hold
    processes stay (EBUSY); the caller kills processes first."""
    top = pod_cgroup(pod)
    if not top.exists():
        return
    for dirpath, dirnames, _ in os.walk(top, topdown=False):
        try:
            os.rmdir(dirpath)
        except OSError as e:
            if e.errno not in (errno.ENOENT,):
                raise CgroupError(f"cannot remove cgroup {dirpath}: {e.strerror}") from e


def pids_in(pod: str, pea: str | None = None) -> list[int]:
    """Every pid in every pea of the pod, or in ``pea`` only (recursively)."""
    top = pod_cgroup(pod) if pea is None else pea_cgroup(pod, pea)
    out: list[int] = []
    for dirpath, _, files in os.walk(top):
        if "cgroup.procs" in files:
            try:
                out += [int(x) for x in Path(dirpath, "cgroup.procs").read_text().split()]
            except OSError:
                pass
    return out
