"""The pod's seccomp supervisor: decides the calls the filter mediates.

    sup = Supervisor(pod_name, policy)
    sup.add_listener(fd)       # any time, before or during serve()
    await sup.serve()          # trio; returns after close()
    sup.close()

One supervisor per pod serves every listener of the pod (each `pod exec`
brings its own filter chain, hence its own listener). A notification is
decided in the trio thread; only a send that may block runs in a worker
thread. Any failure while deciding answers EPERM: a mediated call is never
let through by accident. When the supervisor is gone (listener closed), the
kernel fails every mediated call with ENOSYS.

The rules (SECURITY.md, "Processes"):

Processes. A process may act on processes of its own pea only; across peas
the call fails with EPERM. "Own pea" is decided on pinned processes
(pods/seccomp_procs.py), and the answer is one of:

- CONTINUE, when the decision depends only on register arguments and the
  target cannot change identity before the kernel acts: the target is the
  caller's own thread group (alive while the call waits), or a process of
  the caller's pea that is still alive (pidfd) when the caller is still
  waiting (NOTIF_ID_VALID) right before the answer. What remains is the
  window between that last check and the kernel's lookup, during which the
  target would have to die, be reaped, and its number be handed out again
  after a full cycle of the pid space: not a practical race.
- performed by the supervisor on a pidfd, when the target is not a pid in a
  register: pidfd_send_signal, pidfd_getfd and pidfd_open (the pidfd the
  caller names is a descriptor, which a sibling thread could swap after a
  check; the supervisor takes a copy, decides on it, acts on it, and hands
  any new descriptor over with NOTIF_ADDFD). The kernel's own permission
  checks are replicated for these (seccomp_procs.may_signal/may_ptrace).
- group signals, kill(-1), kill(0) and kill(-pgrp), are performed by the
  supervisor for each target in the caller's pea, like the virtual
  super-user of the Pea-Pod paper ("kill -1"): a pod's kill(-1) reaches its own
  pea only, and a process group that spans peas is signalled in the
  caller's pea only. Result: 0 if any process was signalled, else EPERM if
  some were refused, else ESRCH. Receivers see si_pid 0 (the sender is
  outside their pid namespace).

Network calls are not mediated here: the peas' bind and connect rules are
decided inside the kernel by cgroup socket-address BPF programs
(pods/netbpf.py), on the kernel's own copy of the address.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
import time
from collections import Counter

import trio

from kernel import libc, procfs
from kernel.pidfd import process_exited
from pods import netbpf, notifrelay, notify
from pods import seccomp_procs as procs
from pods.seccomp_syscalls import (
    F_SETOWN, IOPRIO_WHO_PGRP,
    IOPRIO_WHO_PROCESS, NAME, PR_SET_PDEATHSIG, PRIO_PGRP, PRIO_PROCESS, PTRACE_TRACEME,
)

log = logging.getLogger("pods.supervisor")

_libc = ctypes.CDLL(None, use_errno=True)
AF_UNIX = 1
SOCKADDR_UN_SIZE = 110      # sun_family + sun_path[108]

SIGMAX = 64


class _Answer:
    __slots__ = ("kind", "value")

    def __init__(self, kind: str, value: int = 0):
        self.kind, self.value = kind, value


CONT = _Answer("cont")


def ERR(e: int) -> _Answer:
    return _Answer("err", e)


def VAL(v: int) -> _Answer:
    return _Answer("val", v)


def FD(fd: int) -> _Answer:
    return _Answer("fd", fd)


class Supervisor:
    def __init__(self, pod_name: str, policy, *, settle=None, pending=None):
        notify.check_sizes()
        # PeaFS's exec watch (peafs/execwatch.py): ``settle`` applies the
        # transitions the kernel has committed, so every decision here sees
        # a process in the pea its *current* program belongs to;
        # ``pending(host_tgid)`` says a process is inside an exec whose
        # transition has not committed yet.
        self._settle = settle or (lambda: None)
        self._pending = pending or (lambda tgid: False)
        self.pod = pod_name
        self.policy = policy
        self.procs = procs.PodProcs(pod_name)
        self.stats: Counter = Counter()
        self.busy_ns = 0              # time spent deciding (bench: cost per call)
        # Listener fd -> the serial of its registration with the relay,
        # which receives every notification (pods/notif_relay.c): it
        # continues a noted process's repeated alarm() itself, outside the
        # GIL, and hands everything else to _serve.
        self._listeners: dict[int, int] = {}
        self._relay = notifrelay.Relay()
        self._closed = False
        self._callers: dict[int, procs.Caller] = {}
        self._armed: dict[int, int] = {}          # host tgid -> pidfd
        self._armed_groups: set[int] = set()      # host pgids
        self._armed_lock = threading.Lock()       # transition_guard runs in PeaFS's thread
        # The pod's map of abstract Unix names (pods/netbpf.py) and each
        # pea's index in it; set by the daemon once the programs are attached.
        self.unix_names: int | None = None
        self.pea_index: dict[str, int] = {}

    # ------------------------------------------------------------ serving
    def add_listener(self, fd: int) -> None:
        """Serve ``fd`` (the supervisor owns it from now on and closes it).
        Its notifications wait in the relay's pipe until ``serve`` runs."""
        if self._closed:
            os.close(fd)
            return
        notify.set_sync_wakeup(fd)
        try:
            self._listeners[fd] = self._relay.add(fd)
        except OSError as e:
            # Closed unserved: the kernel fails its filter's mediated calls
            # with ENOSYS; they are never let through.
            log.error("listener %d: %s; closing it (its calls now fail)", fd, e)
            os.close(fd)

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self._cancel = nursery.cancel_scope
            if self._closed:
                nursery.cancel_scope.cancel()
            nursery.start_soon(self._serve)
            await trio.sleep_forever()

    def close(self) -> None:
        """Stop serving and close every listener: from then on the kernel
        fails the mediated calls of the pod's processes with ENOSYS."""
        self._closed = True
        scope = getattr(self, "_cancel", None)
        if scope is not None:
            scope.cancel()
        for fd in list(self._listeners):
            self._drop(fd)
        self._relay.close()
        with self._armed_lock:
            for pfd in self._armed.values():
                os.close(pfd)
            self._armed.clear()

    def _drop(self, fd: int) -> None:
        if self._listeners.pop(fd, None) is not None:
            self._relay.remove(fd)     # the relay's thread is done with it
            try:
                os.close(fd)
            except OSError:
                pass

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    @property
    def fast_alarms(self) -> int:
        """alarm() calls of noted processes continued by the relay's thread."""
        return self._relay.counts()[0]

    async def _serve(self) -> None:
        """Decide what the relay passes on, in the order it was received."""
        rfd = self._relay.fileno
        while True:
            await trio.lowlevel.wait_readable(rfd)
            for rec in self._relay.read():
                if rec.kind == notifrelay.NOTIF:
                    try:
                        # A listener dropped since: its fd number may be reused.
                        if self._listeners.get(rec.fd) == rec.serial:
                            self._handle(rec.fd, rec.note)
                    finally:
                        self._relay.done()
                elif self._listeners.get(rec.fd) != rec.serial:
                    continue
                elif rec.kind == notifrelay.HUP:
                    self._drop(rec.fd)   # no process uses this filter any more
                else:
                    log.error("listener %d: %s; closing it (its calls now fail)",
                              rec.fd, os.strerror(rec.error))
                    self._drop(rec.fd)
            await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------ dispatch
    def _handle(self, fd: int, note: notify.Notification) -> None:
        t0 = time.perf_counter_ns()
        name = NAME.get(note.nr, str(note.nr))
        self.stats[name] += 1
        try:
            self._settle()
            handler = getattr(self, "_do_" + name, None)
            if handler is None:
                ans = ERR(errno.EPERM)
            else:
                ans = handler(fd, note)
        except OSError as e:
            log.debug("%s by %d: %s", name, note.pid, e)
            ans = ERR(e.errno if e.errno in (errno.ESRCH, errno.EFAULT, errno.EBADF) else errno.EPERM)
        except Exception:  # noqa: BLE001 - fail closed, never continue
            log.exception("deciding %s by %d", name, note.pid)
            ans = ERR(errno.EPERM)
        caller = self._callers.pop(note.id, None)
        if caller is not None:
            caller.close()
        if ans is None:          # handed to a task that answers itself
            self.busy_ns += time.perf_counter_ns() - t0
            return
        try:
            self._answer(fd, note, ans)
        except OSError as e:
            log.error("answering %s by %d: %s", name, note.pid, e)
            try:   # never leave a caller blocked: refuse
                notify.respond(fd, note.id, error=errno.EPERM)
            except OSError:
                pass
        finally:
            self.busy_ns += time.perf_counter_ns() - t0

    def _answer(self, fd: int, note, ans: _Answer) -> None:
        if ans.kind == "cont":
            # Last guard: the caller is still the caller (its tid not reused).
            if not notify.id_valid(fd, note.id):
                return
            notify.respond(fd, note.id, cont=True)
            self.stats["continued"] += 1
        elif ans.kind == "err":
            notify.respond(fd, note.id, error=ans.value)
            self.stats["refused" if ans.value in (errno.EPERM, errno.EACCES) else "failed"] += 1
        elif ans.kind == "val":
            notify.respond(fd, note.id, val=ans.value)
            self.stats["performed"] += 1
        else:
            try:
                if notify.addfd_send(fd, note.id, ans.value) is not None:
                    self.stats["performed"] += 1
            except OSError as e:
                notify.respond(fd, note.id, error=e.errno or errno.EPERM)
            finally:
                os.close(ans.value)

    def _caller(self, note) -> procs.Caller:
        """The caller of ``note``, pinned (closed once the notification is
        decided)."""
        c = self._callers.get(note.id)
        if c is None:
            c = self.procs.caller(note.pid)
            if c is None:
                raise procs.no_such_process()
            self._callers[note.id] = c
        return c

    # ------------------------------------------------- one target by pid
    def _same_pea_target(self, fd, note, caller, vpid: int, *, thread=False, vtgid=None,
                         settled=False):
        """CONT if ``vpid`` (a pid or, with thread, a tid) is the caller's own
        thread group or a live process of its pea; EPERM across peas.

        With ``settled``, also EPERM for a target inside an exec whose pea
        transition has not committed (ptrace, process_vm_writev): until the
        commit it is in its old pea, but whoever writes its memory or
        registers then would run code in the target pea after it, as the
        kernel refuses a traced set-id exec its privilege."""
        if vpid <= 0:
            return ERR(errno.ESRCH)
        if not thread and vpid == caller.vtgid:
            return CONT
        if thread and vtgid == caller.vtgid:
            # tgkill on the caller's own thread group: the kernel checks that
            # the tid belongs to that (living) group.
            return CONT
        t = (self.procs.resolve_thread(caller, vpid, vtgid) if thread
             else self.procs.resolve(caller, vpid))
        if t is None:
            return ERR(errno.ESRCH)
        try:
            if t.info.tgid == caller.tgid:
                return CONT
            if caller.pea is None or t.pea != caller.pea:
                return ERR(errno.EPERM)
            if settled and self._pending(t.info.tgid):
                return ERR(errno.EPERM)
            if not t.alive():
                return ERR(errno.ESRCH)
            return CONT
        finally:
            t.close()

    def _pid_arg(self, fd, note, i=0, settled=False):
        caller = self._caller(note)
        return self._same_pea_target(fd, note, caller, note.arg_int(i), settled=settled)

    def _do_ptrace(self, fd, note):
        if note.args[0] == PTRACE_TRACEME:
            return CONT   # names no target: the parent becomes the tracer, and
            #               every later request of that parent is mediated here
        return self._pid_arg(fd, note, 1, settled=True)

    def _do_process_vm_readv(self, fd, note):
        return self._pid_arg(fd, note, 0)

    def _do_process_vm_writev(self, fd, note):
        return self._pid_arg(fd, note, 0, settled=True)

    _do_prlimit64 = _do_process_vm_readv
    _do_sched_setaffinity = _do_process_vm_readv
    _do_sched_setscheduler = _do_process_vm_readv
    _do_sched_setparam = _do_process_vm_readv
    _do_sched_setattr = _do_process_vm_readv
    _do_migrate_pages = _do_process_vm_readv
    _do_move_pages = _do_process_vm_readv
    _do_get_robust_list = _do_process_vm_readv

    def _do_kcmp(self, fd, note):
        caller = self._caller(note)
        for i in (0, 1):
            a = self._same_pea_target(fd, note, caller, note.arg_int(i))
            if a.kind != "cont":
                return a
        return CONT

    def _which_who(self, fd, note, process_which, pgrp_which):
        caller = self._caller(note)
        which, who = note.arg_int(0), note.arg_int(1)
        if which == process_which:
            return self._same_pea_target(fd, note, caller, who or caller.vtgid)
        if which == pgrp_which:
            return self._group_all_in_pea(caller, who or caller.vpgid)
        return ERR(errno.EPERM)   # a user's processes: in every pea (and pod)

    def _do_setpriority(self, fd, note):
        return self._which_who(fd, note, PRIO_PROCESS, PRIO_PGRP)

    def _do_ioprio_set(self, fd, note):
        return self._which_who(fd, note, IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP)

    def _do_fcntl(self, fd, note):
        if note.arg_uint(1) != F_SETOWN:
            return ERR(errno.EPERM)
        caller = self._caller(note)
        owner = note.arg_int(2)
        if owner == 0:
            return CONT   # clears the owner
        if owner > 0:
            ans = self._same_pea_target(fd, note, caller, owner)
            if ans.kind == "cont" and not self._arm_process(caller, owner):
                return ERR(errno.EPERM)
            return ans
        ans = self._group_all_in_pea(caller, -owner)
        if ans.kind == "cont" and not self._arm_group(caller, -owner):
            return ERR(errno.EPERM)
        return ans

    def _do_prctl(self, fd, note):
        # Only PR_SET_PDEATHSIG reaches us (the filter): noted, then done by
        # the kernel for the caller itself.
        if note.arg_int(0) != PR_SET_PDEATHSIG:
            return ERR(errno.EPERM)
        caller = self._caller(note)
        if note.arg_int(1) != 0 and not self._arm_process(caller, caller.vtgid):
            return ERR(errno.EPERM)
        return CONT

    def _do_alarm(self, fd, note):
        # Only a non-zero alarm reaches us (the filter); setitimer always.
        if self._armed_already(note.pid):
            return CONT
        caller = self._caller(note)
        if not self._arm_process(caller, caller.vtgid):
            return ERR(errno.EPERM)
        return CONT

    _do_setitimer = _do_alarm

    # An alarm() or setitimer() of a process already noted needs no more
    # than its note: the note lasts as long as the process. Postfix re-arms
    # its watchdog at every turn of its event loop, 23 calls per message
    # accepted over SMTP (bench apps_mail), and without this _do_alarm would
    # pin the caller and read its identity each time. The relay's thread
    # (pods/notif_relay.c) applies this same rule before the call ever
    # reaches Python; it is kept here for the calls the relay passes on
    # (its table full, a note it was not given).
    def _armed_already(self, tid: int) -> bool:
        """True if ``tid`` is the main thread of a process noted as armed.
        The note's pidfd pins that process: while it lives, no other thread
        can have its tgid as a tid, so a caller with that tid *is* it (a
        caller that died meanwhile gets no answer: its notification is gone).
        Other threads take the full path."""
        with self._armed_lock:
            pfd = self._armed.get(tid)
            return pfd is not None and not process_exited(pfd)

    # --------------------------- signals armed before a pea transition
    # F_SETOWN (SIGIO/SIGURG to an owner, checked by the kernel at send time
    # against uids only), PR_SET_PDEATHSIG and interval timers (alarm,
    # setitimer: SIGALRM, SIGVTALRM, SIGPROF) survive an exec. After a
    # transition they would let the old pea signal the new program at a
    # moment of its choosing. A process that is, or whose group is, such a
    # target may not change pea: PeaFS asks ``transition_guard`` at the exec
    # open and again at the commit. The marks last as long as the process
    # (group ids are kept, bounded): over-refusing is the safe side.
    ARM_LIMIT = 4096

    def _arm_process(self, caller, vpid: int) -> bool:
        t = self.procs.resolve(caller, vpid) if vpid != caller.vtgid else None
        host = caller.tgid if t is None else t.info.tgid
        if t is not None:
            t.close()
        with self._armed_lock:
            return self._arm_host(host)

    def _arm_host(self, host: int) -> bool:
        old = self._armed.get(host)
        if old is not None:
            if not process_exited(old):
                return True
            # The noted process died and its pid names another one now:
            # note the new one (pinned by its own pidfd).
            self._unarm(host)
        if len(self._armed) >= self.ARM_LIMIT:
            for tgid, pfd in list(self._armed.items()):
                if process_exited(pfd):
                    self._unarm(tgid)
            if len(self._armed) >= self.ARM_LIMIT:
                return False
        try:
            pfd = self._armed[host] = os.pidfd_open(host)
        except OSError:
            return False
        # The relay's thread continues this process's next alarm()s on
        # the same condition as _armed_already; if its table is full, they
        # come here.
        self._relay.arm(host, pfd)
        return True

    def _unarm(self, host: int) -> None:
        self._relay.disarm(host)
        os.close(self._armed.pop(host))

    def _arm_group(self, caller, vpgid: int) -> bool:
        d = caller.depth
        members = self.procs.members(caller, lambda st, nspid: procfs.ints(st["NSpgid"])[d - 1] == vpgid)
        for _host, _vpid, st in members:
            with self._armed_lock:
                if len(self._armed_groups) >= self.ARM_LIMIT:
                    return False
                self._armed_groups.add(procfs.ints(st["NSpgid"])[0])
            return True
        return False

    def transition_guard(self, host_tgid: int) -> str | None:
        """Why ``host_tgid`` may not change pea now, or None (called from
        PeaFS's thread)."""
        st = procfs.status(host_tgid)
        if st is None:
            return "it is gone"
        pgid = procfs.ints(st.get("NSpgid", ""))
        with self._armed_lock:
            pfd = self._armed.get(host_tgid)
            if pfd is not None and not process_exited(pfd):
                return "a signal is armed towards it (F_SETOWN, PR_SET_PDEATHSIG or a timer)"
            if pgid and pgid[0] in self._armed_groups:
                return "its process group is a SIGIO owner (F_SETOWN)"
        return None

    def _group_all_in_pea(self, caller, vpgid: int):
        """CONT if every member of process group ``vpgid`` is in the caller's pea."""
        d = caller.depth
        members = self.procs.members(caller, lambda st, nspid: procfs.ints(st["NSpgid"])[d - 1] == vpgid)
        if not members:
            return ERR(errno.ESRCH)
        for host, vpid, _ in members:
            t = self.procs.pin(host, caller, vpid)
            if t is None:
                continue
            try:
                if caller.pea is None or t.pea != caller.pea:
                    return ERR(errno.EPERM)
            finally:
                t.close()
        return CONT

    # ------------------------------------------------------------ signals
    def _do_kill(self, fd, note):
        caller = self._caller(note)
        pid, sig = note.arg_int(0), note.arg_int(1)
        if sig < 0 or sig > SIGMAX:
            return ERR(errno.EINVAL)
        if pid > 0:
            return self._same_pea_target(fd, note, caller, pid)
        if pid == -1:
            d = caller.depth
            # kill(-1): every process the caller could signal but itself and
            # its namespace's init, here restricted to the caller's pea.
            targets = self.procs.members(
                caller, lambda st, nspid: int(st["Tgid"]) != caller.tgid and nspid[d - 1] != 1)
        else:
            vpgid = caller.vpgid if pid == 0 else -pid
            d = caller.depth
            targets = self.procs.members(
                caller, lambda st, nspid: procfs.ints(st["NSpgid"])[d - 1] == vpgid)
        return self._signal_group(fd, note, caller, targets, sig, everyone=pid == -1)

    def _signal_group(self, fd, note, caller, targets, sig, everyone=False):
        """Signal each of ``targets`` that is in the caller's pea and that the
        caller may signal. The answer follows the kernel's: kill(-1) returns
        0 once there was any candidate (refusals are not errors there),
        ESRCH if none; a process group returns 0 if any member was
        signalled, else the refusal (EPERM), else ESRCH."""
        sent = refused = 0
        if not notify.id_valid(fd, note.id):
            return ERR(errno.ESRCH)
        for host, vpid, _ in targets:
            t = self.procs.pin(host, caller, vpid)
            if t is None:
                continue
            try:
                if caller.pea is None or t.pea != caller.pea or not procs.may_signal(caller, t, sig):
                    refused += 1
                    continue
                try:
                    notify.pidfd_send_signal(t.pidfd, sig)
                    sent += 1
                except OSError as e:
                    if e.errno == errno.EPERM:
                        refused += 1
            finally:
                t.close()
        if sent or (everyone and refused):
            return VAL(0)
        return ERR(errno.EPERM if refused else errno.ESRCH)

    def _do_tkill(self, fd, note):
        caller = self._caller(note)
        sig = note.arg_int(1)
        if sig < 0 or sig > SIGMAX:
            return ERR(errno.EINVAL)
        tid = note.arg_int(0)
        if tid == caller.nspid[-1]:
            return CONT
        return self._same_pea_target(fd, note, caller, tid, thread=True)

    def _do_tgkill(self, fd, note):
        caller = self._caller(note)
        tgid, tid, sig = note.arg_int(0), note.arg_int(1), note.arg_int(2)
        if sig < 0 or sig > SIGMAX:
            return ERR(errno.EINVAL)
        if tgid <= 0 or tid <= 0:
            return ERR(errno.EINVAL)
        return self._same_pea_target(fd, note, caller, tid, thread=True, vtgid=tgid)

    def _do_rt_sigqueueinfo(self, fd, note):
        # The siginfo in memory does not enter the decision (the target is a
        # register); the kernel validates it when the call continues.
        caller = self._caller(note)
        return self._same_pea_target(fd, note, caller, note.arg_int(0))

    def _do_rt_tgsigqueueinfo(self, fd, note):
        caller = self._caller(note)
        tgid, tid = note.arg_int(0), note.arg_int(1)
        if tgid <= 0 or tid <= 0:
            return ERR(errno.EINVAL)
        return self._same_pea_target(fd, note, caller, tid, thread=True, vtgid=tgid)

    # ------------------------------------------------- abstract Unix names
    def _do_bind(self, fd, note):
        """bind() with an address length other than sockaddr_in's (16) and
        sockaddr_in6's (28), which the filter lets through to the kernel's
        own programs. An abstract Unix name (or an autobind) is bound here,
        from our copy of the address onto a copy of the caller's descriptor
        (the same socket), and recorded as the caller's pea's: the kernel's
        connect and sendmsg programs let only that pea reach it
        (pods/netbpf.py ``_unix_program``). No sibling thread can change the
        address after our check: the bind is ours. Anything else continues:
        a pathname is a file (PeaFS decides), an IP address is judged by the
        bind programs. If a thread swaps an abstract name into the memory
        after we read something else, the kernel binds a name we never
        recorded, which no pea can then reach (fail closed)."""
        caller = self._caller(note)
        addrlen = note.arg_uint(2)
        if addrlen < 2 or addrlen > SOCKADDR_UN_SIZE:
            return CONT
        data = notify.read_mem(note.pid, note.args[1], addrlen)
        if int.from_bytes(data[:2], "little") != AF_UNIX:
            return CONT
        if addrlen > 2 and data[2] != 0:
            return CONT
        if self.unix_names is None or caller.pea not in self.pea_index:
            return ERR(errno.EPERM)
        sock = self._take(note, note.arg_int(0))
        try:
            if not notify.id_valid(fd, note.id):
                return ERR(errno.ESRCH)
            buf = ctypes.create_string_buffer(data, SOCKADDR_UN_SIZE)
            if _libc.bind(sock, buf, ctypes.c_uint(addrlen)) != 0:
                return ERR(ctypes.get_errno())
            got = ctypes.create_string_buffer(SOCKADDR_UN_SIZE)
            size = ctypes.c_uint(SOCKADDR_UN_SIZE)
            if _libc.getsockname(sock, got, ctypes.byref(size)) != 0:
                return ERR(ctypes.get_errno())
            name = got.raw[2:size.value]       # an autobind's name too
            netbpf.record_unix_name(self.unix_names, name, self.pea_index[caller.pea])
            self.stats["unix names"] += 1
            return VAL(0)
        finally:
            os.close(sock)

    # ------------------------------------------------------------ pidfds
    def _take(self, note, remote_fd: int) -> int:
        """A copy of the caller's descriptor ``remote_fd`` (the caller's
        table may change after this; the copy does not)."""
        return libc.pidfd_getfd(self._caller(note).pidfd, remote_fd)

    def _pinned_by_pidfd(self, caller, pidfd_copy: int) -> procs.Target:
        try:
            info = notify.pidfd_info(pidfd_copy)
        except OSError as e:
            # not a pidfd (a /proc/PID directory is accepted by the kernel,
            # but cannot be checked here), or its process is gone
            raise OSError(errno.ESRCH if e.errno == errno.ESRCH else errno.EBADF, "not a pidfd")
        return procs.Target(-1, info.tgid, info, self.procs.target_pea(info))

    def _do_pidfd_open(self, fd, note):
        caller = self._caller(note)
        vpid, flags = note.arg_int(0), note.arg_uint(1)
        if flags & ~(os.O_NONBLOCK | notify.PIDFD_THREAD):
            return ERR(errno.EINVAL)
        thread = bool(flags & notify.PIDFD_THREAD)
        if vpid <= 0:
            return ERR(errno.EINVAL)
        t = self.procs.resolve_thread(caller, vpid, None) if thread else self.procs.resolve(caller, vpid)
        if t is None:
            return ERR(errno.ESRCH)
        try:
            if t.info.tgid != caller.tgid and (caller.pea is None or t.pea != caller.pea):
                return ERR(errno.EPERM)
            if not notify.id_valid(fd, note.id):
                return ERR(errno.ESRCH)
            if flags & os.O_NONBLOCK:
                import fcntl as _f
                _f.fcntl(t.pidfd, _f.F_SETFL, os.O_NONBLOCK)
            out, t.pidfd = t.pidfd, -1
            return FD(out)
        finally:
            t.close()

    def _do_pidfd_send_signal(self, fd, note):
        caller = self._caller(note)
        sig, info_ptr, flags = note.arg_int(1), note.args[2], note.arg_uint(3)
        if sig < 0 or sig > SIGMAX:
            return ERR(errno.EINVAL)
        if flags & notify.PIDFD_SIGNAL_PROCESS_GROUP:
            return ERR(errno.EPERM)   # a group that may span peas: use kill(-pgrp)
        info = notify.read_mem(note.pid, info_ptr, 128) if info_ptr else None
        copy = self._take(note, note.arg_int(0))
        try:
            t = self._pinned_by_pidfd(caller, copy)
            if caller.pea is None or t.pea != caller.pea:
                return ERR(errno.EPERM)
            if not procs.may_signal(caller, t, sig):
                return ERR(errno.EPERM)
            if not notify.id_valid(fd, note.id):
                return ERR(errno.ESRCH)
            notify.pidfd_send_signal(copy, sig, info, flags)
            return VAL(0)
        finally:
            os.close(copy)

    def _do_pidfd_getfd(self, fd, note):
        caller = self._caller(note)
        if note.arg_uint(2) != 0:
            return ERR(errno.EINVAL)
        copy = self._take(note, note.arg_int(0))
        try:
            t = self._pinned_by_pidfd(caller, copy)
            if t.info.tgid != caller.tgid:
                if caller.pea is None or t.pea != caller.pea or not procs.may_ptrace(caller, t):
                    return ERR(errno.EPERM)
            got = libc.pidfd_getfd(copy, note.arg_int(1))
            return FD(got)
        finally:
            os.close(copy)

