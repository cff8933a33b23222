"""The pod's first processes: the keeper (outside the pid namespace) and pid 1.

``python -m pods.init`` is started by the pod's daemon (fork+exec, so this is
a fresh single-threaded process, which unshare(CLONE_NEWUSER) requires). It
talks to the daemon over a SOCK_SEQPACKET socket (``--sync``), one line per
step:

    keeper                                   daemon
    joins the pod's cgroups
    unshare(net) as host root, loopback up
    unshare(user, mnt, pid, ipc, uts, cgroup)
    hostname
    "unshared"                   ->          writes uid_map/gid_map (only host root
                                             may map ranges), moves it into the
                                             default pea, adds the veth
                                 <-          "go"
    becomes pod root, forks pid 1
    "init PID"                   ->          (pidfd_open(PID): the handle on the pod)
                 pid 1: mounts /proc, /dev, pivots onto the pod root
    "ready"                      ->          the pod runs

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
import select
import signal
import socket
import sys

from kernel import libc
from pods import namespaces as ns
from pods import netns, rootfs


def _send(sock: socket.socket, text: str) -> None:
    sock.send(text.encode())


def _recv(sock: socket.socket) -> str:
    data = sock.recv(4096)
    if not data:
        raise SystemExit("pods.init: the daemon went away")
    return data.decode()


def _join_cgroups(procs_files: list[str]) -> None:
    for path in procs_files:
        with open(path, "w") as f:
            f.write("0\n")  # 0 = the writing process itself


def keeper(args) -> int:
    sync = socket.socket(fileno=args.sync)
    # Die with the daemon. PR_SET_PDEATHSIG fires when the parent thread
    # exits; the daemon spawns us from its main thread. If it died before
    # this line, getppid() already names another process.
    ns.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != args.daemon_pid:
        return 1
    # Join the pod's cgroups before unshare(CLONE_NEWCGROUP): the cgroup
    # namespace is rooted where we are, so pod processes see the pod's
    # cgroup as "/" and cannot name anything above it.
    _join_cgroups(args.cgroup)
    # The network namespace first, alone, while we are still host root: a
    # namespace belongs to the user namespace of the process that creates
    # it, so this one belongs to the host's. Pod root then holds no
    # capability over the pod's network (CAP_NET_ADMIN, CAP_NET_RAW,
    # CAP_NET_BIND_SERVICE are checked against the owner): it cannot change
    # addresses, routes or net.* sysctls, sniff with AF_PACKET or open raw
    # sockets, which would undo the peas' network rules for the whole pod.
    # Only the daemon (host root) configures it.
    libc.unshare(libc.CLONE_NEWNET)
    netns.loopback_up()
    libc.unshare(libc.CLONE_NEWUSER | libc.CLONE_NEWNS | libc.CLONE_NEWPID | libc.CLONE_NEWIPC
                 | libc.CLONE_NEWUTS | libc.CLONE_NEWCGROUP)
    ns.set_pdeathsig(signal.SIGKILL)  # unshare(CLONE_NEWUSER) changed our credentials
    # Slave, not private: a host unmount still reaches our copy of the host's
    # mounts during the few milliseconds before the old root is detached,
    # and nothing we mount propagates back to the daemon or the host.
    ns.mount(None, "/", None, ns.MS_REC | ns.MS_SLAVE)
    # Hold the pod root now: after unshare (an fd opened before would name
    # the daemon's mount namespace, where pid 1 may not mount) but before
    # becoming pod root, for whom the path under $PEAPOD_RUN (host-owned,
    # mode 0700) is out of reach. We are still host uid 0, the owner.
    # The pod root arrived from the daemon's namespace as a locked mount,
    # which pivot_root refuses (EINVAL); a bind of it onto itself, made
    # here, is a mount of our own namespace.
    ns.mount(args.root, args.root, None, ns.MS_BIND | ns.MS_REC)
    root_fd = os.open(args.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    ns.sethostname(args.hostname)
    _send(sync, "unshared")
    if _recv(sync).strip() != "go":
        return 1
    # Become pod root (mapped id 0): from here every file access is the
    # pod's, and capabilities are those of the pod's user namespace only.
    os.setgroups([])
    os.setresgid(args.root_gid, args.root_gid, args.root_gid)
    os.setresuid(args.root_uid, args.root_uid, args.root_uid)
    ns.set_pdeathsig(signal.SIGKILL)  # cleared by the uid change
    # Not dumpable: pod root may not ptrace, read the memory of, or open
    # /proc/PID/fd of its (unfiltered, privileged) pid 1 or of us.
    ns.prctl(ns.PR_SET_DUMPABLE, 0)
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(alive_w)
        try:
            code = pid1(args, sync, root_fd, alive_r)
        except BaseException as e:  # report, never return into the keeper's code
            try:
                _send(sync, f"error pid 1: {e}")
            except OSError:
                pass
            code = 1
        os._exit(code)
    os.close(alive_r)
    os.close(root_fd)
    _send(sync, f"init {pid}")
    sync.close()
    # Wait for pid 1; its end is the pod's end.
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status) & 0xFF
        except InterruptedError:
            continue


def pid1(args, sync: socket.socket, root_fd: int, alive_r: int) -> int:
    ns.set_pdeathsig(signal.SIGKILL)
    # The keeper may have died between fork and prctl: then the pipe's only
    # writer is gone and it reads as end-of-file.
    r, _, _ = select.select([alive_r], [], [], 0)
    if r:
        return 1
    rootfs.mount_proc_and_dev(root_fd, args.pts_gid if args.pts_gid >= 0 else None)
    rootfs.pivot_into(root_fd)
    os.close(root_fd)
    os.close(alive_r)
    _send(sync, "ready")
    sync.close()
    os.closerange(3, 1 << 16)
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    return reap_forever()


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
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        if stopping and not _others_alive():
            return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pods.init")
    p.add_argument("--sync", type=int, required=True)
    p.add_argument("--daemon-pid", type=int, required=True)
    p.add_argument("--root", required=True, help="the pod root (mount point of PeaFS)")
    p.add_argument("--hostname", required=True)
    p.add_argument("--cgroup", action="append", default=[], help="cgroup.procs file to join")
    p.add_argument("--root-uid", type=int, default=0)
    p.add_argument("--root-gid", type=int, default=0)
    p.add_argument("--pts-gid", type=int, default=-1)
    args = p.parse_args(argv)
    try:
        return keeper(args)
    except OSError as e:
        try:
            os.write(args.sync, f"error {e}".encode())
        except OSError:
            pass
        print(f"pods.init: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
