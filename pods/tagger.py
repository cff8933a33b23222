"""The tagger: the pod's fork server, and the monitor of each pod process.

The daemon starts one tagger when the pod starts (fork+exec: the daemon is
a threaded trio process and does no Python work after a fork), with
``startup.python_command("pods.tagger", "--sock", FD, ...)``, and another
if it dies. It is single-threaded, imports pods.startup (the filter with
it) once and builds the filter programs once (step A8). Its socket to the
daemon (``--sock``, SOCK_SEQPACKET) then carries one request per pod
process (`pod exec`, every service), in the control protocol's framing:

    {"op": "spawn", "argv": [...], "uid": U, "gid": G, "cgroup": [FILE, ...],
     "notify": bool, "pty": bool, "rows": R, "cols": C, "term": "xterm",
     "ipcns": bool}
    + fds [stdin, stdout, stderr, ctl, pidfd of pid 1, (IPC namespace)]

and the tagger forks a *monitor* for it (step B0), reaps each monitor when
it ends, and sends nothing back on ``--sock``: everything about one pod
process goes over its own ``ctl`` socket, a socketpair the daemon made for
it. The monitor's first message there is ``{"monitor": PID}`` with a pidfd
of itself (how the daemon follows a process that is not its child); if the
fork fails, the tagger says ``{"error", "status": 126}`` there instead. The
tagger ends when the daemon closes ``--sock`` (or dies: its death signal);
running monitors go on without it.

Two processes per pod process, like bubblewrap's setup: the monitor stays
on the host, fully host root and outside every pod namespace, and its
*child* walks into the pod, step by step, and becomes CMD. Those steps are
written in pods/startup.py (part B, in order: B0 the monitor's descriptors,
B1 its setns and fork, B2-B9 the child's: not dumpable, cgroups,
namespaces, pty, user, descriptors, filter, exec). Once CMD runs, the
monitor relays the pty, forwards signals from the daemon and reports the
exit status (here).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import socket
import struct
import sys
from types import SimpleNamespace

from kernel import procfs
from pods import control, startup
from pods.control import recv_msg, send_msg
from pods.startup import TIOCSWINSZ


# -------------------------------------------------------------- monitor side
def _readable(fds) -> list[int]:
    """The fds (ints or objects with fileno()) ready to read, or hung up:
    select.select() for any fd number. select() itself fails on fds >= 1024
    (FD_SETSIZE), and the daemon, which holds one O_PATH handle per PeaFS
    inode, hands us such numbers."""
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    return [fd for fd, _ in p.poll()]


def _relay(ctl: socket.socket, child: int, child_pidfd: int, master: int | None) -> int:
    """Pump the pty and the daemon's messages until the child exits; return
    its wait status."""
    fds_in = {ctl.fileno(), child_pidfd}
    stdin_open = master is not None
    if master is not None:
        fds_in.add(master)
        fds_in.add(0)
        os.set_blocking(master, False)
    while True:
        r = _readable(fds_in)
        if master is not None and master in r:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave end is closed
                data = b""
            if data:
                _write_all(1, data)
            else:
                fds_in.discard(master)
        if stdin_open and 0 in r:
            data = os.read(0, 65536)
            if data:
                _write_all(master, data)
            else:
                stdin_open = False
                fds_in.discard(0)
        if ctl.fileno() in r:
            try:
                msg, extra = recv_msg(ctl)
            except OSError:
                msg, extra = None, []
            for fd in extra:
                os.close(fd)
            if msg is None:
                fds_in.discard(ctl.fileno())
            elif "signal" in msg:
                try:
                    os.kill(child, int(msg["signal"]))
                except OSError:
                    pass
            elif "winsize" in msg and master is not None:
                rows, cols = msg["winsize"]
                fcntl.ioctl(master, TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        if child_pidfd in r:
            _, status = os.waitpid(child, 0)
            if master is not None:  # drain what CMD wrote last
                while True:
                    try:
                        data = os.read(master, 65536)
                    except OSError:
                        break
                    if not data:
                        break
                    _write_all(1, data)
            return status


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            p = select.poll()
            p.register(fd, select.POLLOUT)
            p.poll()
            continue
        except OSError:
            return
        data = data[n:]


def monitor(args, ctl: socket.socket) -> int:
    started = startup.start_in_pod(args, ctl)       # B1-B9 (pods/startup.py)
    if isinstance(started, int):
        return started
    child, child_pidfd, master = started
    status = _relay(ctl, child, child_pidfd, master)
    code = os.waitstatus_to_exitcode(status)
    exit_status = 128 - code if code < 0 else code
    try:
        send_msg(ctl, {"exit": exit_status, "signal": -code if code < 0 else None})
    except OSError:
        pass
    return exit_status


def _monitor_main(server: socket.socket, args, stdio: list[int]) -> int:
    """The monitor, just forked: B0's descriptors, its pidfd to the daemon,
    then B1-B9 and the relay."""
    keep = [args.ctl, args.pidfd] + ([args.ipcns] if args.ipcns >= 0 else [])
    startup.monitor_descriptors(server, stdio, keep)                # B0
    ctl = socket.socket(fileno=args.ctl)
    try:
        me = os.pidfd_open(os.getpid())
        send_msg(ctl, {"monitor": os.getpid()}, [me])
        os.close(me)
        return monitor(args, ctl)
    except OSError as e:
        try:
            send_msg(ctl, {"error": e.strerror or str(e), "status": 126})
        except OSError:
            pass
        return 126


# -------------------------------------------------------------- fork server

def _request(msg: dict, fds: list[int]) -> SimpleNamespace:
    """The arguments of start_in_pod from a request, checked (ValueError)."""
    def ints(*names):
        for n in names:
            if not isinstance(msg.get(n), int) or isinstance(msg.get(n), bool):
                raise ValueError(f"{n} is not a number")
    ints("uid", "gid", "rows", "cols")
    argv, cgroups = msg.get("argv"), msg.get("cgroup")
    if (msg.get("op") != "spawn" or not isinstance(argv, list) or not argv
            or not all(isinstance(a, str) for a in argv)):
        raise ValueError("a request needs op spawn and argv")
    if not isinstance(cgroups, list) or not all(isinstance(c, str) for c in cgroups):
        raise ValueError("cgroup is not a list of files")
    if len(fds) != (6 if msg.get("ipcns") else 5):
        raise ValueError(f"{len(fds)} descriptors came with the request")
    return SimpleNamespace(
        argv=argv, uid=msg["uid"], gid=msg["gid"], cgroup=cgroups,
        notify=bool(msg.get("notify")), pty=bool(msg.get("pty")), rows=msg["rows"],
        cols=msg["cols"], term=str(msg.get("term") or ""),
        ctl=fds[3], pidfd=fds[4], ipcns=fds[5] if msg.get("ipcns") else -1)


def _spawn(server: socket.socket, msg: dict, fds: list[int]) -> int | None:
    """B0, in the tagger: fork a monitor for one request; its pid, or None
    (the error said on the request's socket when there is one)."""
    try:
        args = _request(msg, fds)
        pid = os.fork()   # this process is single-threaded: fork is safe
    except (ValueError, OSError) as e:
        if len(fds) > 3:
            try:
                with socket.socket(fileno=os.dup(fds[3])) as ctl:
                    send_msg(ctl, {"error": f"tagger: {getattr(e, 'strerror', None) or e}",
                                   "status": 126})
            except OSError:
                pass
        for fd in fds:
            os.close(fd)
        return None
    if pid == 0:
        code = 126
        try:
            code = _monitor_main(server, args, fds[:3])
        finally:
            os._exit(code)    # never back into the server's loop
    for fd in fds:
        os.close(fd)
    return pid


def serve(server: socket.socket) -> int:
    """The tagger's loop: requests on ``server``, and its monitors' ends
    (a pidfd each, polled; a sweep of waitpid catches one whose pidfd could
    not be opened). Returns when the daemon closes its end."""
    pidfds: dict[int, int] = {}          # pid -> pidfd
    p = select.poll()
    p.register(server, select.POLLIN)
    while True:
        ready = {fd for fd, _ in p.poll()}
        if server.fileno() in ready:
            msg, fds = recv_msg(server)
            if msg is None:
                return 0
            pid = _spawn(server, msg, fds)
            if pid is not None:
                try:
                    pidfd = os.pidfd_open(pid)
                except OSError:
                    pidfd = -1
                if pidfd >= 0:
                    pidfds[pid] = pidfd
                    p.register(pidfd, select.POLLIN)
        # Reap every monitor that ended (those whose pidfd is ready, and any
        # other: waitpid(-1) is cheap and misses none).
        for pid in procfs.reap_ended():
            pidfd = pidfds.pop(pid, None)
            if pidfd is not None:
                p.unregister(pidfd)
                os.close(pidfd)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="pods.tagger")
    p.add_argument("--sock", type=int, required=True, help="SOCK_SEQPACKET to the daemon")
    p.add_argument("--daemon-pid", type=int, required=True)
    args = p.parse_args(argv)
    server = socket.socket(fileno=args.sock)
    try:
        startup.tagger_ready(args, server)                          # A8
    except OSError as e:
        try:
            send_msg(server, control.error_msg("tagger", e))
        except OSError:
            pass
        print(f"pods.tagger: {e}", file=sys.stderr)
        return 1
    return serve(server)


if __name__ == "__main__":
    sys.exit(main())
