"""The run directory: where the runtime state of pods and PeaFS mounts lives.

$PEAPOD_RUN, else /run/peapod. It is read from the environment here only,
and only by a command's entry (pods/cli.py, pods/demo.py, peafs/cli.py
main; in C, the `pod` command's front, pods/pod_front.c): below that the directory is passed down as an argument (the pod
daemon gets --run-dir), so that no library call depends on the
environment of the process it runs in (tests/pods/test_pod_startup.py
checks both).
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_RUN = Path("/run/peapod")


def run_dir_from(environ) -> Path:
    """$PEAPOD_RUN of ``environ``, else /run/peapod: for a command's entry only."""
    return Path(environ.get("PEAPOD_RUN") or DEFAULT_RUN)
