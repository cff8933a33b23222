"""JSON objects on a pipe, one a line: the framing of every start-up pipe.

A pipe has no datagrams, so the start-up handshakes that must use one (a
daemon telling the command that started it whether it is ready: `pod
start`'s daemon, `peafs mount`'s daemon; pid 1 waiting for the keeper)
send the control protocol's objects (pods/control.py), ``{"ok": true}`` or
``{"error": TEXT, ...}``, as one JSON line each. Here, below peafs and
pods, because both use it.
"""

from __future__ import annotations

import json
import os
import select
import time


def write_line(fd: int, obj: dict) -> None:
    """One message on a pipe: a JSON object and a newline (JSON escapes
    every newline inside it), in one write."""
    os.write(fd, json.dumps(obj).encode() + b"\n")


def read_line(fd: int, timeout: float | None = None) -> tuple[dict | None, bytes]:
    """The first message on a pipe: (the object, or None if the pipe ended,
    the time ran out or the line is not a JSON object; the raw bytes read)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    line = buf.split(b"\n", 1)[0]
    try:
        msg = json.loads(line) if b"\n" in buf else None
    except ValueError:
        msg = None
    return (msg if isinstance(msg, dict) else None), buf
