"""The `pod` command's C front (pods/pod_front.c) against the Python client.

The front runs `pod exec` itself only in the plain case and hands every
other use to pods.cli before it has sent anything. These tests hold it to
three things:

- which path it takes: a copy built with an interpreter that does not
  exist runs the fast cases and fails, naming that interpreter, on every
  other one;
- the same result as the Python client (status, stdout, stderr), on a
  real pod and against a scripted daemon that sends what a real one never
  does (malformed JSON, controls and non-UTF-8 escapes in an error's text,
  descriptors);
- the same request: the scripted daemon compares what each client sent.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import pty
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pod_support import POD, POD_PYTHON, REPO

NO_PYTHON = "/nonexistent/python"


@pytest.fixture(scope="module")
def front_without_python(tmp_path_factory) -> str:
    """The front built with an interpreter that is not there: any case it
    hands to Python fails with 'cannot run /nonexistent/python'."""
    out = tmp_path_factory.mktemp("front") / "pod"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", f'-DPOD_PYTHON="{NO_PYTHON}"', "-o",
                    str(out), str(REPO / "pods" / "pod_front.c")], check=True, timeout=120)
    return str(out)


def _run(cmd, env, input=None, stdin=None, timeout=60) -> subprocess.CompletedProcess:
    if input is None and stdin is None:
        stdin = subprocess.DEVNULL
    return subprocess.run(cmd, env=env, input=input, stdin=stdin, capture_output=True,
                          timeout=timeout)


HANDED_TO_PYTHON = f"pod: cannot run {NO_PYTHON}: No such file or directory\n".encode()


# ------------------------------------------------------------ which path

def test_the_plain_exec_never_starts_python(shared_pod, front_without_python):
    env = shared_pod.factory.env()
    name = shared_pod.name
    for words, out in [
        (["exec", name, "true"], b""),
        (["exec", name, "--", "echo", "a b"], b"a b\n"),
        (["exec", "--", name, "echo", "x"], b"x\n"),
        (["exec", "--pea", "other", name, "cat", "/proc/self/cgroup"], b"0::/other\n"),
        (["exec", name, "--pea", "main", "--pea", "other", "cat", "/proc/self/cgroup"],
         b"0::/other\n"),
        (["exec", name, "--user", "007", "id", "-u"], b"7\n"),
        (["exec", name, "echo", "--help", "-x"], b"--help -x\n"),   # the command's words
    ]:
        r = _run([front_without_python, *words], env)
        assert (r.returncode, r.stderr) == (0, b""), (words, r)
        assert r.stdout.splitlines()[-1:] == out.splitlines()[-1:], (words, r)


def test_everything_else_is_handed_to_python_before_anything_is_sent(
        shared_pod, front_without_python, tmp_path):
    env = shared_pod.factory.env()
    name = shared_pod.name
    marker = tmp_path / "ran"
    touch = ["touch", str(marker)]     # would leave a trace on the host if it ran
    cases = [
        ["status", name],
        ["exec", "--help"],
        ["exec", name],                                    # no command
        ["exec", name, "--pea=other", *touch],             # argparse's form
        ["exec", name, "--pea", "-x", *touch],             # a value argparse refuses
        ["exec", name, "--user", "root", *touch],          # a name: /etc/passwd
        ["exec", name, "--user", "", *touch],
        ["exec", name, "--bogus", *touch],
        ["exec", "Bad_Name", *touch],
        ["exec", "../" + name, *touch],
        ["exec", "nopod", *touch],                          # nothing listens
        ["exec", name, "echo", b"\xff\xfe"],                  # not UTF-8
    ]
    for words in cases:
        r = _run([front_without_python, *words], env)
        assert (r.returncode, r.stdout, r.stderr) == (126, b"", HANDED_TO_PYTHON), (words, r)
    # A terminal on stdin: the Python client's pty, raw mode and window size.
    master, slave = pty.openpty()
    try:
        r = _run([front_without_python, "exec", name, "true"], env, stdin=slave)
    finally:
        os.close(slave)
        os.close(master)
    assert (r.returncode, r.stderr) == (126, HANDED_TO_PYTHON)
    assert not marker.exists()


# ------------------------------------------- the same result, on a real pod

def test_front_and_python_client_agree_on_a_real_pod(shared_pod):
    env = shared_pod.factory.env()
    name = shared_pod.name
    hostile = "no\x1b]52;c;aGk=\x07such\n\x9b2J"       # OSC 52, a newline, a C1 CSI
    cases = [
        (["true"], None),
        (["false"], None),
        (["/bin/sh", "-c", "echo out; echo err >&2; exit 7"], None),
        (["/bin/sh", "-c", "kill -TERM $$"], None),
        (["/no/such/program"], None),
        ([hostile], None),
        (["é-ü-😀"], None),
        (["/bin/sh", "-c", "cat; echo \"$0\"", "q\"u\\o\tte"], b"stdin data\n"),
        (["--pea", "nosuch", "true"], None),
        (["--user", "1000", "id", "-u"], None),
    ]
    for cmd, data in cases:
        front = _run(POD + ["exec", name, *cmd], env, input=data)
        python = _run(POD_PYTHON + ["exec", name, *cmd], env, input=data)
        assert (front.returncode, front.stdout, front.stderr) == \
            (python.returncode, python.stdout, python.stderr), cmd
    r = _run(POD + ["exec", name, hostile], env)
    assert r.returncode == 127
    assert r.stderr == b"pod: exec no\\x1b]52;c;aGk=\\x07such\\n\\x9b2J: " \
                       b"No such file or directory\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1])
def test_signals_reach_the_command(shared_pod, sig):
    """The front blocks the forwarded signals and reads them from a signalfd:
    each one reaches the command in the pod, and the front does not die of it."""
    script = (f"trap 'echo got; exit 3' {sig.name.removeprefix('SIG')}; echo ready; "
              "i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; exit 9")
    p = subprocess.Popen(POD + ["exec", shared_pod.name, "/bin/sh", "-c", script],
                         env=shared_pod.factory.env(), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        p.send_signal(sig)
        assert p.wait(timeout=30) == 3
        assert p.stdout.read() == b"got\n"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()


# ---------------------------------------------- against a scripted daemon

class ScriptedDaemon:
    """A daemon that answers an exec with the messages it is given: the
    control socket and the lock (held, as the real daemon holds it) of pod
    ``name`` in a run directory of its own. Each connection's request is
    kept, with the number of descriptors it carried."""

    def __init__(self, run: Path, name: str):
        self.dir = run / "pods" / name
        self.dir.mkdir(parents=True)
        self.lock = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(str(self.dir / "control"))
        self.sock.listen(4)
        self.sock.settimeout(30)
        self.requests: list[tuple[dict, int]] = []

    def serve_one(self, replies: list) -> threading.Thread:
        def serve():
            conn, _ = self.sock.accept()
            with conn:
                data, anc, _, _ = conn.recvmsg(1 << 20, socket.CMSG_SPACE(8 * 4))
                fds = array.array("i")
                for level, kind, blob in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds.frombytes(blob[:len(blob) - len(blob) % fds.itemsize])
                for fd in fds:
                    os.close(fd)
                self.requests.append((json.loads(data), len(fds)))
                for reply in replies:
                    if isinstance(reply, tuple):          # (bytes, send a descriptor)
                        payload, with_fd = reply
                        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                array.array("i", [0]))] if with_fd else []
                        conn.sendmsg([payload], anc)
                    else:
                        conn.send(reply if isinstance(reply, bytes) else json.dumps(reply).encode())
                    time.sleep(0.01)
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        return t

    def close(self):
        self.sock.close()
        os.close(self.lock)


SCRIPTS = {
    "exit": [{"started": 4242, "vpid": 7}, {"exit": 5, "signal": None}],
    "exit above 255": [{"exit": 300, "signal": None}],
    "hostile error": [{"error": "bad \x1b]52;c;aGk=\x07 \n line \udcff \ud800 \x85 😀 \\ \"q\"",
                       "status": 9}],
    "error without status": [{"error": "no status"}],
    "closed at once": [],
    "closed after started": [{"started": 1, "vpid": 2}],
    "junk first": [b"not json", b"[1, 2]", b"{\"exit\": ", (b"{\"a\": 1}", True),
                   {"nested": {"a": [1, {"b": "]}\\\""}], "c": None}, "exit": 4}],
    "escapes in keys": [b'{"ex\\u0069t": 6}'],
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_front_and_python_client_agree_against_a_scripted_daemon(tmp_path, script):
    run = tmp_path / "run"
    daemon = ScriptedDaemon(run, "scripted")
    env = dict(os.environ, PEAPOD_RUN=str(run), PYTHONPATH=str(REPO), TERM="xterm-256color")
    argv0 = "c\x1bmd"
    words = ["exec", "scripted", "--user", "0042", "--pea", "p\"e\\a", "--", argv0, "a\tb",
             "é😀", ""]
    results = []
    try:
        for client in (POD, POD_PYTHON):
            t = daemon.serve_one(SCRIPTS[script])
            r = _run(client + words, env, timeout=30)
            t.join(timeout=30)
            results.append((r.returncode, r.stdout, r.stderr))
    finally:
        daemon.close()
    assert results[0] == results[1], results
    # The same request from both, with stdin, stdout and stderr.
    (front_req, front_fds), (py_req, py_fds) = daemon.requests
    assert front_req == py_req and front_fds == py_fds == 3
    assert front_req == {"op": "exec", "argv": [argv0, "a\tb", "é😀", ""], "pea": "p\"e\\a",
                         "uid": 42, "tty": False, "winsize": None, "term": "xterm-256color"}
    if script == "hostile error":
        assert results[0] == (9, b"", "pod: exec c\\x1bmd: bad \\x1b]52;c;aGk=\\x07 \\n line "
                                      "\\xff \\ud800 \\x85 😀 \\ \"q\"\n".encode())
    if script.startswith("closed"):
        assert results[0] == (125, b"", b"pod: pod scripted: the daemon closed the connection\n")


def test_a_closed_stderr_does_not_change_the_status(shared_pod):
    """The error of a command not found, written to a pipe nobody reads:
    both clients exit 127, neither dies of SIGPIPE."""
    env = shared_pod.factory.env()
    for client in (POD, POD_PYTHON):
        r, w = os.pipe()
        os.close(r)
        try:
            p = subprocess.run(client + ["exec", shared_pod.name, "/no/such/program"], env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=w,
                               timeout=60)
        finally:
            os.close(w)
        assert p.returncode == 127, (client, p.returncode)
