"""The audit log: one JSON object per line for every refusal.

A line is written with a single write(2) on an O_APPEND descriptor, so lines
of concurrent writers never interleave and a reader (``peafs audit
--follow``) never sees half a line. Fields:

    time       ISO 8601 UTC, microseconds
    pod, pea   the pod; the caller's pea (null: the caller is in no pea)
    pid        the calling process (thread group id, host pid namespace)
    uid        the caller's pod (virtual) uid, null if it has none
    operation  the FUSE operation ("open", "unlink", "exec", ...)
    path       the pod path refused
    need       the permission letters that were missing
    rule       the deciding rule ("/etc/smtpd/"), or why no rule applied
    kind       "path" | "directory" | "default" | "link" | "barrier"
    complain   true when the pea is in complain mode (the access went ahead)
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

AUDIT_NAME = "audit.log"


class AuditLog:
    def __init__(self, state_dir: Path, pod: str):
        self.path = Path(state_dir) / AUDIT_NAME
        self.pod = pod
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def refusal(self, *, pea: str | None, pid: int, uid: int | None, operation: str,
                path: str, need: str, rule: str, kind: str, complain: bool = False) -> None:
        entry = {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
            "pod": self.pod, "pea": pea, "pid": pid, "uid": uid,
            "operation": operation, "path": path, "need": need,
            "rule": rule, "kind": kind, "complain": complain,
        }
        line = json.dumps(entry, ensure_ascii=False, separators=(", ", ": ")) + "\n"
        try:
            os.write(self._fd, line.encode("utf-8", "surrogateescape"))
        except OSError:
            pass  # a full disk must not turn into a denial of every request

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_entries(path: Path) -> list[dict]:
    out = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def escape_controls(text: str) -> str:
    """``text`` with every character a terminal could act on written as an
    escape: C0 controls but newline, DEL, C1 controls (U+0080-U+009F: CSI,
    OSC...) and lone surrogates (bytes that were not UTF-8). Strings a pod
    controls (paths, command lines) reach the administrator's terminal
    only through this: an OSC 52 sequence writes the clipboard, others set
    the title or rewrite what is on the screen."""
    out = []
    for ch in text:
        o = ord(ch)
        if (o < 0x20 and ch != "\n") or 0x7F <= o <= 0x9F:
            out.append(f"\\x{o:02x}")
        elif 0xDC80 <= o <= 0xDCFF:           # surrogateescape'd byte
            out.append(f"\\x{o - 0xDC00:02x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _safe_lines(data: bytes) -> bytes:
    text = data.decode("utf-8", "surrogateescape")
    return escape_controls(text).encode("utf-8")


def print_log(path: Path, follow: bool, out=None) -> None:
    """Copy the audit log at ``path`` to ``out`` (stdout), whole lines only;
    with ``follow``, keep waiting for new lines (and for the file, if it
    does not exist yet) until interrupted. A missing log without ``follow``
    prints nothing: no refusal yet."""
    out = out or sys.stdout.buffer
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        if not follow:
            return
        while not path.exists():
            time.sleep(0.2)
        f = open(path, "rb")
    with f:
        pending = b""
        while True:
            chunk = f.read()
            if chunk:
                pending += chunk
                lines, _, pending = pending.rpartition(b"\n")
                if lines:
                    out.write(_safe_lines(lines) + b"\n")
                    out.flush()
            elif not follow:
                return
            else:
                time.sleep(0.2)
