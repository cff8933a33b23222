"""Shared helpers for the PeaFS tests: snippets run as pod processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

PRELUDE = r'''
import os, sys, json, errno, stat, socket, ctypes
def E(fn, *a, **kw):
    """"OK" or the errno name of what fn raised."""
    try:
        fn(*a, **kw)
        return "OK"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def opens(path, flags, mode=0o644):
    os.close(os.open(path, flags, mode))
def read(path):
    with open(path, "rb") as f:
        return f.read().decode("latin-1")
def write(path, data=b"x"):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data); os.close(fd)
def listdir(path):
    os.listdir(path)
def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    finally:
        s.close()
def pea():
    return open("/proc/self/cgroup").read().split("0::", 1)[1].strip().rsplit("/", 1)[1]
'''


def run_snippet(m, pea: str, body: str, user: int = 0, *args, check: bool = True):
    """Run PRELUDE + body in ``pea`` (cwd: the mount point); ``body`` sets
    ``out``, which comes back as a JSON value."""
    code = PRELUDE + body + "\nprint('@@' + json.dumps(out, sort_keys=True))\n"
    proc = m.py(code, pea, user, *args)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("@@")]
    if check and (proc.returncode != 0 or len(lines) != 1):
        raise AssertionError(f"snippet in pea {pea} exited {proc.returncode}:\n"
                             f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[0][2:]) if lines else None


def tree(root, spec: dict) -> None:
    """Make files ("name": "content"), dirs ("name/": {...}) as host root."""
    for name, val in spec.items():
        p = root / name.rstrip("/")
        if name.endswith("/"):
            p.mkdir(exist_ok=True)
            tree(p, val)
        else:
            p.write_text(val)


def host_errno(fn, *a) -> str:
    import errno as _e
    try:
        fn(*a)
        return "OK"
    except OSError as e:
        return _e.errorcode.get(e.errno, str(e.errno))


def in_subprocess_as_host(code: str, preexec=None, timeout=30) -> dict:
    """Run code as host root (no user namespace), optionally in a pea."""
    proc = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c",
                           PRELUDE + code + "\nprint('@@' + json.dumps(out, sort_keys=True))\n"],
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec,
                          env={**os.environ})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("@@")]
    assert proc.returncode == 0 and len(lines) == 1, proc.stdout + proc.stderr
    return json.loads(lines[0][2:])


def _traced(pid: int) -> bool:
    """Whether strace has attached to every thread of ``pid``."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        if "\nTracerPid:\t0\n" in status:
            return False
    return True


def daemon_calls(m, syscall: str, pea: str, body: str, tmp_path,
                 containing: str = "") -> tuple[int, object]:
    """Run ``body`` in ``pea`` with the daemon under strace; return how many
    ``syscall`` calls the daemon made meanwhile (only those whose line holds
    ``containing``, if given), and what the snippet answered (the caches'
    tests: what reached the staging directory)."""
    out = tmp_path / f"strace-{syscall}.out"
    pid = m.daemon_pid()
    assert pid, "no daemon pid"
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", f"trace={syscall}",
                               "-o", str(out), "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not _traced(pid):
            assert tracer.poll() is None, tracer.stderr.read().decode()
            assert time.monotonic() < deadline, "strace did not attach"
            time.sleep(0.05)
        answer = run_snippet(m, pea, body)
    finally:
        tracer.send_signal(signal.SIGINT)
        try:
            tracer.wait(timeout=20)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait()
    calls = [line for line in out.read_text().splitlines()
             if f"{syscall}(" in line and containing in line]
    return len(calls), answer
