"""The pod's first processes: the keeper (outside the pid namespace) and pid 1.

The keeper is started by the pod's daemon (fork+exec, so this is a fresh
single-threaded process, which unshare(CLONE_NEWUSER) requires); ``--sync``
is its SOCK_SEQPACKET socket to the daemon. Its start-up steps, and pid
1's, are written in pods/startup.py (part A, in order, with the daemon's
steps between them); this module parses the arguments and holds pid 1's
life once the pod runs.

Why two processes: unshare(CLONE_NEWPID) puts only the caller's *children*
in the new pid namespace. The keeper stays outside, as the daemon's child;
pid 1 is the keeper's child. Death chain: the daemon dies -> the keeper gets
SIGKILL (PR_SET_PDEATHSIG) -> pid 1 gets SIGKILL (PR_SET_PDEATHSIG) -> the
kernel kills every other process of the pid namespace. So no pod process
outlives its daemon.

pid 1 then only reaps orphans, forwards TERM to every pod process when the
daemon (and only the daemon) asks, and keeps the pod alive while nothing
else runs. The policy's ``init`` program is
started by the daemon through the tagger, like any ``pod exec``, so that it
gets the same pea, user and seccomp treatment.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from kernel import procfs
from pods import startup


def _others_alive() -> bool:
    try:
        return any(n.isdigit() and n != "1" for n in os.listdir("/proc"))
    except OSError:
        return False


def reap_forever() -> int:
    """pid 1's loop: reap every child (orphans are reparented to us), on
    TERM/INT/HUP from outside the pod (the daemon) forward TERM to every
    process of the pod and exit once they are gone. Signals are blocked and taken with sigwaitinfo: pid 1 of a pid
    namespace never gets a signal it has no handler for, but blocked signals
    are queued."""
    wanted = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    stopping = False
    while True:
        if stopping:
            info = signal.sigtimedwait(wanted, 0.05)
        else:
            info = signal.sigwaitinfo(wanted)
        # Only the daemon may stop the pod. A signal sent from outside the
        # pod's pid namespace carries si_pid 0 here (the kernel has no pid
        # for its sender in this namespace); one from a pod process names
        # it. The supervisor already refuses pod processes a signal to pid
        # 1 (EPERM); this check holds even for a pea without a supervisor.
        if (info is not None and info.si_pid == 0
                and info.si_signo in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)):
            if not stopping:
                stopping = True
                try:
                    os.kill(-1, signal.SIGTERM)  # every process of the pod but us
                except OSError:
                    pass
        procfs.reap_ended()
        if stopping and not _others_alive():
            return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="pods.init")
    p.add_argument("--sync", type=int, required=True)
    p.add_argument("--daemon-pid", type=int, required=True)
    p.add_argument("--root", required=True, help="the pod root (mount point of PeaFS)")
    p.add_argument("--hostname", required=True)
    p.add_argument("--cgroup", action="append", default=[], help="cgroup.procs file to join")
    p.add_argument("--root-uid", type=int, default=0)
    p.add_argument("--root-gid", type=int, default=0)
    p.add_argument("--pts-gid", type=int, default=-1)
    return startup.keeper(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
