"""The control protocol: JSON messages on SOCK_SEQPACKET Unix sockets, fds by SCM_RIGHTS.

One datagram = one JSON object, so no framing is needed and the fds a
message carries arrive with it. Used between `pod` and the daemon
($PEAPOD_RUN/pods/NAME/control, mode 0600: only host root may talk to a
pod's daemon), between the daemon and its tagger (the fork server), and
between the daemon and each monitor the tagger forks (a socketpair each).

`pod` -> daemon (first message of a connection):
    {"op": "ping"}                                   -> {"ok": true, "name", "init_pid"}
    {"op": "stop", "timeout": 5}                     -> {"ok": true}; the daemon tears the
                                                        pod down and exits (watch its lock)
    {"op": "exec", "argv": [...], "pea": P|null, "uid": U|null,
     "tty": bool, "winsize": [rows, cols], "term": "xterm"}  + fds [stdin, stdout, stderr]
        -> {"started": hostpid, "vpid": n} ... {"exit": status, "signal": n|null}
           or {"error": "message", "status": n}
    later on an exec connection: {"op": "signal", "sig": n}, {"op": "winsize", "rows", "cols"}

daemon -> tagger: {"op": "spawn", "argv", "uid", "gid", "cgroup", "notify", "pty", "rows",
    "cols", "term", "ipcns"} + fds [stdin, stdout, stderr, the monitor's socket, pid 1's
    pidfd, (IPC namespace)]; no answer on that socket (pods/tagger.py)
monitor -> daemon: {"monitor": pid} + its pidfd (first), {"listener": true} + fd (seccomp
    listener; daemon answers {"ok": true}), {"started": ...}, {"exit": ...} or
    {"error": ..., "status": n} (also the tagger's, when it cannot fork)
daemon -> monitor: {"signal": n}, {"winsize": [rows, cols]}

The start-up handshakes (pods/startup.py: daemon and keeper, keeper's pid 1,
the tagger, a monitor and its child) use the same framing over socketpairs:
    {"step": NAME, ...}                        step NAME is done (and its results)
    {"error": TEXT, "step": NAME, "errno": N}  step NAME failed (errno 0: not a
                                               system call); the sender stops
and the daemon's ready pipe to `pod start` the same objects, one per line
(a pipe has no datagrams): kernel/jsonline.py's ``write_line`` / ``read_line``.
"""

from __future__ import annotations

import array
import json
import os
import socket

MAX_MSG = 1 << 20
MAX_FDS = 8


def _anc(fds) -> list:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []


class ProtocolError(Exception):
    """A start-up handshake went wrong: the peer failed at ``step`` (its
    ``errno``, 0 if no system call failed), died, or said something else
    than the step expected. ``str()`` is one line: "STEP: what happened"."""

    def __init__(self, step: str, message: str, errno: int = 0):
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message
        self.errno = errno


def _fds_of(anc) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(payload[: len(payload) - len(payload) % a.itemsize])
            fds += list(a)
    return fds


def _decode(data: bytes, anc) -> tuple[dict | None, list[int]]:
    fds = _fds_of(anc)
    if not data:
        return None, fds
    try:
        obj = json.loads(data)
    except ValueError:
        obj = {}
    return (obj if isinstance(obj, dict) else {}), fds


def send_msg(sock: socket.socket, obj: dict, fds=()) -> None:
    sock.sendmsg([json.dumps(obj).encode()], _anc(fds))


def recv_msg(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """(message, fds); message None at end of stream."""
    data, anc, _, _ = sock.recvmsg(MAX_MSG, socket.CMSG_SPACE(MAX_FDS * 4))
    return _decode(data, anc)


async def asend_msg(sock, obj: dict, fds=()) -> None:
    await sock.sendmsg([json.dumps(obj).encode()], _anc(fds))


async def arecv_msg(sock) -> tuple[dict | None, list[int]]:
    data, anc, _, _ = await sock.recvmsg(MAX_MSG, socket.CMSG_SPACE(MAX_FDS * 4))
    return _decode(data, anc)


# ------------------------------------------------------- start-up handshakes

def step_msg(step: str, **results) -> dict:
    return {"step": step, **results}


def error_msg(step: str, e: BaseException) -> dict:
    """The message of a failed step: the system's words and errno for an
    OSError (not Python's "[Errno 13] ...: b'/x'"), else the exception's text."""
    if isinstance(e, OSError) and e.errno:
        return {"error": e.strerror or str(e), "step": step, "errno": e.errno}
    return {"error": str(e) or type(e).__name__, "step": step, "errno": 0}


def _shown(data: bytes) -> str:
    text = repr(data[:80])
    return text + ("..." if len(data) > 80 else "")


def parse_step(data: bytes, fds: list[int], step: str, gone: str = "") -> tuple[dict, list[int]]:
    """The peer's message at ``step``, checked: {"step": step, ...} returns
    (message, fds); anything else closes the fds and raises ProtocolError
    naming the step: end of stream (``gone`` says why, e.g. the peer's exit
    status), bytes that are not a JSON object, an error the peer reported
    (its step and errno), another step."""
    def fail(where: str, message: str, err: int = 0):
        for fd in fds:
            os.close(fd)
        raise ProtocolError(where, message, err)

    if not data:
        fail(step, f"ended before this step{': ' + gone if gone else ''}")
    try:
        msg = json.loads(data)
    except ValueError:
        msg = None
    if not isinstance(msg, dict):
        fail(step, f"not a message of the handshake: {_shown(data)}")
    if "error" in msg:
        where = msg.get("step") if isinstance(msg.get("step"), str) else step
        err = msg.get("errno") if isinstance(msg.get("errno"), int) else 0
        fail(where, str(msg["error"]), err)
    if msg.get("step") != step:
        fail(step, f"unexpected message {_shown(data)}")
    return msg, fds


def recv_step(sock: socket.socket, step: str, gone=lambda: "") -> tuple[dict, list[int]]:
    """Receive and check the message of ``step`` (parse_step); ``gone()``
    explains an end of stream."""
    data, anc, _, _ = sock.recvmsg(MAX_MSG, socket.CMSG_SPACE(MAX_FDS * 4))
    fds = _fds_of(anc)
    return parse_step(data, fds, step, gone() if not data else "")


async def arecv_step(sock, step: str, gone=lambda: "") -> tuple[dict, list[int]]:
    data, anc, _, _ = await sock.recvmsg(MAX_MSG, socket.CMSG_SPACE(MAX_FDS * 4))
    fds = _fds_of(anc)
    return parse_step(data, fds, step, gone() if not data else "")
