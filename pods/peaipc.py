"""Per-pea IPC namespaces: System V IPC and POSIX message queues per pea.

SysV shared memory, semaphores and message queues, and POSIX message
queues, live in an IPC namespace, and their mode bits do not stop pod root
(CAP_IPC_OWNER in the pod's user namespace). So each pea gets a namespace
of its own: a pea neither sees nor reaches another pea's objects (shmget
and msgget of its key answer ENOENT, an id from another pea is EINVAL,
mq_open ENOENT), while every process of one pea, whenever it started,
shares them.

``python -m pods.peaipc --sock FD`` is spawned by the pod's daemon (a fresh
single-threaded process, which setns into a user namespace requires). It
joins the pod's user namespace through the pidfd of the pod's pid 1 (host
root: it gets the capabilities of that namespace, and nothing in the pod
can name it: it is not in the pod's pid namespace), unshares a new IPC
namespace, which therefore belongs to the pod's user namespace, and hands
an fd of it to the daemon, which keeps it for as long as the pod runs. The
tagger's child joins it for every process it starts in that pea
(pods/startup.py, step B4b).

A pea transition does not move a process between IPC namespaces (a
process can only join one itself): a process that changed pea by exec
keeps the IPC objects of the pea it started in (docs/SECURITY.md).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from kernel import libc
from pods import namespaces as ns
from pods.control import send_msg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pods.peaipc")
    p.add_argument("--sock", type=int, required=True, help="SOCK_SEQPACKET to the daemon")
    p.add_argument("--pidfd", type=int, required=True, help="pidfd of the pod's pid 1")
    args = p.parse_args(argv)
    sock = socket.socket(fileno=args.sock)
    try:
        ns.prctl(ns.PR_SET_DUMPABLE, 0)     # host root inside the pod's user namespace
        ns.setns(args.pidfd, libc.CLONE_NEWUSER)
        libc.unshare(libc.CLONE_NEWIPC)
        fd = os.open("/proc/self/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        send_msg(sock, {"error": f"IPC namespace: {e.strerror or e}"})
        return 1
    send_msg(sock, {"ok": True}, [fd])
    return 0


if __name__ == "__main__":
    sys.exit(main())
