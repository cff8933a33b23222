"""The supervisor's view of a pod's processes: pod-virtual pids to pinned
host processes, and which pea each one is in.

A mediated call names its target by a pid of the *caller's* pid namespace.
The supervisor (on the host) finds the host process whose pid at the
caller's namespace level is that number, and pins it with a pidfd before
deciding anything: a pidfd keeps naming the same process whatever happens to
pid numbers, so "the process we checked" and "the process we act on" cannot
differ. Facts about the pinned process come from the pidfd itself
(PIDFD_GET_INFO: cgroup id and credentials; its fdinfo: pids in every
namespace; PIDFD_GET_PID_NAMESPACE: its pid namespace), never from a
/proc/PID path that a reused pid could redirect.

The map from virtual to host pids is a cache; on a miss the kernel
translates the number (NS_GET_PID_FROM_PIDNS on the caller's pid namespace,
Linux 6.11), and a scan of the pod's cgroups is the fallback. Every answer
is re-verified on the pidfd, so a stale entry or a translation raced by an
exit can cost a rescan, never a wrong answer.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass

from kernel import procfs
from kernel import cgroup
from pods import notify

NS_GET_PARENT = (0xB7 << 8) | 2          # _IO(0xb7, 2)
NS_GET_PID_FROM_PIDNS = (2 << 30) | (4 << 16) | (0xB7 << 8) | 6  # _IOR(0xb7, 6, int), Linux 6.11
PIDFD_GET_PID_NAMESPACE = (0xFF << 8) | 5  # _IO(PIDFS_IOCTL_MAGIC, 5), Linux 6.11

CAP_KILL = 5
SIGCONT = 18
CAP_SYS_PTRACE = 19


class Caller:
    """The thread that made a mediated call (alive while the call waits:
    the supervisor re-checks NOTIF_ID_VALID before acting on these facts).

    Pinned by a thread pidfd; its pids, pid namespace and pea come from the
    pidfd. What only some decisions need (capabilities, process group) is
    read from /proc on first use."""

    __slots__ = ("tid", "pidfd", "info", "nspid", "ns_ino", "pea", "_status")

    def __init__(self, tid, pidfd, info, nspid, ns_ino, pea):
        self.tid, self.pidfd, self.info = tid, pidfd, info
        self.nspid, self.ns_ino, self.pea = nspid, ns_ino, pea
        self._status = None

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    @property
    def tgid(self) -> int:
        return self.info.tgid

    @property
    def depth(self) -> int:
        return len(self.nspid)

    @property
    def vtid(self) -> int:
        return self.nspid[-1]

    @property
    def status(self) -> dict:
        if self._status is None:
            st = procfs.status(self.tid)
            if st is None:
                raise no_such_process()
            self._status = st
        return self._status

    @property
    def vtgid(self) -> int:
        if self.info.tgid == self.tid:
            return self.nspid[-1]
        return procfs.ints(self.status["NStgid"])[-1]

    @property
    def vpgid(self) -> int:
        return procfs.ints(self.status["NSpgid"])[-1]

    @property
    def uids(self) -> list[int]:
        return [self.info.ruid, self.info.euid, self.info.suid]

    @property
    def gids(self) -> list[int]:
        return [self.info.rgid, self.info.egid, self.info.sgid]

    @property
    def threads(self) -> int:
        return int(self.status.get("Threads", "1"))

    def has_cap(self, cap: int) -> bool:
        return bool(int(self.status["CapEff"], 16) >> cap & 1)


@dataclass(slots=True)
class Target:
    """A pinned process (or thread) of the pod. Close it after use."""
    pidfd: int
    host: int
    info: notify.PidfdInfo
    pea: str | None

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def alive(self) -> bool:
        """The pinned process still holds its pid (not reaped): until then
        its pid number cannot be handed to another process."""
        try:
            notify.pidfd_info(self.pidfd)
            return True
        except OSError:
            return False


def fdinfo_nspid(fd: int) -> list[int] | None:
    """NSpid of the process a pidfd pins (host first), None if reaped."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            data = f.read()
    except OSError:
        return None
    for line in data.split(b"\n"):
        if line.startswith(b"NSpid:"):
            v = procfs.ints(line[6:].decode())
            return v if v and v[0] > 0 else None
    return None


def _ns_ino_up(pidfd: int, up: int) -> int | None:
    """The inode of the pid namespace ``up`` levels above the pinned
    process's own."""
    try:
        nsfd = fcntl.ioctl(pidfd, PIDFD_GET_PID_NAMESPACE)
    except OSError:
        return None
    try:
        for _ in range(up):
            parent = fcntl.ioctl(nsfd, NS_GET_PARENT)
            os.close(nsfd)
            nsfd = parent
        return os.fstat(nsfd).st_ino
    except OSError:
        return None
    finally:
        os.close(nsfd)


NO_SUCH_TASK = object()   # PodProcs._translated: the kernel says there is none


def _translate(caller: Caller, vpid: int) -> int | None:
    """The host pid of the task the caller's pid namespace numbers ``vpid``:
    0 if there is none, None if the kernel cannot say (before Linux 6.11).
    Unverified: a number to pin and check, like a cache entry."""
    if vpid <= 0:
        return 0
    try:
        nsfd = fcntl.ioctl(caller.pidfd, PIDFD_GET_PID_NAMESPACE)
    except OSError:
        return None
    try:
        return fcntl.ioctl(nsfd, NS_GET_PID_FROM_PIDNS, vpid)
    except OSError as e:
        return 0 if e.errno == errno.ESRCH else None
    finally:
        os.close(nsfd)


def _pidfs_inodes_are_unique() -> bool:
    """pidfs (Linux 6.9) gives every struct pid its own inode number, never
    reused while the system runs: then the inode identifies a process for
    good, and facts verified once about it can be cached."""
    try:
        a = notify.pidfd_open(os.getpid())
        b = notify.pidfd_open(os.getppid() or 1)
    except OSError:
        return False
    try:
        return os.fstat(a).st_ino != os.fstat(b).st_ino
    finally:
        os.close(a)
        os.close(b)


class PodProcs:
    def __init__(self, pod: str):
        self.pod = pod
        self._pea_by_cgid: dict[int, str] = {}
        self._vmap: dict[tuple[int, int], int] = {}   # (ns inode, vpid) -> host pid
        # pidfs inode -> (NSpid, pid namespace inode): both fixed for a
        # process's life
        self._known: dict[int, tuple[list[int], int]] = {}
        self._cache_ok = _pidfs_inodes_are_unique()
        self.init_tgid: int | None = None   # host pid of the pod's pid 1 (the daemon sets it)

    def _identity(self, fd: int) -> tuple[list[int], int] | None:
        """(NSpid, pid namespace inode) of the process a pidfd pins."""
        ino = os.fstat(fd).st_ino if self._cache_ok else None
        if ino is not None:
            hit = self._known.get(ino)
            if hit is not None:
                return hit
        nspid = fdinfo_nspid(fd)
        if nspid is None:
            return None
        ns = _ns_ino_up(fd, 0)
        if ns is None:
            return None
        if ino is not None:
            if len(self._known) > 65536:
                self._known.clear()
            self._known[ino] = (nspid, ns)
        return nspid, ns

    def caller(self, tid: int) -> Caller | None:
        """The calling thread ``tid`` (host), pinned by a thread pidfd."""
        try:
            fd = notify.pidfd_open(tid, notify.PIDFD_THREAD)
        except OSError:
            return None
        try:
            ident = self._identity(fd)
            if ident is None:
                raise no_such_process()
            info = notify.pidfd_info(fd)
        except OSError:
            os.close(fd)
            return None
        return Caller(tid, fd, info, ident[0], ident[1], self.pea_of_cgroupid(info.cgroupid))

    # ---------------------------------------------------------- peas
    def target_pea(self, info: notify.PidfdInfo) -> str | None:
        """The pea of a target process; None (no pea: out of every caller's
        reach) for the pod's pid 1, which acts only for the daemon. It sits
        in the default pea's cgroup, but a signal to it from that pea would
        make it stop the whole pod (it forwards TERM to every process), and
        prlimit or setpriority on it would act on the pod's reaper."""
        if self.init_tgid is not None and info.tgid == self.init_tgid:
            return None
        return self.pea_of_cgroupid(info.cgroupid)

    def pea_of_cgroupid(self, cgid: int) -> str | None:
        pea = self._pea_by_cgid.get(cgid)
        if pea is None:
            self._pea_by_cgid = cgroup.pea_ids(self.pod)
            pea = self._pea_by_cgid.get(cgid)
        return pea

    # ---------------------------------------------------------- targets
    def pin(self, host: int, caller: Caller, vpid: int, thread: bool = False) -> Target | None:
        """Pin host pid/tid ``host`` if it is the process the caller calls
        ``vpid`` (same number at the caller's level, in the caller's pid
        namespace or one below it)."""
        try:
            fd = notify.pidfd_open(host, notify.PIDFD_THREAD if thread else 0)
        except OSError:
            return None
        ok = False
        try:
            ident = self._identity(fd)
            if ident is None:
                return None
            nspid, ns = ident
            d = caller.depth
            if len(nspid) < d or nspid[d - 1] != vpid:
                return None
            if len(nspid) == d:
                if ns != caller.ns_ino:
                    return None
            elif _ns_ino_up(fd, len(nspid) - d) != caller.ns_ino:
                return None
            info = notify.pidfd_info(fd)
            ok = True
            return Target(fd, host, info, self.target_pea(info))
        except OSError:
            return None
        finally:
            if not ok:
                os.close(fd)

    def _pin_exiting(self, host: int, caller: Caller, vnum: int, thread: bool) -> Target | None:
        """Pin the task the kernel's translation named ``host`` for the
        caller's ``vnum`` when ``pin`` cannot check its pid namespace (an
        exiting task or a zombie: it still bears its numbers, its cgroup and
        its credentials until it is reaped; natively it may be signalled,
        kill returns 0 and nothing is delivered).

        The proof is the order of three steps: a pidfd is opened on host pid
        ``host``; the kernel translates ``vnum`` in the caller's pid
        namespace to ``host`` again; the pidfd's task is then found not
        reaped (PIDFD_GET_INFO fails once it is). A task that is not reaped
        keeps its number, so at that translation ``host`` was the pidfd's
        task, and the caller's ``vnum`` named it. A task reaped and its
        number handed out again before the pidfd was opened fails the last
        step or is the task the caller names now, as it would be natively.
        """
        try:
            fd = notify.pidfd_open(host, notify.PIDFD_THREAD if thread else 0)
        except OSError:
            return None
        try:
            if _translate(caller, vnum) != host:
                raise ProcessLookupError
            info = notify.pidfd_info(fd)
        except OSError:
            os.close(fd)
            return None
        return Target(fd, host, info, self.target_pea(info))

    def _translated(self, caller: Caller, vnum: int, thread: bool = False):
        """The kernel's answer for the caller's pid (or, with ``thread``, tid)
        ``vnum``: the task pinned and verified as a cache entry is (an
        exiting one by ``_pin_exiting``), NO_SUCH_TASK (none, or reaped
        meanwhile), or None when the scan must decide (an older kernel, a
        task outside the pea cgroups).

        Apache signals every CGI as it exits or after it was reaped (APR's
        cleanup: SIGTERM, then kill 0): two misses per request, each a scan
        of every pod process's /proc status before this."""
        host = _translate(caller, vnum)
        if host == 0:
            return NO_SUCH_TASK
        if host is None:
            return None
        t = self.pin(host, caller, vnum, thread=thread)
        if t is None:
            # The kernel named the one task that bears this number for the
            # caller, and ``pin`` cannot verify it: it is exiting or a zombie
            # (Apache kills each CGI while it exits, and an exiting task has
            # dropped its namespaces, so its pidfd names no pid namespace),
            # or it is gone. A scan could only find that task again, and
            # would fail the same way, after a read of every pod process's
            # status.
            t = self._pin_exiting(host, caller, vnum, thread)
            if t is None:
                return NO_SUCH_TASK
        if self.pea_of_cgroupid(t.info.cgroupid) is None:
            t.close()     # not in a pea's cgroup: the scan decides, as before
            return None
        return t

    def resolve(self, caller: Caller, vpid: int) -> Target | None:
        """The pod process the caller names ``vpid``, pinned; None if none."""
        key = (caller.ns_ino, vpid)
        host = self._vmap.get(key)
        if host is not None:
            t = self.pin(host, caller, vpid)
            if t is not None:
                return t
            self._vmap.pop(key, None)
        t = self._translated(caller, vpid)
        if t is NO_SUCH_TASK:
            return None
        if t is not None:
            self._vmap[key] = t.host
            return t
        for host, nspid in self._scan():
            d = caller.depth
            if len(nspid) >= d and nspid[d - 1] == vpid:
                t = self.pin(host, caller, vpid)
                if t is not None:
                    self._vmap[key] = host
                    return t
        return None

    def resolve_thread(self, caller: Caller, vtid: int, vtgid: int | None) -> Target | None:
        """A thread by its tid at the caller's level (optionally of thread
        group ``vtgid``), pinned with a thread pidfd."""
        d = caller.depth
        if vtgid is not None:
            proc = self.resolve(caller, vtgid)
            if proc is None:
                return None
            hosts = [proc.host]
            proc.close()
        else:
            t = self._translated(caller, vtid, thread=True)
            if t is NO_SUCH_TASK:
                return None
            if t is not None:
                return t
            hosts = [h for h, _ in self._scan()]
        for h in hosts:
            try:
                tids = os.listdir(f"/proc/{h}/task")
            except OSError:
                continue
            for t in tids:
                st = procfs.status(int(t))
                if st is None or "NSpid" not in st:
                    continue
                nspid = procfs.ints(st["NSpid"])
                if len(nspid) >= d and nspid[d - 1] == vtid:
                    return self.pin(int(t), caller, vtid, thread=True)
        return None

    def _scan(self):
        """(host pid, NSpid) of every process in the pod's cgroups."""
        for host in cgroup.pids_in(self.pod):
            st = procfs.status(host)
            if st is not None and "NSpid" in st:
                yield host, procfs.ints(st["NSpid"])

    def members(self, caller: Caller, pred) -> list[tuple[int, int, dict]]:
        """(host pid, vpid, status) of the pod's processes in the caller's pid
        namespace or below whose status satisfies ``pred``. Unpinned: the
        caller pins each before acting."""
        out = []
        d = caller.depth
        for host in cgroup.pids_in(self.pod):
            st = procfs.status(host)
            if st is None or "NSpid" not in st:
                continue
            nspid = procfs.ints(st["NSpid"])
            if len(nspid) < d:
                continue
            if pred(st, nspid):
                out.append((host, nspid[d - 1], st))
        return out


def may_signal(caller: Caller, target: Target, sig: int = 0) -> bool:
    """The kernel's check_kill_permission, for signals the supervisor sends
    on a caller's behalf: its own thread group; the sender's real or
    effective uid is the target's real or saved uid; the sender has CAP_KILL
    (in the pod's user namespace, which is every pod process's: nested user
    namespaces are refused); or SIGCONT within the sender's session."""
    i = target.info
    if i.tgid == caller.tgid:
        return True
    ruid, euid = caller.uids[0], caller.uids[1]
    if euid in (i.suid, i.ruid) or ruid in (i.suid, i.ruid):
        return True
    if caller.has_cap(CAP_KILL):
        return True
    if sig == SIGCONT:
        st = procfs.status(target.host)
        # read after pinning, checked alive after reading: the status was
        # the pinned process's
        if st is not None and "NSsid" in st and target.alive():
            return procfs.ints(st["NSsid"])[0] == procfs.ints(caller.status["NSsid"])[0]
    return False


def may_ptrace(caller: Caller, target: Target) -> bool:
    """PTRACE_MODE_ATTACH_REALCREDS as the kernel decides it for one user
    namespace: every uid and gid of the target equals the caller's real ones,
    or the caller has CAP_SYS_PTRACE."""
    i = target.info
    ruid, rgid = caller.uids[0], caller.gids[0]
    if {i.ruid, i.euid, i.suid} == {ruid} and {i.rgid, i.egid, i.sgid} == {rgid}:
        return True
    return caller.has_cap(CAP_SYS_PTRACE)


def no_such_process() -> OSError:
    return OSError(errno.ESRCH, "no such process")
