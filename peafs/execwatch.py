"""Exec transitions that take effect when the exec commits, never before.

The threat: a process of pea A executes a program P that A's exec table sends
to pea T. PeaFS sees the kernel open P for exec (FUSE open with the kernel's
__FMODE_EXEC), but since Linux 6.8 the kernel opens P *before* it copies argv
and envp, and the exec can still fail afterwards (a bad argv or envp pointer,
E2BIG, a refused or missing #! or ELF interpreter, ENOEXEC). Moving the
process at the open would hand the caller's own code, and its sibling
threads, T's rights. So the open only records a *pending* transition; the
process stays in A until the kernel reports that the exec committed.

Kernel facts this module relies on (../shared/DESIGN.md s.6):

- The proc connector (netlink, NETLINK_CONNECTOR / CN_IDX_PROC) queues
  PROC_EVENT_EXEC for process X in exec_binprm() after the point of no
  return and before the new program runs its first instruction. Any request
  the new program makes therefore reaches us after the event is in our
  socket: ``settle()`` drains the socket before every decision that a
  pending transition could change, so a request of the new program is
  judged under T, one of the old program (or its threads) under A.
- Execs of one process are not serialised before the program is opened
  (alloc_bprm opens it before cred_guard_mutex), and the event names only
  the thread group. A transition is therefore granted only to a process with
  one thread (like the kernel, which gives no privilege to an exec it cannot
  attribute safely, e.g. a traced one): while that thread is in execve, no
  other thread can appear, so the event is that exec's.
- The kernel opens, for one execve, the program (from alloc_bprm) and then
  its interpreters (open_exec from load_script / load_misc_binary, and the
  ELF interpreter from load_elf_binary). A FUSE request does not say which;
  the calling thread's kernel stack (/proc/TID/stack, blocked in our request
  while we read it) does. An open from alloc_bprm starts a new exec attempt:
  it voids whatever an earlier, failed attempt of the process left pending.
  An interpreter open belongs to the pending attempt and is judged under T.
- After the commit, /proc/X/exe is the file the kernel loaded (a script's
  interpreter, an ELF itself, never the ELF interpreter). The commit is
  taken only if that file is the one the pending attempt opened last, on
  this mount: an exec that did not go through us (a program outside the
  mount) never completes another attempt's transition.
- Moving X into T's cgroup races with X's own forks (the new program may
  fork before we move it). cgroup migration and fork exclude each other
  (cgroup_threadgroup_rwsem), and the fork event is queued before the fork
  releases it; so after a move, one more drain sees every child that was
  left in A, and those are moved too (``_follow``).

The transitioned program starts like a set-id one as far as its environment
goes: the kernel hands ld.so the caller's variables, and AT_SECURE (which
makes glibc ignore them) needs a credential change that no_new_privs rules
out. So a committed transition whose environment holds a variable glibc
drops for set-id programs is killed before it runs in T (audit line names
the variable).
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import socket
import struct
import sys
import threading
import traceback
from dataclasses import dataclass, field

from kernel import cgroup, procfs
from kernel.pidfd import process_exited

from . import syscalls

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
NLMSG_DONE = 3
_NLMSG = struct.Struct("=IHHII")        # len, type, flags, seq, pid
_CNMSG = struct.Struct("=IIIIHH")       # idx, val, seq, ack, len, flags
_EVENT = struct.Struct("=IIQ")          # what, cpu, timestamp_ns
_HEAD = _NLMSG.size + _CNMSG.size       # 36: where the proc_event starts
_IDS = struct.Struct("=iiii")           # fork: parent pid/tgid, child pid/tgid
RCVBUF = 8 << 20                        # room for bursts of host-wide events
FOLLOW_ROUNDS = 64                      # drains after a move before we give up

# What glibc's ld.so drops from the environment when AT_SECURE is set
# (elf/dl-support / unsecvars.h) plus every LD_* name: each changes what
# code the program loads or where it writes.
UNSECURE_ENV = frozenset(b"""GCONV_PATH GETCONF_DIR GLIBC_TUNABLES HOSTALIASES
LOCALDOMAIN LOCPATH MALLOC_TRACE NIS_PATH NLSPATH RESOLV_HOST_CONF RES_OPTIONS
TMPDIR TZDIR""".split())


class ExecWatchError(RuntimeError):
    """The kernel lacks what commit-time transitions need."""


def exec_stage(tid: int) -> str | None:
    """Which open of an execve the blocked thread ``tid`` is in.

    "main": the program named by execve (alloc_bprm) - a new attempt;
    "interp": a #! or binfmt_misc interpreter (it becomes /proc/PID/exe);
    "elf_interp": an ELF's PT_INTERP (the loader; exe stays the ELF);
    None: unknown (the stack is unreadable or has none of these).
    """
    try:
        with open(f"/proc/{tid}/stack", "rb") as f:
            stack = f.read()
    except OSError:
        return None
    if b" alloc_bprm+" in stack:
        return "main"
    if b" load_elf_binary+" in stack or b" load_elf_fdpic_binary+" in stack:
        return "elf_interp"
    if b" open_exec+" in stack:
        return "interp"
    return None


def check_kernel() -> None:
    """Fail with a message naming what is missing, before serving."""
    try:
        with open("/proc/self/stack", "rb") as f:
            f.read()
    except OSError as e:
        raise ExecWatchError(
            f"exec transitions need /proc/PID/stack (CONFIG_STACKTRACE): {e.strerror}") from e


def unsecure_names(pid: int) -> list[str] | None:
    """Names in ``pid``'s environment that glibc ignores for set-id programs
    (None if the environment cannot be read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    out = []
    for item in env.split(b"\0"):
        name = item.partition(b"=")[0]
        if name.startswith(b"LD_") or name in UNSECURE_ENV:
            out.append(name.decode("ascii", "replace"))
    return out


@dataclass
class Pending:
    """A transition recorded at an exec open, waiting for the commit."""
    tgid: int
    pidfd: int
    source: str               # the pea the process is in (and stays in on failure)
    target: str               # the pea it moves to if the exec commits
    expected: int             # node id the committed exe must have
    path: str                 # for the audit log
    uid: int | None = None

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


@dataclass
class _Moved:
    source: str
    target: str
    kin: set = field(default_factory=set)


def _locked(fn):
    @functools.wraps(fn)
    def wrapper(self, *args, **kw):
        with self.lock:
            return fn(self, *args, **kw)
    return wrapper


class ExecWatch:
    """Pending transitions of one pod and the proc connector that commits them.

    The FUSE handlers call ``settle()`` (through the Enforcer) before they
    ask which pea a caller is in, the pods' supervisor does the same from
    its own thread, and ``run()`` drains the socket whenever it is readable
    so that it never overflows. One lock serialises them (re-entrant:
    ``add`` settles first).
    """

    def __init__(self, pod: str, audit, fuse_dev_of):
        self.pod = pod
        self.audit = audit
        self._fuse_dev_of = fuse_dev_of      # () -> st_dev of our mount
        self._fuse_dev: int | None = None
        self.pending: dict[int, Pending] = {}
        # (tgid) -> why it may not change pea now, or None: the pod's
        # supervisor knows signals armed towards a process (F_SETOWN,
        # PR_SET_PDEATHSIG), which would cross the transition.
        self.guard = None
        self._moved: dict[int, _Moved] = {}
        # Called after every cgroup write that moves a process: the
        # enforcer's per-thread pea cache (peacache.py) forgets its answers.
        self.on_move = lambda: None
        self.sock = self._open_socket()
        self.lock = threading.RLock()

    # -- the proc connector ------------------------------------------------

    @staticmethod
    def _open_socket() -> socket.socket:
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as e:
            raise ExecWatchError(
                f"exec transitions need the proc connector (CONFIG_PROC_EVENTS): {e.strerror}") from e
        try:
            try:
                s.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)     # SO_RCVBUFFORCE
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            s.bind((0, CN_IDX_PROC))
            # Ask for exec and fork events only (struct proc_input, 6.6+).
            payload = struct.pack("=II", PROC_CN_MCAST_LISTEN, PROC_EVENT_EXEC | PROC_EVENT_FORK)
            cn = _CNMSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
            s.send(_NLMSG.pack(_NLMSG.size + len(cn), NLMSG_DONE, 0, 0, 0) + cn)
            s.setblocking(False)
        except OSError as e:
            s.close()
            raise ExecWatchError(f"cannot listen to the proc connector: {e.strerror}") from e
        return s

    def close(self) -> None:
        for p in self.pending.values():
            p.close()
        self.pending.clear()
        self.sock.close()

    async def run(self) -> None:
        """Keep the socket drained (commits also happen here, not only when
        the new program makes a request)."""
        import trio
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            try:
                self.settle()
            except Exception:  # noqa: BLE001 - the daemon must stay up
                # We no longer know where pending processes stand: fail
                # closed for them, keep serving everyone else.
                traceback.print_exc(file=sys.stderr)
                with self.lock:
                    self._lost_events("exec watch error")

    @property
    def busy(self) -> bool:
        return bool(self.pending)

    @_locked
    def settle(self) -> None:
        """Apply every exec the kernel has committed so far."""
        if not self._drain():
            return
        # A move happened: the forks that raced it are in the socket now.
        for _ in range(FOLLOW_ROUNDS):
            if not self._drain():
                self._moved.clear()
                return
        for m in self._moved.values():         # a fork storm: fail closed
            for pid in m.kin:
                self._kill_pid(pid)
        self._moved.clear()

    def _drain(self) -> bool:
        """Read and apply every queued event; True if a process was moved."""
        moved = False
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return moved
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self._lost_events()
                    continue
                raise
            if len(data) < _HEAD + _EVENT.size + 8:
                continue
            what = _EVENT.unpack_from(data, _HEAD)[0]
            body = _HEAD + _EVENT.size
            if what == PROC_EVENT_EXEC:
                tgid = struct.unpack_from("=ii", data, body)[1]
                if tgid in self.pending:
                    moved |= self._commit(self.pending.pop(tgid))
            elif what == PROC_EVENT_FORK and self._moved:
                _, ptgid, _, ctgid = _IDS.unpack_from(data, body)
                if ptgid != ctgid:
                    moved |= self._follow(ptgid, ctgid)

    # -- recording ---------------------------------------------------------

    @_locked
    def begin(self, tid: int, tgid: int) -> tuple[Pending | None, str | None]:
        """At an exec open by ``tid``: the pending attempt it belongs to (or
        None) and the open's stage (None when it was not needed)."""
        p = self.pending.get(tgid)
        if p is None:
            return None, None
        stage = exec_stage(tid)
        if stage in ("interp", "elf_interp"):
            return p, stage
        # A new attempt (or one we cannot place: fail safe): whatever the
        # process left pending failed.
        self.drop(tgid)
        return None, stage

    @_locked
    def add(self, tgid: int, source: str, target: str, expected: int, path: str,
            uid: int | None) -> None:
        # Events already queued are older than this attempt (the process's
        # own previous exec among them): apply them first, or the previous
        # exec would be taken for this one's commit.
        self.settle()
        pidfd = os.pidfd_open(tgid)
        self.drop(tgid)
        self.pending[tgid] = Pending(tgid, pidfd, source, target, expected, path, uid)

    @_locked
    def drop(self, tgid: int) -> None:
        p = self.pending.pop(tgid, None)
        if p is not None:
            p.close()

    @_locked
    def prune(self) -> None:
        """Forget attempts of processes that died (bounded table)."""
        for tgid, p in list(self.pending.items()):
            if process_exited(p.pidfd):
                self.drop(tgid)

    # -- committing --------------------------------------------------------

    def _dev(self) -> int:
        if self._fuse_dev is None:
            self._fuse_dev = self._fuse_dev_of()
        return self._fuse_dev

    def _commit(self, p: Pending) -> bool:
        try:
            if process_exited(p.pidfd):
                return False                         # gone (its pid may be reused)
            try:
                ino, dev = syscalls.statx_ino_dev(f"/proc/{p.tgid}/exe")
            except OSError:
                return False
            if (ino, dev) != (p.expected, self._dev()):
                # Another exec committed (the attempt failed earlier, or the
                # interpreter is not on this mount): no transition.
                self._log(p, "", "exec committed another program: no transition")
                return False
            status = procfs.status(p.tgid) or {}
            if status.get("TracerPid", "0") != "0":
                self._log(p, "x", "traced during the exec: no transition")
                return False
            why = self.guard(p.tgid) if self.guard is not None else None
            if why:
                self._log(p, "x", f"{why}: killed")
                self._signal(p.pidfd)
                return False
            bad = unsecure_names(p.tgid)
            if bad is None or bad:
                what = ", ".join(bad) if bad else "unreadable environment"
                self._log(p, "x", f"environment not clean for a transition ({what}): killed")
                self._signal(p.pidfd)
                return False
            try:
                cgroup.join(p.tgid, self.pod, p.target)
            except cgroup.CgroupError as e:
                self._log(p, "x", f"cannot move to pea {p.target} ({e}): killed")
                self._signal(p.pidfd)
                return False
            finally:
                self.on_move()      # even a failed write may have moved it
            self._moved[p.tgid] = _Moved(p.source, p.target, {p.tgid})
            return True
        finally:
            p.close()

    def _follow(self, parent: int, child: int) -> bool:
        for m in self._moved.values():
            if parent in m.kin:
                m.kin.add(child)
                if cgroup.pea_of(child, self.pod) == m.source:
                    try:
                        cgroup.join(child, self.pod, m.target)
                    except cgroup.CgroupError:
                        self._kill_pid(child)
                    finally:
                        self.on_move()
                    return True
        return False

    def _lost_events(self, why: str = "exec events lost (proc connector overflow)") -> None:
        """A commit may have been lost (the socket overflowed, or deciding
        failed), so no pending process can be placed. Fail closed: kill them."""
        for tgid, p in list(self.pending.items()):
            self._log(p, "x", f"{why}: killed")
            self._signal(p.pidfd)
            self.drop(tgid)
        for m in self._moved.values():
            for pid in m.kin:
                self._kill_pid(pid)
        self._moved.clear()

    @staticmethod
    def _signal(pidfd: int) -> None:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except OSError:
            pass

    def _kill_pid(self, pid: int) -> None:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return
        try:
            if cgroup.pea_of(pid, self.pod) is not None:
                self._signal(fd)
        finally:
            os.close(fd)

    def _log(self, p: Pending, need: str, why: str) -> None:
        self.audit.refusal(pea=p.source, pid=p.tgid, uid=p.uid, operation="exec",
                           path=p.path, need=need, rule=why, kind="transition")
