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

The map from virtual to host pids is a cache refreshed by a scan of the
pod's cgroups on a miss; every hit is re-verified on the pidfd, so a stale
entry can cost a rescan, never a wrong answer.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass

from peafs import cgroup
from pods import notify

NS_GET_PARENT = (0xB7 << 8) | 2          # _IO(0xb7, 2)
PIDFD_GET_PID_NAMESPACE = (0xFF << 8) | 5  # _IO(PIDFS_IOCTL_MAGIC, 5), Linux 6.11

CAP_KILL = 5
CAP_NET_BIND_SERVICE = 10
CAP_SYS_PTRACE = 19


def read_status(tid: int) -> dict[str, str] | None:
    try:
        fd = os.open(f"/proc/{tid}/status", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 8192).decode("ascii", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    out = {}
    for line in data.splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split()]


@dataclass(slots=True)
class Caller:
    """The thread that made a mediated call (alive while the call waits)."""
    tid: int          # host
    tgid: int         # host
    nspid: list[int]  # tid in each pid namespace, host first
    nstgid: list[int]
    nspgid: list[int]
    ns_ino: int       # its pid namespace
    uids: list[int]   # real, effective, saved, fs (host ids)
    gids: list[int]
    capeff: int
    threads: int
    pea: str | None

    @property
    def depth(self) -> int:
        return len(self.nspid)

    @property
    def vtgid(self) -> int:
        return self.nstgid[-1]

    @property
    def vpgid(self) -> int:
        return self.nspgid[-1]

    def has_cap(self, cap: int) -> bool:
        return bool(self.capeff >> cap & 1)


def caller_of(tid: int, pod: str) -> Caller | None:
    st = read_status(tid)
    if st is None or "NSpid" not in st:
        return None
    try:
        ns_ino = os.stat(f"/proc/{tid}/ns/pid").st_ino
    except OSError:
        return None
    return Caller(
        tid=tid, tgid=int(st["Tgid"]), nspid=_ints(st["NSpid"]), nstgid=_ints(st["NStgid"]),
        nspgid=_ints(st["NSpgid"]), ns_ino=ns_ino, uids=_ints(st["Uid"]), gids=_ints(st["Gid"]),
        capeff=int(st["CapEff"], 16), threads=int(st.get("Threads", "1")),
        pea=cgroup.pea_of(tid, pod),
    )


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
            v = _ints(line[6:].decode())
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


class PodProcs:
    def __init__(self, pod: str):
        self.pod = pod
        self._pea_by_cgid: dict[int, str] = {}
        self._vmap: dict[tuple[int, int], int] = {}   # (ns inode, vpid) -> host pid

    # ---------------------------------------------------------- peas
    def pea_of_cgroupid(self, cgid: int) -> str | None:
        pea = self._pea_by_cgid.get(cgid)
        if pea is None:
            self._scan_peas()
            pea = self._pea_by_cgid.get(cgid)
        return pea

    def _scan_peas(self) -> None:
        # cgroup2 ids are the inode numbers of the cgroup directories; a
        # process in a sub-cgroup of a pea belongs to that pea.
        m: dict[int, str] = {}
        try:
            top = cgroup.pod_cgroup(self.pod)
            peas = [e for e in os.scandir(top) if e.is_dir(follow_symlinks=False)]
        except OSError:
            peas = []
        for e in peas:
            for dirpath, _, _ in os.walk(e.path):
                try:
                    m[os.stat(dirpath).st_ino] = e.name
                except OSError:
                    pass
        self._pea_by_cgid = m

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
            nspid = fdinfo_nspid(fd)
            d = caller.depth
            if nspid is None or len(nspid) < d or nspid[d - 1] != vpid:
                return None
            if _ns_ino_up(fd, len(nspid) - d) != caller.ns_ino:
                return None
            info = notify.pidfd_info(fd)
            ok = True
            return Target(fd, host, info, self.pea_of_cgroupid(info.cgroupid))
        except OSError:
            return None
        finally:
            if not ok:
                os.close(fd)

    def resolve(self, caller: Caller, vpid: int) -> Target | None:
        """The pod process the caller names ``vpid``, pinned; None if none."""
        key = (caller.ns_ino, vpid)
        host = self._vmap.get(key)
        if host is not None:
            t = self.pin(host, caller, vpid)
            if t is not None:
                return t
            self._vmap.pop(key, None)
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
            hosts = [h for h, _ in self._scan()]
        for h in hosts:
            try:
                tids = os.listdir(f"/proc/{h}/task")
            except OSError:
                continue
            for t in tids:
                st = read_status(int(t))
                if st is None or "NSpid" not in st:
                    continue
                nspid = _ints(st["NSpid"])
                if len(nspid) >= d and nspid[d - 1] == vtid:
                    return self.pin(int(t), caller, vtid, thread=True)
        return None

    def _scan(self):
        """(host pid, NSpid) of every process in the pod's cgroups."""
        for host in cgroup.pids_in(self.pod):
            st = read_status(host)
            if st is not None and "NSpid" in st:
                yield host, _ints(st["NSpid"])

    def members(self, caller: Caller, pred) -> list[tuple[int, int, dict]]:
        """(host pid, vpid, status) of the pod's processes in the caller's pid
        namespace or below whose status satisfies ``pred``. Unpinned: the
        caller pins each before acting."""
        out = []
        d = caller.depth
        for host in cgroup.pids_in(self.pod):
            st = read_status(host)
            if st is None or "NSpid" not in st:
                continue
            nspid = _ints(st["NSpid"])
            if len(nspid) < d:
                continue
            if pred(st, nspid):
                out.append((host, nspid[d - 1], st))
        return out


def may_signal(caller: Caller, target: Target) -> bool:
    """The kernel's kill_ok_by_cred, for signals the supervisor sends on a
    caller's behalf: the sender's real or effective uid is the target's real
    or saved uid, or the sender has CAP_KILL (in the pod's user namespace,
    which is every pod process's: nested user namespaces are refused)."""
    i = target.info
    ruid, euid = caller.uids[0], caller.uids[1]
    if euid in (i.suid, i.ruid) or ruid in (i.suid, i.ruid):
        return True
    return caller.has_cap(CAP_KILL)


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
