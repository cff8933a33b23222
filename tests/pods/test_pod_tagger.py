"""The tagger, the pod's fork server (pods/tagger.py), attacked.

One tagger per pod forks a monitor for every pod process (`pod exec`,
services). It is on the host, outside every pod namespace, host root, and
holds a socket to the daemon and a pidfd of each running monitor:

- no descriptor of the tagger reaches a monitor (step B0), let alone a pod
  process (which holds 0-2 only);
- a pod process cannot name it: kill, ptrace and pidfd_open of its pid fail
  ESRCH (it is not in the pod's pid namespace);
- killed from the host (SIGKILL), it is replaced: running pod processes go
  on, the next `pod exec` works, nothing is left behind;
- it is single-threaded when it forks, and reaps its monitors: 20 `pod exec`
  at once each get their own output and status, and no zombie stays.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from kernel import cgroup
from pod_support import POD, PY


def _fd_targets(pid: int) -> dict[int, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return out


def _pidfd_targets(pid: int) -> set[int]:
    """The pids of the pidfds ``pid`` holds (fdinfo's Pid: line)."""
    pids = set()
    for fd, target in _fd_targets(pid).items():
        if target == "anon_inode:[pidfd]":
            try:
                info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
            except OSError:
                continue
            for line in info.splitlines():
                if line.startswith("Pid:"):
                    pids.add(int(line.split()[1]))
    return pids


def _status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if _status(int(d)).get("PPid") == str(pid):
                    kids.append(int(d))
            except OSError:
                pass
    return kids


def _pod_pid_of(pod, marker: str, timeout=30) -> int:
    """The host pid of the pod process whose command line has ``marker``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in cgroup.pids_in(pod.name):
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
            except OSError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"no pod process {marker}")


def _exec_bg(pod, *cmd, **kw) -> subprocess.Popen:
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([*POD, "exec", pod.name, "--", *cmd], env=pod.factory.env(),
                            text=True, **kw)


HOLD = "import os, sys, time; print(sorted(os.listdir('/proc/self/fd'), key=int), flush=True); " \
       "sys.stdin.read(); print('{}')"


def test_no_descriptor_of_the_tagger_reaches_a_monitor_or_a_pod_process(shared_pod):
    pod = shared_pod
    tagger = pod.state()["tagger_pid"]
    # A first pod process keeps running: meanwhile the tagger holds a pidfd
    # of its monitor, besides its socket to the daemon.
    first = _exec_bg(pod, PY, "-c", HOLD.format("first"), stdin=subprocess.PIPE)
    second = None
    try:
        assert first.stdout.readline().strip() == "['0', '1', '2', '3']"
        first_pid = _pod_pid_of(pod, "first")
        first_monitor = int(_status(first_pid)["PPid"])
        assert _status(first_monitor)["PPid"] == str(tagger)
        assert first_monitor in _pidfd_targets(tagger)
        tagger_fds = _fd_targets(tagger)
        sockets = {t for t in tagger_fds.values() if t.startswith("socket:")}
        assert sockets, tagger_fds

        second = _exec_bg(pod, PY, "-c", HOLD.format("second"), stdin=subprocess.PIPE)
        # The pod process: 0-2 (and 3, the listing's own descriptor).
        assert second.stdout.readline().strip() == "['0', '1', '2', '3']"
        pid = _pod_pid_of(pod, "second")
        monitor = int(_status(pid)["PPid"])
        assert _status(monitor)["PPid"] == str(tagger)
        for who in (pid, monitor):
            fds = _fd_targets(who)
            assert not sockets & set(fds.values()), (who, fds, tagger_fds)
            assert first_monitor not in _pidfd_targets(who), (who, fds)
        # Once its child runs, the monitor holds its stdio, its socket to the
        # daemon and its child's pidfd: nothing else (pid 1's pidfd and the
        # pea's IPC namespace, which its request brought, are closed at B1).
        fds = _fd_targets(monitor)
        assert len(fds) == 5 and _pidfd_targets(monitor) == {pid}, fds
        for p in (first, second):
            p.stdin.close()
        assert first.wait(timeout=30) == 0 and second.wait(timeout=30) == 0
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.stdin.close()
                p.kill()
                p.wait()


SIGNAL_TAGGER = r'''
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
t = int(sys.argv[1])
def E(fn):
    try:
        r = fn()
    except OSError as e:
        return errno.errorcode[e.errno]
    if isinstance(r, int) and r < 0:
        return errno.errorcode[ctypes.get_errno()]
    return "OK"
print(json.dumps({
    "visible": os.path.exists(f"/proc/{t}"),
    "kill0": E(lambda: os.kill(t, 0)),
    "kill": E(lambda: os.kill(t, 9)),
    "ptrace": E(lambda: libc.ptrace(16, t, None, None)),        # PTRACE_ATTACH
    "seize": E(lambda: libc.ptrace(0x4206, t, None, None)),     # PTRACE_SEIZE
    "pidfd_open": E(lambda: libc.syscall(434, t, 0)),
    "pgid": E(lambda: os.killpg(t, 9)),
}))
'''


def test_a_pod_process_cannot_signal_or_ptrace_the_tagger(shared_pod):
    tagger = shared_pod.state()["tagger_pid"]
    r = shared_pod.exec(PY, "-c", SIGNAL_TAGGER, str(tagger))
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen == {"visible": False, "kill0": "ESRCH", "kill": "ESRCH", "ptrace": "ESRCH",
                    "seize": "ESRCH", "pidfd_open": "ESRCH", "pgid": "ESRCH"}, seen
    assert Path(f"/proc/{tagger}").exists() and shared_pod.state()["tagger_pid"] == tagger
    assert shared_pod.exec("true").returncode == 0


def _wait_new_tagger(pod, old: int, timeout=30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = pod.state().get("tagger_pid")
        if new != old and Path(f"/proc/{new}").exists():
            return new
        time.sleep(0.02)
    raise AssertionError("no new tagger")


def test_a_killed_tagger_is_replaced_and_leaves_nothing(pod_factory):
    pod = pod_factory.start()
    st = pod.state()
    taggers = [st["tagger_pid"]]
    # A pod process running while its tagger dies: its monitor goes on.
    running = _exec_bg(pod, "/bin/sh", "-c", "read x; echo still here; exit 7",
                       stdin=subprocess.PIPE)
    _pod_pid_of(pod, "still here")
    os.kill(taggers[0], signal.SIGKILL)
    new = _wait_new_tagger(pod, taggers[0])
    taggers.append(new)
    assert not Path(f"/proc/{taggers[0]}").exists()          # reaped, no zombie
    assert _status(new)["PPid"] == str(st["daemon_pid"])
    r = pod.exec("/bin/echo", "hi", timeout=30)
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
    running.stdin.write("go\n")
    running.stdin.close()
    assert running.wait(timeout=30) == 7 and running.stdout.read() == "still here\n"
    # Killed right before each exec (the daemon may not have noticed yet):
    # every exec works (the request is sent again to a new tagger) or fails
    # with one line and a non-zero status; none hangs.
    for _ in range(5):
        old = pod.state()["tagger_pid"]
        os.kill(old, signal.SIGKILL)
        r = pod.exec("/bin/echo", "again", timeout=60)
        assert (r.returncode, r.stdout) == (0, "again\n") or (
            r.returncode != 0 and r.stderr.count("\n") == 1 and "tagger" in r.stderr), r
        taggers.append(_wait_new_tagger(pod, old))
    assert pod.stop().returncode == 0
    for pid in taggers:
        assert not Path(f"/proc/{pid}").exists(), pid
    log = (pod.run_dir / "pods" / pod.name)
    assert not log.exists()


def test_concurrent_execs_each_get_their_own_output_and_status(shared_pod):
    pod = shared_pod
    tagger = pod.state()["tagger_pid"]
    procs = [_exec_bg(pod, "/bin/sh", "-c", f"echo out{i}; echo err{i} >&2; exit {i}")
             for i in range(20)]
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=120)
        assert (p.returncode, out, err) == (i, f"out{i}\n", f"err{i}\n")
    # The tagger: still the same, single-threaded, its monitors reaped.
    assert pod.state()["tagger_pid"] == tagger
    assert _status(tagger)["Threads"] == "1"
    deadline = time.monotonic() + 10
    while _children(tagger) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _children(tagger) == []
