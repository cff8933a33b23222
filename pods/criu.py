"""CRIU for the daemon: where it is, its feature cache, and the launcher that
runs it as host root inside a pod's namespaces (docs/MIGRATION.md 2.10-2.11).

Why criu runs *inside* the pod, not on the host: a pod is not one process
tree (its services hang off host-side tagger monitors), its pid 1 is a host
program, and PeaFS refuses outsiders (MIGRATION.md 2.1-2.5). Inside the pod's
pid, mount, net, ipc, uts and cgroup namespaces, but not its user namespace,
criu shares every namespace but the user one with the tree it dumps, so it
dumps files by their paths in the pod's own view and takes only the user
namespace into the image.

The launcher (``python -m pods.criu``) is a process of its own because the
daemon is threaded and never forks to run Python. Its steps, in order, each
with what it is for:

1. it writes itself into the pod's checkpoint cgroup (kernel.cgroup
   CHECKPOINT, a sibling of the peas): PeaFS gives that cgroup every file
   right (criu reads mapped files of every pea at dump and opens files with
   their original flags at restore), and no pea's network programs are
   attached there. Only host root can put a process there;
2. it enters the pod's namespaces through a pidfd (the tree's root for a
   dump, the pod's pid 1 for a restore), and the IPC namespace of a pea
   when one is given (a tree is restored into the IPC namespace of the pea
   it was started in), never the user namespace: it stays host root;
3. it forks, so that the child is in the pod's pid namespace and sees
   itself in the pod's /proc;
4. for a restore only, the child takes a private copy of the pod's mount
   namespace with a writable proc of the pod's pid namespace (the pod's is
   read-only, and criu writes loginuid and timens_offsets of its own
   tasks) and a tmpfs for criu's cgroup yard (YARD). The restored tasks
   go to the pod's own mount namespace (--join-ns mnt);
5. it execs criu from a descriptor opened on the host (the binary is not in
   the pod's tree), with criu's feature cache as descriptor 9: criu is built
   with RUNDIR=/proc/self/fd/9 (contrib/criu/install-criu) so that it never
   reads the pod's /run, which pod root may write.

The image directory is a host directory handed down as a descriptor; the
words ``IMG`` in criu's arguments become /proc/self/fd/N.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kernel import libc
from pods import namespaces as ns

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "contrib" / "criu" / "install-criu"
KDAT_FD = 9          # contrib/criu/install-criu builds criu with RUNDIR=/proc/self/fd/9
# Namespaces entered through the target's pidfd (never CLONE_NEWUSER). The
# time namespace too: a restore puts the tasks in a time namespace criu
# makes (their CLOCK_MONOTONIC goes on from the dump), owned by the host's
# user namespace; criu dumps a tree in a time namespace other than its own
# by entering it from the tree's user namespace, which it may not ("Can't
# setns 7/time: Operation not permitted"). Sharing it, criu saves the
# clocks' values instead, as for the first dump.
POD_NS = (libc.CLONE_NEWNS | libc.CLONE_NEWNET | libc.CLONE_NEWUTS | libc.CLONE_NEWPID
          | libc.CLONE_NEWCGROUP | libc.CLONE_NEWTIME)


class CriuError(Exception):
    """criu is missing, or a run of it failed (the message says which)."""


def binary() -> str:
    """The criu that contrib/criu/install-criu built and checked, or
    CriuError saying how to get one. Never a system criu: it lacks the
    patches and reads its feature cache from /run."""
    try:
        r = subprocess.run([str(INSTALL), "--check"], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise CriuError(f"cannot run {INSTALL}: {e.strerror}") from None
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        raise CriuError("checkpoint and restore need CRIU >= 4.1 with Pea-Pod's patches: "
                        "run `make criu` (it builds one from Debian's source)")
    return lines[-1]


class FeatureCache:
    """criu's cache of kernel facts (criu.kdat), made by `criu check` on the
    host in a private directory on /dev/shm (criu keeps it only on a tmpfs)
    and handed to every criu run as descriptor 9. A context manager: the
    directory is removed at exit."""

    def __init__(self, criu: str):
        self.dir = Path(tempfile.mkdtemp(prefix="peapod-criu-kdat-", dir="/dev/shm"))
        try:
            # sh puts the directory on descriptor 9 for criu: no Python runs
            # between fork and exec (the daemon is threaded).
            r = subprocess.run(["sh", "-c", f'exec "$0" check {KDAT_FD}<"$1"', criu, str(self.dir)],
                               capture_output=True, text=True, timeout=60,
                               stdin=subprocess.DEVNULL)
            if r.returncode != 0 or not (self.dir / "criu.kdat").exists():
                last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["(no output)"]
                raise CriuError(f"`criu check` failed on this kernel: {last[0]}")
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.dir, ignore_errors=True)


def launcher_argv(python: list[str], *, cgroup_procs: str, ns_fd: int, ipc_fd: int | None = None,
                  criu_fd: int | None = None, kdat_fd: int | None = None,
                  img_fd: int | None = None, restore: bool = False, last_pid: int | None = None,
                  criu_args: list[str] = ()) -> list[str]:
    """The command line of the launcher (main below), for descriptors the
    caller passes to it: criu with ``criu_args`` (the criu, feature-cache
    and image descriptors given), or with ``last_pid`` the pod's next pid."""
    argv = python + ["--cgroup-procs", cgroup_procs, "--ns-fd", str(ns_fd)]
    for flag, fd in (("--criu-fd", criu_fd), ("--kdat-fd", kdat_fd), ("--img-fd", img_fd),
                     ("--ipc-fd", ipc_fd)):
        if fd is not None:
            argv += [flag, str(fd)]
    if restore:
        argv.append("--restore")
    if last_pid is not None:
        return argv + ["--last-pid", str(last_pid)]
    return argv + ["--"] + list(criu_args)


# criu's cgroup yard (--cgroup-yard: where it mounts the hierarchies it
# moves tasks in): a tmpfs over /proc/driver of criu's own proc. It must be a
# directory that exists in every pod and that no restored file lives under:
# on the pod's /tmp it hid the ghost files criu makes there for deleted
# files (MariaDB's) from criu's own clean-up ("Couldn't unlink remap
# /tmp/ib....cr.1.ghost"), and a directory made in the staging tree would
# be a write to the pod's disk. The kernel makes /proc/driver in every proc.
YARD = "/proc/driver"


def _private_proc() -> None:
    """Step 4: this process's own copy of the pod's mount namespace, with a
    writable proc of the pod's pid namespace and a tmpfs yard (YARD).
    Nothing of it reaches the pod's."""
    flags = ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC
    libc.unshare(libc.CLONE_NEWNS)
    ns.mount("none", "/", None, ns.MS_REC | ns.MS_PRIVATE)
    ns.mount("proc", "/proc", "proc", flags)
    ns.mount("tmpfs", YARD, "tmpfs", flags, "mode=700")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="pods.criu", description="run criu inside a pod (the daemon's)")
    p.add_argument("--cgroup-procs", required=True)
    p.add_argument("--ns-fd", type=int, required=True)
    p.add_argument("--ipc-fd", type=int)
    p.add_argument("--criu-fd", type=int)
    p.add_argument("--kdat-fd", type=int)
    p.add_argument("--img-fd", type=int)
    p.add_argument("--restore", action="store_true")
    p.add_argument("--last-pid", type=int, help="instead of criu: make LAST the last pid "
                   "given out in the pod's pid namespace (a restore keeps the image's free)")
    p.add_argument("criu_args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    args = a.criu_args[1:] if a.criu_args[:1] == ["--"] else a.criu_args
    try:
        # 1. the checkpoint cgroup, before anything of the pod is entered.
        with open(a.cgroup_procs, "w") as f:
            f.write(str(os.getpid()))
        # 2. the pod's namespaces (pid: for our children), never its user one.
        ns.setns(a.ns_fd, POD_NS)
        if a.ipc_fd is not None:
            ns.setns(a.ipc_fd, libc.CLONE_NEWIPC)
        else:
            ns.setns(a.ns_fd, libc.CLONE_NEWIPC)
        os.chdir("/")
    except OSError as e:
        print(f"pods.criu: entering the pod: {e}", file=sys.stderr)
        return 120
    # 3. criu in the pod's pid namespace.
    child = os.fork()
    if child == 0:
        try:
            if a.last_pid is not None:
                _private_proc()
                with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                    f.write(str(a.last_pid))
                os._exit(0)
            if a.restore:
                _private_proc()                       # 4.
            os.dup2(a.kdat_fd, KDAT_FD, inheritable=True)
            os.set_inheritable(a.img_fd, True)
            argv = ["criu"] + [x.replace("IMG", f"/proc/self/fd/{a.img_fd}") for x in args]
            # No PATH: in the pod's mount namespace every directory on it
            # is the pod's (/sbin is a link pod root may change), and criu,
            # host root, would run what pod root put there (it execs
            # iptables-restore for its network lock, tar for a tmpfs).
            # What criu must not run from the pod it cannot find.
            os.execve(a.criu_fd, argv, {"PATH": "/nonexistent/peapod-criu-runs-nothing"})   # 5.
        except BaseException as e:        # noqa: BLE001 - never return into the parent's code
            print(f"pods.criu: {e}", file=sys.stderr)
        os._exit(121)
    _, st = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(st)


if __name__ == "__main__":
    sys.exit(main())
