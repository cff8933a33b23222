"""Resource limits of a pod (memory, pids), enforced with cgroups.

Pea membership lives in the unified (cgroup2) hierarchy (kernel/cgroup.py).
Limits need controllers, and where a controller lives depends on the host:

- cgroup2 with the controller listed in cgroup.controllers: the limit is set
  on the pod's unified cgroup ``peapod/POD`` (memory.max, pids.max), after
  enabling the controller in ``cgroup.subtree_control`` of every ancestor.
  The peas are children of that cgroup, so the limit covers the whole pod.
- otherwise the v1 hierarchy of that controller (this machine:
  /sys/fs/cgroup/memory, /sys/fs/cgroup/pids): a cgroup ``peapod/POD`` there
  (memory.limit_in_bytes, pids.max), which every pod process joins before it
  enters the pod (``join``). Children inherit v1 membership at fork like v2.

A pod process cannot leave these cgroups: the cgroup files belong to host
root, and inside its cgroup namespace the hierarchy above the pod is not
even nameable.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from kernel.names import CGROUP_PREFIX
from kernel import cgroup, mountinfo

CONTROLLERS = ("memory", "pids")


class LimitError(RuntimeError):
    pass


def _v1_mounts() -> dict[str, Path]:
    """controller name -> mount point of its v1 hierarchy."""
    out: dict[str, Path] = {}
    for m in mountinfo.mounts():
        if m.fstype == "cgroup":
            for opt in m.super_options.split(","):
                if opt in CONTROLLERS:
                    out[opt] = Path(m.point)
    return out


def _v2_controllers() -> set[str]:
    try:
        return set((cgroup.cgroup2_root() / "cgroup.controllers").read_text().split())
    except (OSError, cgroup.CgroupError):
        return set()


def placement() -> dict[str, Path | None]:
    """controller -> v1 mount point, or None when cgroup2 provides it.
    A controller found nowhere raises LimitError naming it."""
    v2 = _v2_controllers()
    v1 = _v1_mounts()
    out: dict[str, Path | None] = {}
    for c in CONTROLLERS:
        if c in v2:
            out[c] = None
        elif c in v1:
            out[c] = v1[c]
        else:
            raise LimitError(f"the kernel offers no {c} cgroup controller (neither cgroup2 nor v1)")
    return out


def v1_dirs(pod: str) -> list[Path]:
    """The v1 cgroups every process of the pod must join."""
    return [m / CGROUP_PREFIX / pod for c, m in placement().items() if m is not None]


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        raise LimitError(f"cannot write {value.strip()!r} to {path}: {e.strerror}") from e


def setup(pod: str, memory: int | None, pids: int | None) -> None:
    """Create the pod's cgroups for every controller and set its limits."""
    where = placement()
    values = {"memory": memory, "pids": pids}
    for c, mnt in where.items():
        if mnt is None:
            top = cgroup.pod_cgroup(pod)
            top.mkdir(parents=True, exist_ok=True)
            # Enable the controller from the cgroup2 root down to the pod.
            root = cgroup.cgroup2_root()
            node = root
            for part in top.relative_to(root).parts:
                _write(node / "cgroup.subtree_control", f"+{c}")
                node = node / part
            if values[c] is not None:
                _write(top / f"{c}.max", f"{values[c]}\n")
        else:
            d = mnt / CGROUP_PREFIX / pod
            d.mkdir(parents=True, exist_ok=True)
            if values[c] is not None:
                if c == "memory":
                    _write(d / "memory.limit_in_bytes", f"{values[c]}\n")
                else:
                    _write(d / "pids.max", f"{values[c]}\n")


def remove(pod: str) -> None:
    """Remove the v1 cgroups (the unified ones go with kernel.cgroup.remove_pod)."""
    for d in v1_dirs(pod):
        try:
            os.rmdir(d)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise LimitError(f"cannot remove cgroup {d}: {e.strerror}") from e


def v1_pids(pod: str) -> list[int]:
    out: list[int] = []
    for d in v1_dirs(pod):
        try:
            out += [int(x) for x in (d / "cgroup.procs").read_text().split()]
        except OSError:
            pass
    return out


def kill_all(pod: str) -> None:
    """SIGKILL every process in the pod's unified cgroup tree at once
    (cgroup.kill, Linux 5.14: no process can fork away during the sweep),
    then every process left in the v1 cgroups."""
    top = cgroup.pod_cgroup(pod)
    try:
        (top / "cgroup.kill").write_text("1\n")
    except OSError:
        pass
    for pid in v1_pids(pod):
        try:
            os.kill(pid, 9)
        except OSError:
            pass


# The files that hold each controller's use and limit: cgroup2 names, then v1.
_USAGE_FILES = {
    "memory": (("memory.current", "memory.max"), ("memory.usage_in_bytes",
                                                   "memory.limit_in_bytes")),
    "pids": (("pids.current", "pids.max"), ("pids.current", "pids.max")),
}
# v1's memory.limit_in_bytes says "no limit" with a huge number (PAGE_COUNTER_MAX pages).
_V1_UNLIMITED = 1 << 62


def usage(pod: str) -> dict[str, dict[str, int | None]]:
    """{"memory": {"current", "max"}, "pids": {...}} of the whole pod, in
    bytes and processes; "max" None when there is no limit, an entry None
    when the cgroup cannot be read (the pod is gone)."""
    out: dict = {}
    try:
        where = placement()
    except LimitError:
        return {c: None for c in CONTROLLERS}
    for c, mnt in where.items():
        names = _USAGE_FILES[c][0 if mnt is None else 1]
        d = cgroup.pod_cgroup(pod) if mnt is None else mnt / CGROUP_PREFIX / pod
        try:
            cur = int((d / names[0]).read_text())
            raw = (d / names[1]).read_text().strip()
        except (OSError, ValueError):
            out[c] = None
            continue
        limit = None if raw == "max" or int(raw) >= _V1_UNLIMITED else int(raw)
        out[c] = {"current": cur, "max": limit}
    return out
