"""The control protocol: JSON messages on SOCK_SEQPACKET Unix sockets, fds by SCM_RIGHTS.

One datagram = one JSON object, so no framing is needed and the fds a
message carries arrive with it. Used between `pod` and the daemon
($PEAPOD_RUN/pods/NAME/control, mode 0600: only host root may talk to a
pod's daemon) and between the daemon and each tagger (a socketpair).

`pod` -> daemon (first message of a connection):
    {"op": "ping"}                                   -> {"ok": true, "name", "init_pid"}
    {"op": "stop", "timeout": 5}                     -> {"ok": true}; the daemon tears the
                                                        pod down and exits (watch its lock)
    {"op": "exec", "argv": [...], "pea": P|null, "uid": U|null,
     "tty": bool, "winsize": [rows, cols], "term": "xterm"}  + fds [stdin, stdout, stderr]
        -> {"started": hostpid, "vpid": n} ... {"exit": status, "signal": n|null}
           or {"error": "message", "status": n}
    later on an exec connection: {"op": "signal", "sig": n}, {"op": "winsize", "rows", "cols"}

tagger -> daemon: {"listener": true} + fd (seccomp listener; daemon answers {"ok": true}),
    {"started": ...}, {"exit": ...} or {"error": ..., "status": n}
daemon -> tagger: {"signal": n}, {"winsize": [rows, cols]}
"""

from __future__ import annotations

import array
import json
import socket

MAX_MSG = 1 << 20
MAX_FDS = 8


def _anc(fds) -> list:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []


def _decode(data: bytes, anc) -> tuple[dict | None, list[int]]:
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(payload[: len(payload) - len(payload) % a.itemsize])
            fds += list(a)
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
