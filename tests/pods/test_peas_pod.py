"""Peas beyond files in a real pod (`pod start` / `pod exec`,
daemon and tagger with pods.seccomp and pods.supervisor): two peas, every
`pod exec` with its own filter chain and listener, one supervisor per pod.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from pod_support import POD

PEAS = '''
[pea.main.files]
"/" = "rwx"

[pea.main.net]
connect = true
bind = [8080]

[pea.other.files]
"/" = "rwx"

[pea.other.net]
connect = false
bind = [8081]
'''


@pytest.fixture(scope="module")
def pod(pods):
    return pods.start(peas=PEAS)


def _ps(pod):
    return json.loads(pod.cli("ps", pod.name, "--json").stdout)


class Sleeper:
    """`sleep` started in a pea through `pod exec`, in the background."""

    def __init__(self, pod, pea, tag):
        self.pod = pod
        self.cmd = f"sleep {tag}"
        self.proc = subprocess.Popen(POD + ["exec", pod.name, "--pea", pea, "--", "sleep", str(tag)],
                                     env=pod.factory.env(), stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rows = [r for r in _ps(pod) if r["command"] == self.cmd]
            if rows:
                self.vpid, self.host = rows[0]["vpid"], rows[0]["pid"]
                assert rows[0]["pea"] == pea
                return
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"{self.cmd} never appeared in pod ps")

    def running(self) -> bool:
        return any(r["command"] == self.cmd for r in _ps(self.pod))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


def run_py(pod, code, pea):
    r = pod.py(code, pea=pea)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


KILL = "import os,sys\ntry:\n os.kill(int(sys.argv[1]), int(sys.argv[2])); print(0)\n" \
       "except OSError as e: print(-e.errno)"


def test_signals_across_peas_are_refused_in_a_real_pod(pod):
    s = Sleeper(pod, "other", 3001)
    try:
        r = pod.exec("/usr/bin/python3", "-c", KILL, str(s.vpid), "9", pea="main")
        assert r.stdout.strip() == "-1", r.stderr        # EPERM
        assert s.running()
        r = pod.exec("/usr/bin/python3", "-c", KILL, str(s.vpid), "0", pea="other")
        assert r.stdout.strip() == "0", r.stderr
    finally:
        s.stop()


def test_kill_minus_one_spares_the_other_pea_in_a_real_pod(pod):
    mine = Sleeper(pod, "main", 3002)
    theirs = Sleeper(pod, "other", 3003)
    try:
        r = pod.exec("/usr/bin/python3", "-c", KILL, "-1", "9", pea="main")
        assert r.stdout.strip() == "0", r.stderr
        deadline = time.monotonic() + 10
        while mine.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not mine.running()
        assert theirs.running()
        assert pod.exec("true").returncode == 0          # the pod's init survived
    finally:
        mine.stop()
        theirs.stop()


HOST_CALLS = r'''
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
out = []
for name, nr, args in [("reboot", 169, (0, 0, 0, 0)), ("bpf", 321, (0, 0, 0)),
                       ("init_module", 175, (0, 0, 0)), ("io_uring_setup", 425, (1, 0)),
                       ("keyctl", 250, (0, 0)), ("settimeofday", 164, (0, 0)),
                       ("unshare_user", 272, (0x10000000,)), ("perf_event_open", 298, (0, 0, -1, -1, 0))]:
    rc = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    out.append(f"{name}={errno.errorcode.get(ctypes.get_errno(), '?') if rc < 0 else rc}")
print(" ".join(out))
'''


def test_host_calls_are_refused_in_a_real_pod(pod):
    out = run_py(pod, HOST_CALLS, "main")
    assert out == ("reboot=EPERM bpf=EPERM init_module=EPERM io_uring_setup=EPERM "
                   "keyctl=EPERM settimeofday=EPERM unshare_user=EPERM perf_event_open=EPERM")


NET = r'''
import socket, sys
def bind(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port)); return "ok"
    except OSError as e:
        return -e.errno
    finally:
        s.close()
def connect(port):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port)); return "ok"
    except OSError as e:
        return -e.errno
    finally:
        s.close()
first = bind(int(sys.argv[1]))
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(1)
print(first, bind(9999), connect(int(sys.argv[1])))
'''


def test_network_rules_in_a_real_pod(pod):
    # main: bind [8080], connect = true
    r = pod.exec("/usr/bin/python3", "-c", NET, "8080", pea="main")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", "-13", "ok"]
    # other: bind [8081], connect = false (its own listener included)
    r = pod.exec("/usr/bin/python3", "-c", NET, "8081", pea="other")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", "-13", "-13"]
    # other may not bind main's port
    r = pod.exec("/usr/bin/python3", "-c", NET, "8080", pea="other")
    assert r.returncode != 0 and "PermissionError" in r.stderr
