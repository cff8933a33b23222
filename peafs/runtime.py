"""Runtime state of standalone mounts: $PEAPOD_RUN/peafs/POD/.

The run directory ($PEAPOD_RUN) is read once, by the command's entry
(peafs/cli.py main, with kernel/rundir.py), and passed to every function
here: none reads the environment.

    mount.json   the live mount: pod, mountpoint, root, policy, daemon pid,
                 id maps and pea names (what `peafs run` needs, so it never
                 parses the policy again)
    audit.log    refusals (audit.py)
    links.json   hard-link rules (linkstate.py), kept across remounts
    daemon.log   the daemon's stderr

`peafs umount` removes mount.json only: the audit log and the link rules
outlive a mount, as the brief for a daemon restart asks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kernel import mountinfo

MOUNT_FILE = "mount.json"


def mounts_dir(run: Path) -> Path:
    """Where the standalone mounts of run directory ``run`` keep their state."""
    return Path(run) / "peafs"


def pod_dir(run: Path, pod: str) -> Path:
    return mounts_dir(run) / pod


def canonical(path) -> str:
    """An absolute, symlink-free name for a mount point, computed without
    touching the mount point itself (a dead FUSE mount answers ENOTCONN)."""
    p = os.path.abspath(os.fspath(path))
    parent, base = os.path.split(p)
    return os.path.join(os.path.realpath(parent), base) if base else p


def write_state(state_dir: Path, data: dict) -> None:
    tmp = state_dir / (MOUNT_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, state_dir / MOUNT_FILE)


def find_state(run: Path, mountpoint) -> tuple[Path, dict] | None:
    want = canonical(mountpoint)
    base = mounts_dir(run)
    if not base.is_dir():
        return None
    for d in sorted(base.iterdir()):
        f = d / MOUNT_FILE
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if data.get("mountpoint") == want:
            return d, data
    return None


def is_mounted(mountpoint) -> bool:
    want = canonical(mountpoint)
    return any(m.point == want for m in mountinfo.mounts())


def daemon_alive(pid: int) -> bool:
    """Is ``pid`` a live peafs daemon (not a reused pid of something else)?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z" and b"peafs" in cmd
