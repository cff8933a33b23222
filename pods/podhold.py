"""Holding a pod still: every process of the pod stopped with SIGSTOP, so
that none runs code while the daemon does what no pod process may see.

What it is for. `pod checkpoint` runs CRIU as host root inside a pod's
namespaces. CRIU binds abstract Unix sockets (its parasite's transport, its
descriptor store) whose names the pod's per-pea BPF programs do not know,
so the daemon detaches those programs for the dump (docs/MIGRATION.md,
2.12). While they are off, a pod process that runs could connect to CRIU's
sockets (their names are in the pod's /proc/net/unix) and feed CRIU, which
is host root, what it likes. So for that time no pod process may run.

Why SIGSTOP, and not the cgroup freezer: CRIU's parasite must run inside
the dumped task, and it hangs in a frozen one (MIGRATION.md, 2.12). CRIU
handles a group-stopped task: it dumps it as stopped, and with
--leave-running leaves it stopped.

The threat, and why a SIGSTOP sent once is not a hold. A group-stopped task
runs no user code. What starts it again is a SIGCONT, and a SIGCONT comes
from code that runs (another pod process: kill, kill(-1), a process group)
or from the kernel (when a process exits and leaves a process group with
stopped members orphaned, kill_orphaned_pgrp in exit_notify sends it
SIGHUP and SIGCONT before the exiting task becomes a zombie). A hostile pod
sees its processes being stopped one by one, and those not stopped yet can
SIGCONT those already stopped, fork new ones, or wake the others and then
stop themselves. So ``hold`` works in passes, each of which lists the pod,
pins every new process with a pidfd and sends SIGSTOP to every pinned one
(a process woken since the last pass is stopped again), then reads the
state and the scheduler counters of every thread. It returns only when
three passes in a row read the same processes, the same threads, every
thread stopped ('T', 't') or ended ('Z', 'X'), and the same counters.

Why three identical passes. One pass that reads "all stopped" proves
nothing: its reads are not at one instant. Process A read as stopped can
be woken right after by B, which is read later as stopped because it
stopped itself in between. The counters (run time and number of times on
a CPU, /proc/PID/task/TID/schedstat) close this: a thread whose counters
did not change between two reads did not get a CPU in between, and a
thread cannot go from stopped to running to stopped without a CPU. The
third pass covers the one case two passes leave open: a thread that set
its own state to stopped and was still on its CPU, switching out, when
read (its run time is only brought up to date at that switch, or at a
tick, 4 ms apart here). With three identical passes, at the end of the
second every thread of the pod was stopped and off its CPU at once; from
then on no pod code runs, so nothing of the pod can wake anything.

What is not covered (a SIGSTOP hold cannot cover it; the callers'
business): signals the kernel sends to a held process on some earlier
request, or on an event from outside the pod, with no pod code running.
A stopped task is woken by SIGCONT from any sender and killed by SIGKILL
only (any other fatal signal waits, pending, for a SIGCONT: wants_signal),
so these reach it:
- a POSIX timer armed with SIGCONT (timer_create is not mediated; its
  sigevent is in memory) wakes its process on time; one armed with SIGKILL
  kills it, and the death can wake others: a process group it orphans
  (kill_orphaned_pgrp), its parent if its exit signal is SIGCONT (clone),
  its children if their PR_SET_PDEATHSIG is SIGCONT;
- SIGIO with F_SETSIG(SIGCONT) on a descriptor made ready from outside: a
  TCP peer, a log pipe the daemon drains, dnotify (the owner is set with
  F_SETOWN, which the supervisor notes);
- the OOM killer (a death, as above); a terminal hangup (SIGHUP and
  SIGCONT to the session of a `pod exec -t` whose client went away).
A timer that fires faster than ``hold`` converges makes it fail
(HoldError); a slower one wakes its process after ``hold`` returned:
``Held.verify`` sees that at the instant it is called, not before.

Further rules, each with its reason:
- Signals go through a pidfd (pidfd_send_signal), never kill(pid): a pid
  number may be handed to another process between the listing and the
  signal. A pidfd is opened, then the pid is checked to be in the pod
  (kernel.cgroup.pea_of), then the pidfd's process to be alive (signal 0):
  if it is, the pod member read through /proc/PID was that process.
- SIGSTOP stops a whole thread group, so processes (cgroup.procs: thread
  group ids) are signalled. A process counts as stopped only when every
  thread of it is: a thread in 'D' (a FUSE request that PeaFS has not
  answered yet, a call the pod's supervisor is deciding) still runs kernel
  code and stops when it goes back to user mode. ``hold`` waits for it,
  bounded by ``timeout``. A group leader that has exited while its other
  threads run reads 'Z': its threads are what counts.
- A process the pod had stopped itself (job control) before ``hold`` first
  saw it, and that never ran during the hold, is not sent SIGCONT by
  ``release``: the pod finds it as it left it (``Held.already_stopped``).
- On any failure ``hold`` resumes what it stopped before it raises: an
  error path of its own never leaves a pod process stopped.
- ``keep``: host pids not touched, the pod's pid 1 first (our code, it
  must go on reaping). The keeper (pods/init.py, outside the pod's pid
  namespace) is also in the pod's cgroup; it is our code as well and the
  caller may keep it too.
"""

from __future__ import annotations

import errno
import os
import signal
import time

from kernel import cgroup

STOPPED = frozenset("Tt")    # group stop ('T'), ptrace stop ('t')
ENDED = frozenset("ZX")      # zombie, dead: runs no more code
HELD = STOPPED | ENDED
PAUSE = 0.002                # between passes: a stopping task needs a moment
STABLE_PASSES = 3            # identical passes in a row (the docstring: why 3)


class HoldError(Exception):
    """The pod could not be held: processes that did not stop, or were not
    proven still, in time."""


def _alive(pidfd: int) -> bool:
    """Whether the pidfd's process is not reaped yet (a zombie is alive
    here: its pid cannot be handed out again)."""
    try:
        signal.pidfd_send_signal(pidfd, 0)
        return True
    except ProcessLookupError:
        return False


def _pin(pid: int, pod: str) -> int | None:
    """A pidfd of ``pid`` if it is a process of ``pod``, else None (it ended,
    or its number now belongs to a process out of the pod)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None       # gone since the listing (EMFILE and the like raise:
                          # a process skipped for our own want is not held)
    try:
        # The order matters: the pidfd pins the process, /proc/PID then
        # names the pod member, and the pidfd still alive afterwards proves
        # that /proc/PID was the pidfd's process all along.
        pea = cgroup.pea_of(pid, pod)
        if pea is None and _alive(fd):
            # pea_of also answers None when it cannot read the file (EMFILE,
            # seen with the last descriptor taken by this very pidfd). A
            # process skipped for our own want would run on unheld: let a
            # real error raise, then ask again.
            _probe(f"/proc/{pid}/cgroup")
            pea = cgroup.pea_of(pid, pod)
        if pea is not None and _alive(fd):
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


# A /proc file that is not there or no longer answers: its task ended. Any
# other error (EMFILE, ...) raises: a thread we could not read is not known
# to be stopped.
_GONE = (errno.ENOENT, errno.ESRCH)


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in _GONE:
            return None
        raise
    try:
        return os.read(fd, 4096)
    except OSError as e:
        if e.errno in _GONE:
            return None   # the thread ended between open and read
        raise
    finally:
        os.close(fd)


def _probe(path: str) -> None:
    """Open and close ``path``: raise what stops us from reading it (but
    its end: ENOENT, ESRCH)."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as e:
        if e.errno not in _GONE:
            raise


SIGSTOP_BIT = 1 << (signal.SIGSTOP - 1)


def _needs_stop(pid: int) -> bool | None:
    """False if a thread of ``pid`` is stopped, or a SIGSTOP is pending for
    it (ShdPnd: signals sent to the process, in hex); True if
    it must be sent one; None if it could not be read (it ended: the
    caller's signal finds out)."""
    status = _read(f"/proc/{pid}/status")
    if status is None:
        return None
    for line in status.split(b"\n"):
        if line.startswith(b"ShdPnd:") and int(line.split()[1], 16) & SIGSTOP_BIT:
            return False
    snap = threads(pid)
    if snap is None:
        return None
    # A thread stopped while others are not: a group stop under way (they
    # stop when they leave the kernel), or a ptrace stop. A second SIGSTOP
    # would stay pending; a process that never stops makes hold() fail in
    # time, not succeed.
    return not any(s in STOPPED for s, _ in snap.values())


def _state(stat: bytes) -> str:
    """Field 3 of a stat line. The command name (field 2) may hold any
    byte, ')' and spaces included: the state follows the last ')'."""
    return stat[stat.rindex(b")") + 2:][:1].decode("ascii", "replace") or "?"


def _counters(pid: int, tid: int) -> tuple[int, ...]:
    """What changes whenever the thread gets a CPU: its run time in ns and
    the number of times it was put on a CPU (schedstat, CONFIG_SCHED_INFO);
    without schedstat, its context switches from status."""
    data = _read(f"/proc/{pid}/task/{tid}/schedstat")
    if data:
        f = data.split()
        return (int(f[0]), int(f[2]))
    data = _read(f"/proc/{pid}/task/{tid}/status") or b""
    return tuple(int(line.split()[1]) for line in data.split(b"\n")
                 if line.startswith((b"voluntary_ctxt", b"nonvoluntary_ctxt")))


def threads(pid: int) -> dict[int, tuple[str, tuple[int, ...]]] | None:
    """tid -> (state letter, counters) for every thread of process ``pid``;
    None if the process is gone. The state is read before the counters, so
    that a thread read as stopped and woken before its counters are read
    shows its run in the next read's counters."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError as e:
        if e.errno in _GONE:
            return None
        raise
    out = {}
    for tid in tids:
        stat = _read(f"/proc/{pid}/task/{tid}/stat")
        if not stat or b")" not in stat:
            continue      # ended since the listing: reads as missing
        out[tid] = (_state(stat), _counters(pid, tid))
    return out or None


def _not_held(snap: dict[int, tuple[str, tuple[int, ...]]]) -> str | None:
    """The state of the first thread that is neither stopped nor ended."""
    return next((s for s, _ in snap.values() if s not in HELD), None)


class Held:
    """A pod held by ``hold``: ``pidfds`` (host pid -> pidfd) of every
    process stopped. ``release`` lets them go."""

    def __init__(self, pod: str, keep):
        self.pod = pod
        self.keep = frozenset(keep)
        self.pidfds: dict[int, int] = {}
        # pids that were stopped by the pod itself when first seen, with
        # the threads read then; dropped once they are seen to have run.
        self._first: dict[int, dict] = {}

    @property
    def already_stopped(self) -> set[int]:
        """Processes stopped by the pod before the hold, which never ran
        during it: ``release`` leaves them stopped."""
        return set(self._first)

    # -- one pass of hold() -------------------------------------------------
    def _drop(self, pid: int) -> None:
        os.close(self.pidfds.pop(pid))
        self._first.pop(pid, None)

    def _pass(self) -> dict[int, dict]:
        """List the pod, pin new processes, SIGSTOP every pinned one, and
        read every thread of each: pid -> threads()."""
        listed = cgroup.pids_in(self.pod)
        # pids_in skips a cgroup.procs it cannot read (EMFILE, ...): a pea
        # left out. Probe one such file now: if descriptors ran out (the
        # pidfds of a large pod take them), the hold fails rather than
        # missing processes. (Not proof against a shortage that came and
        # went during the listing: kernel/cgroup.py should raise.)
        _probe(str(cgroup.pod_cgroup(self.pod) / "cgroup.procs"))
        for pid in listed:
            if pid in self.keep:
                continue
            fd = self.pidfds.get(pid)
            if fd is not None:
                if _alive(fd):
                    continue
                self._drop(pid)   # ended and reaped: pid is someone new
            fd = _pin(pid, self.pod)
            if fd is None:
                continue          # ended: a new process on its number is seen next pass
            self.pidfds[pid] = fd
            first = threads(pid)
            if first and all(s == "T" for s, _ in first.values()):
                self._first[pid] = first
        for pid, fd in list(self.pidfds.items()):
            if _needs_stop(pid) is False:
                continue
            try:
                # Every pass, to every process that runs and has no SIGSTOP
                # pending: one woken since the last pass is stopped again.
                # Never to one that is stopped, nor twice to one on its way
                # (a D state): a SIGSTOP sent to a stopped task stays
                # pending, and CRIU's parasite, run in the task later, takes
                # that signal for an interruption and fails the dump
                # ("Unexpected task interruption": compel counts at most
                # one pending stop when it seizes).
                signal.pidfd_send_signal(fd, signal.SIGSTOP)
            except ProcessLookupError:
                self._drop(pid)
        snap = {}
        for pid, fd in list(self.pidfds.items()):
            t = threads(pid)
            if not _alive(fd):
                self._drop(pid)   # what was read may be another process's
                continue
            # Alive but nothing read (cannot happen, /proc/PID lives as long
            # as the pidfd's process): not known to be stopped.
            snap[pid] = t or {pid: ("?", ())}
            first = self._first.get(pid)
            if first is not None and {k: v[1] for k, v in first.items()} != \
                    {k: v[1] for k, v in t.items()}:
                del self._first[pid]     # it ran: it was not left stopped by the pod
        return snap

    # -- the API ---------------------------------------------------------------
    def verify(self) -> list[int]:
        """Host pids of the pod (but ``keep``) that are not stopped or ended
        now, a process that was not held included; [] while the hold holds."""
        bad = []
        for pid in sorted(set(cgroup.pids_in(self.pod)) - self.keep):
            fd = self.pidfds.get(pid)
            if fd is not None:
                t = threads(pid)
                if _alive(fd):    # then t was read from the held process
                    if t is None or _not_held(t) is not None:
                        bad.append(pid)
                    continue
            # Not held: new since hold(), or new on a dead one's number
            # (unless it ended too meanwhile).
            other = _pin(pid, self.pod)
            if other is not None:
                os.close(other)
                bad.append(pid)
        return bad

    def kill(self) -> None:
        """SIGKILL to every held process, through its pidfd (`pod
        checkpoint` without --leave-running: nothing runs again after its
        image was taken). A stopped task dies of SIGKILL without running
        any more of its code; ``release`` afterwards only closes pidfds."""
        for fd in self.pidfds.values():
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def release(self) -> None:
        """SIGCONT to every held process (but those the pod had stopped
        itself), through its pidfd, and close the pidfds. Idempotent."""
        while self.pidfds:
            pid, fd = self.pidfds.popitem()
            try:
                if pid not in self._first:
                    signal.pidfd_send_signal(fd, signal.SIGCONT)
            except ProcessLookupError:
                pass              # ended meanwhile
            finally:
                os.close(fd)
        self._first.clear()

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def hold(pod: str, *, keep: set[int] = frozenset(), timeout: float = 5.0) -> Held:
    """Stop every process of pod ``pod`` (every pid in
    ``kernel.cgroup.pids_in(pod)``, all peas) except the host pids in
    ``keep`` (the pod's pid 1: our own code, it must go on reaping), and
    return once none of them can run (the module's docstring: how that is
    known). ``timeout`` (seconds, monotonic) bounds the wait; past it, what
    was stopped is resumed and HoldError names the processes that did not
    stop (or, all stopped, those not yet proven still), with their state
    letter. Blocking: run it in a thread from trio.
    """
    if not cgroup.pod_cgroup(pod).is_dir():
        raise HoldError(f"pod {pod}: no cgroup {cgroup.pod_cgroup(pod)} (is it running?)")
    held = Held(pod, keep)
    deadline = time.monotonic() + timeout
    try:
        previous, stable = None, 0
        while True:
            snap = held._pass()
            laggards = {pid: s for pid, t in snap.items() if (s := _not_held(t)) is not None}
            if laggards:
                stable = 0
            elif snap != previous:
                stable = 1
            else:
                stable += 1
            # Nothing to hold: nothing of the pod runs that could wake anything.
            if not snap or stable >= STABLE_PASSES:
                return held
            if time.monotonic() >= deadline:
                if laggards:
                    why = "did not stop"
                else:
                    # All stopped, but not still long enough. Name those that
                    # moved since the last pass (woken again and again), by
                    # their leader's state; when none moved (the deadline fell
                    # between identical passes, fewer than STABLE_PASSES of
                    # them), every one: none is proven still yet.
                    leader = {pid: t[min(t)][0] for pid, t in snap.items()}
                    laggards = {pid: s for pid, s in leader.items()
                                if previous is None or previous.get(pid) != snap[pid]} \
                        or leader
                    why = f"stopped but were not seen still for {STABLE_PASSES} passes"
                what = ", ".join(f"{pid} {s}" for pid, s in sorted(laggards.items()))
                raise HoldError(f"pod {pod}: {len(laggards)} process(es) {why} "
                                f"within {timeout:g} s (host pid, state): {what}")
            previous = snap
            time.sleep(PAUSE)
    except BaseException:
        held.release()
        raise
