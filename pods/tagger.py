"""The tagger: start one command inside a pod, in a pea, as a pod user.

``python -m pods.tagger`` is spawned by the pod's daemon (fork+exec: the
daemon is a threaded trio process and does no Python work after a fork).
Its stdin/stdout/stderr are the `pod exec` caller's; ``--ctl`` is a
SOCK_SEQPACKET socket to the daemon carrying JSON messages (and fds);
``--pidfd`` is the daemon's pidfd of the pod's pid 1, the handle on the pod:
a pidfd cannot be redirected to another process by pid reuse.

Two processes, like bubblewrap's setup: the *monitor* (this process) stays
on the host, fully host root and outside every pod namespace, and the
*child* walks into the pod, step by step, and becomes CMD:

 monitor  1. setns(pidfd, PID): only our children will be in the pod's
             pid namespace, so the child gets a pod pid and pid 1 as reaper.
          2. fork.
 child    2b. PR_SET_DUMPABLE 0: from step 4 to step 6 the child is host root
             inside the pod's user namespace, where pod root could otherwise
             ptrace it (or open /proc/PID/mem) and run code as host root.
          3. join the pea's cgroup (and the pod's limit cgroups) while still
             host root: membership is inherited by everything CMD forks,
             and no later step runs outside the pea or the limits.
             Then vm.memfd_noexec = 2 for the pod's pid namespace (host
             root only may): no memfd of the pod can be executed.
          4. setns(pidfd, USER|MNT|IPC|UTS|NET|CGROUP), all at once: from
             here on the child sees only the pod (its root and cwd are the
             pod's root, the host's mounts are unreachable) and holds
             capabilities only in the pod's user namespace.
             4b. setns to the pea's IPC namespace (pods/peaipc.py).
          5. pty (when the caller has a terminal): a new pty from the pod's
             own devpts (/dev/pts/ptmx, opened with openat2 refusing every
             symlink); the caller's terminal is never handed into the pod
             (TIOCSTI on it would type commands into the host shell).
             setsid in any case: CMD has no controlling terminal of the host.
          6. CAP_SYS_PTRACE out of the bounding set (pod root cannot reach
             other uids' processes through /proc); setgroups/setresgid/
             setresuid to the pod user: a non-root user loses every
             capability here.
          7. close every fd but 0, 1, 2: nothing of the daemon's leaks;
             umask 022 (whatever the spawning thread had).
          8. seccomp filter (pods.seccomp), the last step: no_new_privs, the
             deny list, and the notification listener, which the monitor
             takes out of the child with pidfd_getfd and hands to the
             daemon's supervisor before the child may continue.
          9. exec CMD. Its first instruction runs with all of the above.
 monitor 10. relays the pty, forwards signals from the daemon, reports the
             exit status.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import sys

from kernel import libc, procfs
from pods import namespaces as ns
from pods.control import recv_msg, send_msg

# No fallback: a pod process never runs without its filter (fail closed).
from pods import seccomp as _seccomp

TIOCGPTPEER = 0x5441
TIOCSPTLCK = 0x40045431
TIOCSCTTY = 0x540E
TIOCSWINSZ = 0x5414

POD_NS = (libc.CLONE_NEWUSER | libc.CLONE_NEWNS | libc.CLONE_NEWIPC | libc.CLONE_NEWUTS
          | libc.CLONE_NEWNET | libc.CLONE_NEWCGROUP)

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# ---------------------------------------------------------------- child side

MEMFD_NOEXEC = "/proc/sys/vm/memfd_noexec"
MEMFD_NOEXEC_ENFORCED = b"2"   # MFD_EXEC refused, every memfd sealed non-executable


def _seal_memfds() -> None:
    """Set vm.memfd_noexec = 2 for the pid namespace we were forked into
    (the kernel reads the writer's active pid namespace; host root has
    CAP_SYS_ADMIN over the pod's user namespace, which the write needs)."""
    try:
        fd = os.open(MEMFD_NOEXEC, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise OSError(errno.ENOSYS, "the kernel has no vm.memfd_noexec (Linux 6.3 or "
                                    "later is needed to keep memfds from being executed)")
    try:
        os.write(fd, MEMFD_NOEXEC_ENFORCED)
    finally:
        os.close(fd)


def _close_all_but(keep: set[int]) -> None:
    """Close every descriptor from 3 up except those in ``keep``
    (os.closerange is the close_range(2) system call: one call a gap)."""
    low = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 0x7FFFFFFF)


def _child(args, report_w: int, go_r: int, ptysock: socket.socket | None) -> None:
    """Steps 3-9; never returns. Failures are written to ``report_w``."""
    step = "dumpable"
    try:
        # 2b. Not dumpable, before anything else: from step 4 until step 6
        # this process is host root *and* in the pod's user namespace, where
        # pod root holds CAP_SYS_PTRACE. The kernel lets a process with that
        # capability over our credentials' namespace ptrace us (or open
        # /proc/PID/mem) only if we are dumpable, or if it also has the
        # capability over our mm's namespace, the host's: non-dumpable
        # closes the window (pod root could otherwise write code into a
        # host-root process). The exec at step 9 makes CMD dumpable again,
        # with its mm in the pod's namespace.
        ns.prctl(ns.PR_SET_DUMPABLE, 0)
        step = "cgroup"
        # 3. pea and limit cgroups (host paths, host root: before step 4).
        for procs in args.cgroup:
            with open(procs, "w") as f:
                f.write("0\n")  # 0 = the writing process itself
        # 3b. memfd_create() files that cannot be executed, in the pod's pid
        # namespace (the sysctl is per pid namespace since Linux 6.3, and a
        # pod cannot lower it below its parent's; the file belongs to host
        # root, so only we, not pod root, can set it). Without it, a pea
        # could copy a program it may read into a memfd and execute that,
        # an exec PeaFS never sees (no x check, no transition).
        step = "memfd_noexec"
        _seal_memfds()
        # 4. every other namespace of the pod, atomically through the pidfd.
        step = "setns"
        ns.setns(args.pidfd, POD_NS)
        os.close(args.pidfd)
        # 4b. the pea's own IPC namespace (pods/peaipc.py): SysV IPC and
        # POSIX queues of other peas are out of reach. Joining needs
        # CAP_SYS_ADMIN over the pod's user namespace, ours since step 4.
        if args.ipcns >= 0:
            step = "ipc namespace"
            ns.setns(args.ipcns, libc.CLONE_NEWIPC)
            os.close(args.ipcns)
        os.chdir("/")
        # 5. session and terminal.
        step = "pty"
        os.setsid()
        if ptysock is not None:
            # The pod's devpts instance itself, no symlink followed: /dev is
            # read-only in a pod, and even so a pod-made link must neither
            # redirect this privileged open nor stall it in PeaFS.
            master = libc.openat2(libc.AT_FDCWD, "/dev/pts/ptmx",
                                  os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC,
                                  libc.RESOLVE_NO_SYMLINKS | libc.RESOLVE_NO_MAGICLINKS)
            fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
            slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR)
            if args.rows and args.cols:
                fcntl.ioctl(slave, TIOCSWINSZ, struct.pack("HHHH", args.rows, args.cols, 0, 0))
            send_msg(ptysock, {"pty": True}, [master])
            os.close(master)
            ptysock.close()
            fcntl.ioctl(slave, TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            if slave > 2:
                os.close(slave)
        # 6. the pod user, without CAP_SYS_PTRACE. Pod root keeps every
        # other capability of the pod's user namespace, but with this one it
        # would reach into processes of other peas running under another
        # uid: /proc/PID/mem, environ, fd/ of another pea need it or the
        # same uid (the kernel's ptrace_may_access). Dropped from the
        # bounding set, it is gone from CMD's sets at the exec (step 9) and
        # from every descendant's; no pod process can get it back (nested
        # user namespaces are refused by the filter).
        step = "user"
        ns.prctl(ns.PR_CAPBSET_DROP, ns.CAP_SYS_PTRACE)
        os.setgroups([args.gid])
        os.setresgid(args.gid, args.gid, args.gid)
        os.setresuid(args.uid, args.uid, args.uid)
        # 7. no fd of ours survives into CMD except the report pipe (CLOEXEC).
        # Every number, not only those below 1024: the daemon holds one
        # O_PATH handle per PeaFS inode, so the descriptors passed to us (the
        # control socket among them) can have any number, and a leaked
        # control socket would let CMD talk to the daemon as its tagger.
        _close_all_but({0, 1, 2, report_w, go_r})
        os.set_inheritable(report_w, False)
        # CMD starts with the usual 022, whatever the thread that spawned
        # us had (PeaFS's serving thread runs with 0, in a file-system
        # context of its own, and a worker thread it made may have started
        # us): never a umask that makes every file CMD creates writable by all.
        os.umask(0o022)
        env = {"PATH": PATH, "HOME": "/root" if args.uid == 0 else "/",
               "HOSTNAME": os.uname().nodename}
        if args.term:
            env["TERM"] = args.term
        # 8. seccomp, last: from here on only the filtered calls below run.
        step = "seccomp"
        listener = _seccomp.install(notify=args.notify)
        os.write(report_w, f"L {-1 if listener is None else listener}\n".encode())
        if os.read(go_r, 1) != b"g":
            os._exit(126)
        os.close(go_r)
        if listener is not None:
            os.close(listener)
        # 9. exec. On success the CLOEXEC report pipe closes with no data.
        step = "exec"
        os.execvpe(args.argv[0], args.argv, env)
    except OSError as e:
        try:
            # The system's words, not Python's ("[Errno 13] ...: b'/x'"): the
            # user's `pod exec` already names the command.
            os.write(report_w, f"E {step} {e.errno or 0} {e.strerror or e}\n".encode())
        except OSError:
            pass
    except BaseException as e:  # noqa: BLE001 - anything else is also a failure to start
        try:
            os.write(report_w, f"E {step} 0 {e}\n".encode())
        except OSError:
            pass
    os._exit(127)


# -------------------------------------------------------------- monitor side

def _read_line(fd: int) -> str:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").strip()


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
    # 1. the pod's pid namespace, for our children only.
    ns.setns(args.pidfd, libc.CLONE_NEWPID)
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    ptysock = peer = None
    if args.pty:
        ptysock, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # 2. fork (this process is single-threaded: fork is safe).
    child = os.fork()
    if child == 0:
        os.close(report_r)
        os.close(go_w)
        ctl.close()
        if ptysock is not None:
            ptysock.close()
        _child(args, report_w, go_r, peer)
    os.close(report_w)
    os.close(go_r)
    os.close(args.pidfd)
    if args.ipcns >= 0:
        os.close(args.ipcns)
    if peer is not None:
        peer.close()
    child_pidfd = os.pidfd_open(child)
    master = None
    try:
        if ptysock is not None:
            r = _readable([ptysock, report_r])
            if ptysock.fileno() in r:
                _, fds = recv_msg(ptysock)
                master = fds[0] if fds else None
            ptysock.close()
        line = _read_line(report_r)
        if line.startswith("L "):
            fd = int(line.split()[1])
            if fd >= 0:
                # The listener lives in the child; take a copy through its
                # pidfd (we are host root, it is our child) for the daemon's
                # supervisor, before the child may run anything filtered.
                listener = libc.pidfd_getfd(child_pidfd, fd)
                send_msg(ctl, {"listener": True}, [listener])
                os.close(listener)
                reply, _ = recv_msg(ctl)
                if not reply or not reply.get("ok"):
                    os.kill(child, signal.SIGKILL)
                    os.waitpid(child, 0)
                    send_msg(ctl, {"error": "the supervisor refused the listener", "status": 126})
                    return 126
            os.write(go_w, b"g")
            os.close(go_w)
            line = _read_line(report_r)  # empty: exec succeeded (CLOEXEC)
        if line.startswith("E "):
            _, step, err, *rest = line.split(" ", 3)
            os.waitpid(child, 0)
            status = 126 if int(err) in (errno.EACCES, errno.ENOEXEC, errno.EPERM) else 127
            if step != "exec":
                status = 126
            msg = rest[0] if rest else ""
            # `pod: exec CMD: Permission denied`; a step before the exec is named.
            send_msg(ctl, {"error": msg if step == "exec" else f"{step}: {msg}",
                           "status": status})
            return status
        send_msg(ctl, {"started": child, "vpid": procfs.vpid(child)})
        status = _relay(ctl, child, child_pidfd, master)
    finally:
        os.close(report_r)
    code = os.waitstatus_to_exitcode(status)
    exit_status = 128 - code if code < 0 else code
    try:
        send_msg(ctl, {"exit": exit_status, "signal": -code if code < 0 else None})
    except OSError:
        pass
    return exit_status


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pods.tagger")
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
