"""What every `pod` command shares: its exit statuses, its one-line
errors, and the way to reach a pod's daemon.

Small and cheap to import (standard library, kernel/text.py and
pods/control.py): `pod exec` loads it before it connects, and every
millisecond of a `pod` start-up is one of every `pod exec`.
"""

from __future__ import annotations

import socket
import sys

from kernel.text import escape_controls

EXIT_FAILED = 1
EXIT_USAGE = 2


def err(msg: str) -> None:
    # Newlines stay (some messages are several lines); any other control
    # escaped, whatever part of the message quotes the pod.
    try:
        print(f"pod: {escape_controls(msg)}", file=sys.stderr, flush=True)
    except OSError:  # stderr closed as well: the exit status says it all
        pass


def connect(run, name: str) -> socket.socket | None:
    try:
        path = run.pod_dir(name) / "control"
    except ValueError as e:
        err(str(e))
        return None
    if not run.is_alive(name):
        err(f"pod {name} is not running")
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        s.connect(str(path))
    except OSError as e:
        s.close()
        err(f"pod {name}: cannot reach its daemon: {e.strerror}")
        return None
    return s
