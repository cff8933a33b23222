"""Shared tools for the PeaFS attack tests: attack programs run as pod processes.

An attack is a Python snippet run by /usr/bin/python3 (a pod user cannot
traverse /root, where the venv's interpreter lives) through the mount's
``.run`` (``peafs run``: pod user in a user namespace, member of a pea). The
snippet gets a prelude that:

- with ``enter=True`` (the default), puts the process where a pod process is:
  its own mount namespace whose root is the PeaFS mount, the host tree
  detached (pivot_root + MNT_DETACH, as pods/ does). Only then do symlinks,
  ".." and chroot tests mean anything: a process whose root is the host
  follows a pod-planted symlink to /etc/passwd in the *kernel*, legitimately,
  without PeaFS being involved. Inside, the staging root is "/".
- defines ``attempt(fn, *args)`` -> "OK" or the errno name, and
  ``report(obj)`` which hands a JSON object back to the test.

Every module the snippet needs is imported before the pivot: afterwards the
host's /usr/lib/python3 is gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PY = "/usr/bin/python3"
MARK = "@@ATTACK-RESULT@@"

PRELUDE = r'''
import os, sys, json, errno, ctypes, time, threading, socket, stat, select
libc = ctypes.CDLL(None, use_errno=True)
MNT = sys.argv[1]
ENTER = sys.argv[2] == "1"
ARGS = sys.argv[3:]

def _check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")

def enter_pod():
    """Make the PeaFS mount this process's / (a pod's view), host detached."""
    CLONE_NEWNS, MS_REC, MS_PRIVATE, MS_BIND, MNT_DETACH = 0x20000, 0x4000, 1 << 18, 0x1000, 2
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    # Mounts inherited from a more privileged namespace are locked and
    # pivot_root refuses a locked new root (EINVAL): bind the mount onto
    # itself to get an unlocked copy of it.
    m = MNT.encode()
    _check(libc.mount(m, m, None, MS_BIND | MS_REC, None), "bind mount")
    os.chdir(MNT)
    _check(libc.syscall(155, b".", b"."), "pivot_root")  # 155 = SYS_pivot_root (x86_64)
    _check(libc.umount2(b".", MNT_DETACH), "detach old root")
    os.chdir("/")

def attempt(fn, *a, **kw):
    try:
        fn(*a, **kw)
        return "OK"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def read_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 16).decode("utf-8", "replace")
    finally:
        os.close(fd)

def try_read(path):
    """The content of path, or the errno name."""
    try:
        return read_file(path)
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def report(obj):
    print("@@ATTACK-RESULT@@" + json.dumps(obj), flush=True)

if ENTER:
    enter_pod()
'''


def py_cmd(mountpoint: Path, body: str, *args, enter: bool = True) -> list[str]:
    return [PY, "-I", "-S", "-c", PRELUDE + body, str(mountpoint), "1" if enter else "0",
            *map(str, args)]


def results(proc: subprocess.CompletedProcess) -> list:
    out = proc.stdout if isinstance(proc.stdout, str) else proc.stdout.decode()
    return [json.loads(line[len(MARK):]) for line in out.splitlines() if line.startswith(MARK)]


def run_py(m, pea: str, body: str, *args, user: int = 0, enter: bool = True,
           timeout: float = 60, check: bool = True):
    """Run an attack snippet as a pod process in ``pea``; return its one report."""
    proc = m.run(py_cmd(m.mountpoint, body, *args, enter=enter), pea, user=user,
                 capture_output=True, text=True, timeout=timeout)
    got = results(proc)
    if check and (proc.returncode != 0 or len(got) != 1):
        raise AssertionError(
            f"attack snippet in pea {pea} exited {proc.returncode} with reports {got}\n"
            f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}")
    return got[0] if got else None


def peafs_cli() -> list[str]:
    return [sys.executable, "-m", "peafs"]


def popen_in_pea(m, pea: str, cmd: list[str], user: int = 0, **kw) -> subprocess.Popen:
    """A long-lived pod process (``.run`` waits for its command to end)."""
    if hasattr(m, "env"):
        kw.setdefault("env", m.env())
    return subprocess.Popen(
        peafs_cli() + ["run", str(m.mountpoint), "--pea", pea, "--user", str(user), "--"] + cmd,
        **kw)


def policy(peas: str) -> str:
    """The pea part of a policy; the fixture supplies [pod]."""
    return peas


def host_tree(top: Path) -> dict:
    """Every file under ``top`` with its content (for "nothing changed outside")."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            if p.is_symlink():
                out[str(p)] = "->" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = p.read_bytes()
            else:
                out[str(p)] = "dir"
    return out


def make_outside(tmp_path: Path) -> tuple[Path, str]:
    """A host directory next to the staging dir holding a canary: what no pod
    process may read, and (world-writable) where no write may land."""
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o777)
    canary = f"CANARY-{os.getpid()}-{os.urandom(4).hex()}"
    (outside / "secret").write_text(canary)
    (outside / "secret").chmod(0o666)
    return outside, canary
