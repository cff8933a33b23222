"""Where a pod's runtime state lives, and whether its daemon is alive.

    $PEAPOD_RUN/                 (default /run/peapod)
        start.lock               flock held by `pod start` while it checks and starts a pod
        pods/NAME/
            lock                 flock held by the pod's daemon for its whole life
            state.json           written by the daemon: pids, maps, policy file, veth
            control              the daemon's control socket (Unix, mode 0600)
            daemon.log           the daemon's stderr
            (the services' output: ROOT.peapod/services.log, below)
            mnt/                 mount point of the pod's PeaFS (in the daemon's mount ns)

    ROOT.peapod/                 next to the pod's staging directory ROOT (mode 0700):
        links.json               hard-link rules (kept across stops: they belong to
                                 the files of ROOT, see docs/SECURITY.md)
        audit.log                the pod's refusals, one JSON object per line
        services.log(.1)         the services' output and the daemon's events about
                                 them (pods/services.py), rotated at 8 MiB

`pod stop` removes everything under $PEAPOD_RUN/pods/NAME and nothing of
ROOT.peapod: a link made in one run must keep its rule in the next (else a
pea could link a file it may only read into a directory it may write, and
write it after a restart), and an audit log is worth nothing if it is gone
with the pod it is about.

Liveness is the flock on ``lock``, not a pid: a lock dies with its holder, so
a reused pid can never make a dead pod look alive.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from kernel.names import NAME_RE


class RunDir:
    """One run directory ($PEAPOD_RUN) and what lives in it (see above)."""

    __slots__ = ("path",)

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def pods(self) -> Path:
        return self.path / "pods"

    @property
    def start_lock(self) -> Path:
        return self.path / "start.lock"

    def pod_dir(self, name: str) -> Path:
        if not NAME_RE.match(name):
            # The name becomes a path component: refuse anything that could
            # climb out of pods/ ("..", "/") before it is joined.
            raise ValueError(f"invalid pod name {name!r}")
        return self.pods / name

    def read_state(self, name: str) -> dict | None:
        try:
            state = json.loads((self.pod_dir(name) / "state.json").read_text())
            # A state of another version (a daemon of another release still
            # running) is not guessed at: the pod looks unreadable, not wrong.
            return (state if isinstance(state, dict) and state.get("version") == STATE_VERSION
                    else None)
        except (OSError, ValueError):
            return None

    def write_state(self, name: str, state: dict) -> None:
        path = self.pod_dir(name) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**state, "version": STATE_VERSION}, indent=1) + "\n")
        os.replace(tmp, path)  # readers see the old or the new state, never half

    def is_alive(self, name: str) -> bool:
        """True while some process (the daemon) holds the pod's lock."""
        try:
            fd = os.open(self.pod_dir(name) / "lock", os.O_RDONLY | os.O_CLOEXEC)
        except (OSError, ValueError):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def pod_names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.pods) if NAME_RE.match(n))
        except FileNotFoundError:
            return []


def lasting_dir(root: Path) -> Path:
    """The directory of a pod's lasting PeaFS state: ROOT.peapod beside the
    staging directory ROOT (outside it, so no pod process can reach it)."""
    root = Path(root)
    return root.parent / f"{root.name}.peapod"


def audit_log(root: Path) -> Path:
    """The audit log of the pod whose staging directory is ``root``."""
    from peafs.audit import AUDIT_NAME

    return lasting_dir(root) / AUDIT_NAME


# The services' log (pods/services.py writes it, `pod logs` reads it): here,
# so that `pod` does not import the daemon's modules (trio) to find it.
SERVICE_LOG_NAME = "services.log"
SERVICE_LOG_MAX = 8 << 20    # bytes before services.log becomes services.log.1


def service_log(lasting: Path) -> Path:
    return Path(lasting) / SERVICE_LOG_NAME


# state.json, written by the daemon, read by every `pod` command. Version 1:
# {"version": 1, "name", "policy" (its file), "root", "daemon_pid",
#  "keeper_pid", "init_pid", "uid_map", "gid_map" ([[inside, outside, count]]),
#  "peas", "default_pea", "services" (names), "started" (unix time),
#  "state" ("starting" | "running" | "stopping"), "veth" (host side or null),
#  "net" ({"ip", "host_ip", "prefixlen"} or null)}. A field's meaning never
# changes within a version; a reader of another version refuses the file.
STATE_VERSION = 1
