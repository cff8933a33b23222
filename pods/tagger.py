"""The tagger: start one command inside a pod, in a pea, as a pod user.

It is spawned by the pod's daemon (fork+exec: the daemon is a threaded trio
process and does no Python work after a fork), with
``startup.python_command("pods.tagger", ...)``. Its stdin/stdout/stderr are
the `pod exec` caller's; ``--ctl`` is a SOCK_SEQPACKET socket to the daemon
carrying JSON messages (and fds); ``--pidfd`` is the daemon's pidfd of the
pod's pid 1, the handle on the pod: a pidfd cannot be redirected to another
process by pid reuse.

Two processes, like bubblewrap's setup: the *monitor* (this process) stays
on the host, fully host root and outside every pod namespace, and the
*child* walks into the pod, step by step, and becomes CMD. Those steps are
written in pods/startup.py (part B, in order: B1 the monitor's setns and
fork, B2-B9 the child's: not dumpable, cgroups, namespaces, pty, user,
descriptors, filter, exec). Once CMD runs, the monitor relays the pty,
forwards signals from the daemon and reports the exit status (here).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import signal
import socket
import struct
import sys

from pods import startup
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


def monitor(args) -> int:
    ctl = socket.socket(fileno=args.ctl)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="pods.tagger")
    p.add_argument("--pidfd", type=int, required=True, help="pidfd of the pod's pid 1")
    p.add_argument("--ctl", type=int, required=True, help="SOCK_SEQPACKET to the daemon")
    p.add_argument("--cgroup", action="append", default=[], help="cgroup.procs file to join")
    p.add_argument("--ipcns", type=int, default=-1, help="fd of the pea's IPC namespace")
    p.add_argument("--uid", type=int, default=0)
    p.add_argument("--gid", type=int, default=0)
    p.add_argument("--pty", action="store_true")
    p.add_argument("--notify", action="store_true",
                   help="the daemon has a supervisor: install the filter with a listener")
    p.add_argument("--rows", type=int, default=0)
    p.add_argument("--cols", type=int, default=0)
    p.add_argument("--term", default="")
    p.add_argument("argv", nargs="+")
    args = p.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        return monitor(args)
    except OSError as e:
        try:
            send_msg(socket.socket(fileno=args.ctl), {"error": e.strerror or str(e),
                                                      "status": 126})
        except OSError:
            pass
        return 126


if __name__ == "__main__":
    sys.exit(main())
