"""pods/seccomp_rearm.py: a process whose filter lost its listener (what a
CRIU restore leaves: docs/MIGRATION.md) gets the pod's filter again with a
new listener, and its mediated calls reach the supervisor again.

No CRIU here: closing the only copy of the listener puts the process in the
same state as a restore does (the filter, no listener: mediated calls fail
with ENOSYS). contrib/criu/probe-seccomp shows the same after a real
`criu dump` / `criu restore`.

The workload is a shell loop under pods.seccomp's filter calling kill(1, 0)
(mediated: pid 1 is not itself) once a round and logging the error; the
stand-in supervisor answers every notification with EPERM.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time

import pytest

from kernel.libc import pidfd_getfd
from pods import notify, seccomp, seccomp_rearm

LOOP = 'i=0; while :; do i=$((i+1)); echo "$i $(kill -0 1 2>&1)"; sleep 0.05; done'
EPERM_TEXT, ENOSYS_TEXT = "Operation not permitted", "Function not implemented"


class Supervisor:
    """Answers EPERM to every notification on its listeners (a thread)."""

    def __init__(self):
        self.listeners: list[int] = []
        self.answered = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            fds = list(self.listeners)
            try:
                r = select.select(fds, [], [], 0.02)[0] if fds else time.sleep(0.02) or []
            except OSError:
                continue
            for fd in r:
                try:
                    n = notify.recv(fd)
                    if notify.respond(fd, n.id, error=1):
                        self.answered += 1
                except OSError:
                    pass

    def drop(self, fd):
        self.listeners.remove(fd)
        time.sleep(0.05)           # not in the thread's select any more
        os.close(fd)

    def close(self):
        self._stop.set()
        self._t.join()
        for fd in self.listeners:
            os.close(fd)


@pytest.fixture
def loop(tmp_path):
    """(pid, log path, supervisor): the loop under the filter, supervised."""
    if os.geteuid() != 0:
        pytest.fail("needs root (ptrace of another user's process, pidfd_getfd)")
    log = tmp_path / "loop.log"
    r, w = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            lfd = seccomp.install(notify=True)
            os.write(w, str(lfd).encode())
            os.read(r2, 1)
            os.closerange(3, 1024)
            os.execv("/bin/sh", ["sh", "-c", LOOP])
        finally:
            os._exit(127)
    os.close(w)
    os.close(r2)
    sup = Supervisor()
    pidfd = notify.pidfd_open(pid)
    try:
        sup.listeners.append(pidfd_getfd(pidfd, int(os.read(r, 16))))
    finally:
        os.close(pidfd)
    os.write(w2, b"x")
    os.close(r)
    os.close(w2)
    try:
        yield pid, log, sup
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        sup.close()


def rounds(log):
    out = []
    for line in log.read_text().splitlines():
        n, _, text = line.partition(" ")
        if n.isdigit():
            out.append((int(n), text))
    return out


def wait_for(log, text, after=0, timeout=10.0):
    """The first round past ``after`` whose line contains text."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for n, t in rounds(log):
            if n > after and text in t:
                return n
        time.sleep(0.02)
    pytest.fail(f"no round after {after} says {text!r} within {timeout} s; "
                f"last lines: {log.read_text().splitlines()[-3:]}")


def status(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return None


def test_lost_listener_gives_enosys_and_rearm_brings_mediation_back(loop):
    pid, log, sup = loop
    n1 = wait_for(log, EPERM_TEXT)                 # mediated by our supervisor
    sup.drop(sup.listeners[0])                     # what a restore leaves
    n2 = wait_for(log, ENOSYS_TEXT, after=n1)      # the kernel's answer, never "allowed"
    assert status(pid, "Seccomp_filters") == "1"

    t = time.monotonic()
    listener = seccomp_rearm.rearm(pid)
    took = time.monotonic() - t
    sup.listeners.append(listener)
    n3 = wait_for(log, EPERM_TEXT, after=n2)
    assert n3 > n2 > n1                            # the same loop went on
    assert status(pid, "Seccomp_filters") == "2"   # the old filter + ours
    assert status(pid, "TracerPid") == "0"         # not left traced
    assert took < 1.0
    # The process keeps no copy of the new listener: only fds 0-2 (and the
    # shell's own), none of them a seccomp listener.
    for fd in os.listdir(f"/proc/{pid}/fd"):
        assert "seccomp notify" not in os.readlink(f"/proc/{pid}/fd/{fd}")


def test_rearm_of_stopped_tree_leaves_no_window(loop):
    """The way for a restore: processes stopped (CRIU --leave-stopped), each
    re-armed, then continued: no mediated call ever answers ENOSYS."""
    pid, log, sup = loop
    wait_for(log, EPERM_TEXT)
    os.killpg(pid, signal.SIGSTOP)
    end = time.monotonic() + 5
    while status(pid, "State")[0] != "T" and time.monotonic() < end:
        time.sleep(0.01)
    sup.drop(sup.listeners[0])
    last = max(n for n, _ in rounds(log))
    group = [int(d) for d in os.listdir("/proc") if d.isdigit() and _pgid(int(d)) == pid]
    assert pid in group
    for p in group:
        sup.listeners.append(seccomp_rearm.rearm(p))
        # Detached, it re-enters its group stop in the kernel (on its way back
        # to user space it meets the stop first): R for an instant, then T.
        end = time.monotonic() + 2
        while status(p, "State")[0] != "T" and time.monotonic() < end:
            time.sleep(0.005)
        assert status(p, "State")[0] == "T", "a stopped process must stay stopped"
    os.killpg(pid, signal.SIGCONT)
    n = wait_for(log, EPERM_TEXT, after=last + 3)
    assert all(ENOSYS_TEXT not in t for k, t in rounds(log) if last < k <= n)


def test_rearm_refused_while_the_old_listener_lives(loop):
    """The kernel allows one listener per filter chain: while the old one is
    open, re-arming fails clearly and changes nothing."""
    pid, log, sup = loop
    n1 = wait_for(log, EPERM_TEXT)
    with pytest.raises(seccomp_rearm.RearmError, match="an older filter still has a listener"):
        seccomp_rearm.rearm(pid)
    assert status(pid, "Seccomp_filters") == "1"
    assert status(pid, "TracerPid") == "0"
    wait_for(log, EPERM_TEXT, after=n1 + 2)        # still running, still mediated


def _pgid(pid):
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[2])
    except (OSError, ValueError, IndexError):
        return None
