"""The pod's file tree: the staging directory, its host mounts, /proc, /dev, pivot.

Two places build it:

- the daemon (host root, its own mount namespace): creates the mount-point
  directories in the staging tree and bind-mounts the policy's host
  directories onto them (read-only unless rw = true), then mounts the pod
  root (PeaFS, stacked on the staging dir) at its mount point. PeaFS crosses
  those bind mounts like any directory.
- the pod's pid 1, inside the new namespaces: mounts /proc and a minimal
  /dev onto the pod root, pivots into it and detaches the old root.

Every directory inside the staging tree or the pod root is reached by a walk
of O_PATH | O_NOFOLLOW | O_DIRECTORY opens, one component at a time, and
mounts target the resulting fd (/proc/self/fd/N). A symlink planted in the
staging tree (``usr -> /etc``) therefore makes the walk fail with ELOOP or
ENOTDIR instead of steering a mount onto a host path.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from kernel import mountinfo
from pods import namespaces as ns

_WALK = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC

# Host device nodes a pod gets (bind-mounted: mknod is impossible, and must
# stay impossible, inside a user namespace).
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def walk_dir(base_fd: int, relpath: str, create: bool = False, mode: int = 0o755) -> int:
    """An O_PATH fd of directory ``relpath`` below ``base_fd``, never leaving
    it through a symlink or "..". ``create`` makes missing components."""
    fd = os.dup(base_fd)
    try:
        for part in Path(relpath).parts:
            if part in ("/", "."):
                continue
            if part == "..":
                raise OSError(errno.EPERM, f"'..' in mount path {relpath!r}")
            try:
                nfd = os.open(part, _WALK, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, mode, dir_fd=fd)
                nfd = os.open(part, _WALK, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


# The pod's /dev/shm, a directory of the staging tree (served by PeaFS).
SHM_DIR = "run/shm"


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def prepare_staging(root: Path, mounts) -> None:
    """Create the directories the pod needs in the staging tree (/proc, /dev
    and every [[pod.mount]] path). Run by host root on the host."""
    root_fd = os.open(root, _WALK)
    try:
        for rel in ["proc", "dev", *(m.path for m in mounts)]:
            os.close(walk_dir(root_fd, rel.lstrip("/"), create=True))
        # /dev/shm is a symlink to this PeaFS directory (mount_proc_and_dev);
        # made like the tmpfs it replaces: everyone's, sticky.
        parent, name = os.path.split(SHM_DIR)
        pfd = walk_dir(root_fd, parent, create=True)
        try:
            os.mkdir(name, 0o1777, dir_fd=pfd)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=pfd)
            try:
                os.fchmod(fd, 0o1777)   # whatever the umask
            finally:
                os.close(fd)
        except FileExistsError:
            pass   # the root's own: its mode and owner are the pod's business
        finally:
            os.close(pfd)
    finally:
        os.close(root_fd)


def place_host_mounts(root: Path, mounts) -> None:
    """Bind each [[pod.mount]] host directory onto its place in the staging
    tree; read-only unless rw. Run in the daemon's own mount namespace, so
    the host never sees these mounts."""
    root_fd = os.open(root, _WALK)
    try:
        for m in mounts:
            rel = m.path.lstrip("/")
            target = walk_dir(root_fd, rel, create=True)
            try:
                # Recursive, as bubblewrap binds: a non-recursive bind would
                # uncover what the host's mounts below the directory hide
                # (the files under a mount point), and leave out what they show.
                ns.mount(str(m.host), fd_path(target), None, ns.MS_BIND | ns.MS_REC)
            finally:
                os.close(target)
            # The fd above names the directory under the new mount; the
            # attributes go on the mount itself, so walk again.
            target = walk_dir(root_fd, rel)
            try:
                # A bind inherits the source's flags. Read-only (unless rw),
                # nosuid and nodev on the new mount and on every submount
                # with it: a remount would change the top mount only, and
                # leave a writable host file system under a read-only /usr.
                flags = ns.MOUNT_ATTR_NOSUID | ns.MOUNT_ATTR_NODEV
                ns.mount_setattr_tree(target, flags | (0 if m.rw else ns.MOUNT_ATTR_RDONLY))
            finally:
                os.close(target)
    finally:
        os.close(root_fd)


def _related(point: str, needed: list[str]) -> bool:
    """Whether mount point ``point`` leads to a needed path (is it or one
    of its ancestors) or lies under one."""
    for n in needed:
        if point == n or n.startswith(point.rstrip("/") + "/") or point.startswith(n + "/"):
            return True
    return False


def detach_unneeded(needed: list[str]) -> int:
    """Lazily detach, in the calling process's (private) mount namespace,
    every mount that is not on the way to, or under, a ``needed`` path.

    The pod daemon's namespace starts as a copy of the host's; each mount
    in it pins its file system for as long as the pod runs, so a host
    umount of another program's FUSE mount, a USB disk or another pod's
    directory would leave it alive (busy) until the pod stops. Returns how
    many mounts were detached."""
    needed = [os.path.normpath(n) for n in needed if n and n != "/"]
    count = 0
    for point in sorted({m.point for m in mountinfo.mounts()}, key=lambda p: -p.count("/")):
        if point == "/" or _related(point, needed):
            continue
        try:
            ns.umount2(point, ns.MNT_DETACH | ns.UMOUNT_NOFOLLOW)
            count += 1
        except OSError:
            pass   # gone with a parent already, or not a mount any more
    return count


def mount_proc_and_dev(root_fd: int, pts_gid: int | None) -> None:
    """Mount the pod's /proc and a minimal /dev under the pod root.

    Run by the pod's pid 1 (procfs shows the pid namespace of the process
    that mounts it) while the host's /proc is still visible: the kernel lets
    a user namespace mount procfs only where a full procfs is already
    visible in its mount namespace.
    """
    proc = walk_dir(root_fd, "proc")
    try:
        # Read-only: a pod process may read /proc but write nothing there.
        # Writable, /proc/PID/{mem,oom_score_adj,timerslack_ns,autogroup,
        # clear_refs} of a same-uid process of another pea are open to it
        # (write code into it, have it OOM-killed), and /proc/sys to pod
        # root. The mount's flag is checked before the file's own open
        # (EROFS); pod processes cannot remount (mount calls are refused
        # by the seccomp filter).
        ns.mount("proc", fd_path(proc), "proc",
                 ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC | ns.MS_RDONLY)
    finally:
        os.close(proc)
    dev = walk_dir(root_fd, "dev")
    try:
        # A fresh tmpfs hides whatever the staging dir holds under /dev.
        ns.mount("tmpfs", fd_path(dev), "tmpfs", ns.MS_NOSUID | ns.MS_NOEXEC,
                 "mode=755,size=64k")
    finally:
        os.close(dev)
    # From here on the tmpfs is ours alone (no pod process exists yet).
    dev = walk_dir(root_fd, "dev")
    try:
        for name in DEVICES:
            fd = os.open(name, os.O_CREAT | os.O_WRONLY | os.O_EXCL | os.O_NOFOLLOW, 0o666,
                         dir_fd=dev)
            os.close(fd)
            node = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=dev)
            try:
                ns.mount(f"/dev/{name}", fd_path(node), None, ns.MS_BIND)
            finally:
                os.close(node)
        os.mkdir("pts", 0o755, dir_fd=dev)
        pts = walk_dir(dev, "pts")
        try:
            # newinstance: the pod's own pty numbering, invisible to the host's.
            opts = "newinstance,ptmxmode=0666,mode=620"
            if pts_gid is not None:
                opts += f",gid={pts_gid}"
            ns.mount("devpts", fd_path(pts), "devpts", ns.MS_NOSUID | ns.MS_NOEXEC, opts)
        finally:
            os.close(pts)
        # /dev/shm (shm_open, sem_open, POSIX shared memory) is a PeaFS
        # directory, not a tmpfs shared by every pea: its files follow the
        # file rules of the path /run/shm/NAME like any other file (a pea
        # reads or maps another pea's segment only if its rules say so), and
        # a program copied there is executed only through PeaFS (x check,
        # transitions).
        for link, target in (("shm", "/" + SHM_DIR), ("ptmx", "pts/ptmx"),
                             ("fd", "/proc/self/fd"),
                             ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                             ("stderr", "/proc/self/fd/2")):
            os.symlink(target, link, dir_fd=dev)
        # Read-only from now on (a bind remount: only this mount's flag;
        # /dev/pts and the device binds are mounts of their own
        # and keep theirs). A pod shares /dev between its peas: a writable
        # one lets pod root replace /dev/stdout, /dev/ptmx or /dev/null with
        # a symlink of its choice and catch what another pea writes there.
        # Pod processes cannot remount it (mount calls are refused by the
        # seccomp filter).
        ns.mount(None, fd_path(dev), None, ns.MS_REMOUNT | ns.MS_BIND | ns.MS_RDONLY
                 | ns.MS_NOSUID | ns.MS_NOEXEC)
    finally:
        os.close(dev)


def pivot_into(root_fd: int) -> None:
    """Make the pod root "/" and drop every other mount of the old root.

    pivot_root(".", ".") stacks the old root on top of the new one; the lazy
    detach then removes it and everything below it, so no path (no "..",
    no /proc/1/root, no chroot trick) leads back to a host mount.
    """
    os.fchdir(root_fd)
    ns.pivot_root(".", ".")
    ns.umount2(".", ns.MNT_DETACH)
    os.chdir("/")
