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
    repeated   (on a repeat of an earlier line) how many identical refusals
               followed it within AuditLog.REPEAT_WINDOW and were not written
    dropped    (a line of its own) how many refusals of that pea the rate
               limit left out
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import threading
import time
from pathlib import Path

from kernel.text import escape_controls

AUDIT_NAME = "audit.log"


class AuditLog:
    """The audit log of one mount, bounded against a flood.

    A pod that makes refused requests in a loop must not fill the host's
    disk, nor hide other peas' refusals in noise:

    - identical refusals (same process, user, pea, operation, path, missing
      letters, rule) within REPEAT_WINDOW seconds are written once; the first line
      is followed, when the window closes, by the same entry with
      ``"repeated": N`` (the N not written);
    - each pea has a budget of lines (RATE a second, BURST at once; a pea in
      complain mode a wider one for its complain lines, COMPLAIN_RATE and
      COMPLAIN_BURST); lines beyond it are counted and a ``{"dropped": N}``
      line for that pea is written when it may write again (or at close);
    - at MAX_BYTES the file is renamed to ``audit.log.1`` (replacing the
      previous one) and a new one is started.

    Thread-safe (the pod daemon's supervisor thread logs through it too).
    """

    RATE = 50.0
    BURST = 200.0
    # A pea in complain mode is being learned (`pod rules suggest`): its
    # lines are the policy to be, and a service's start alone makes hundreds
    # (every library, every file of its configuration). They get a budget
    # of their own, wider; the file stays bounded by MAX_BYTES.
    COMPLAIN_RATE = 2000.0
    COMPLAIN_BURST = 20000.0
    REPEAT_WINDOW = 10.0
    REPEAT_KEYS = 10_000          # distinct refusals remembered at once
    MAX_BYTES = 8 << 20

    def __init__(self, state_dir: Path, pod: str):
        self.path = Path(state_dir) / AUDIT_NAME
        self.pod = pod
        self._lock = threading.Lock()
        self._repeats: dict[tuple, list] = {}     # key -> [since, count, entry]
        self._tokens: dict[tuple, list] = {}  # (pea, complain) -> [tokens, last refill]
        self._dropped: dict[str | None, int] = {}
        self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            self._size = os.fstat(self._fd).st_size
        except OSError:
            self._size = 0

    def refusal(self, *, pea: str | None, pid: int, uid: int | None, operation: str,
                path: str, need: str, rule: str, kind: str, complain: bool = False) -> None:
        with self._lock:
            if self._fd < 0:
                return
            now = time.monotonic()
            self._flush_repeats(now)
            key = (pid, uid, pea, operation, path, need, rule, kind, complain)
            seen = self._repeats.get(key)
            if seen is not None:
                seen[1] += 1
                return
            if not self._take(pea, now, complain):
                self._dropped[pea] = self._dropped.get(pea, 0) + 1
                return
            self._report_dropped(pea)
            entry = {
                "time": _now(), "pod": self.pod, "pea": pea, "pid": pid, "uid": uid,
                "operation": operation, "path": path, "need": need,
                "rule": rule, "kind": kind, "complain": complain,
            }
            if len(self._repeats) >= self.REPEAT_KEYS:
                self._flush_repeats(now, everything=True)
            self._repeats[key] = [now, 0, entry]
            self._write(entry)

    def _take(self, pea, now: float, complain: bool = False) -> bool:
        rate, burst = ((self.COMPLAIN_RATE, self.COMPLAIN_BURST) if complain
                       else (self.RATE, self.BURST))
        bucket = self._tokens.setdefault((pea, complain), [burst, now])
        bucket[0] = min(burst, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True

    def _report_dropped(self, pea) -> None:
        n = self._dropped.pop(pea, 0)
        if n:
            self._write({"time": _now(), "pod": self.pod, "pea": pea, "dropped": n,
                         "why": "rate limit"})

    def _flush_repeats(self, now: float, everything: bool = False) -> None:
        # Entries are inserted with the time they start and never moved, so
        # the dict (insertion-ordered) is ordered by ``since``: stop at the
        # first window still open. Every refusal passes here; a pass costs
        # what it closes, not the size of the table.
        while self._repeats:
            key = next(iter(self._repeats))
            since, count, entry = self._repeats[key]
            if not everything and now - since < self.REPEAT_WINDOW:
                break
            del self._repeats[key]
            if count:
                self._write({**entry, "time": _now(), "repeated": count})

    def _write(self, entry: dict) -> None:
        line = json.dumps(entry, ensure_ascii=False, separators=(", ", ": ")) + "\n"
        data = line.encode("utf-8", "surrogateescape")
        try:
            os.write(self._fd, data)
        except OSError:
            return  # a full disk must not turn into a denial of every request
        self._size += len(data)
        if self._size >= self.MAX_BYTES:
            try:
                os.rename(self.path, self.path.with_name(AUDIT_NAME + ".1"))
                os.close(self._fd)
                self._open()
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            self._flush_repeats(0.0, everything=True)
            for pea in list(self._dropped):
                self._report_dropped(pea)
            os.close(self._fd)
            self._fd = -1


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


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
