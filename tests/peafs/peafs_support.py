"""PeaFS test helpers: the mount factory and small functions the tests import.

They live here, not in conftest.py, because tests/pods has a conftest.py too:
both are imported as the module ``conftest``, and whichever was loaded last
answers a ``from conftest import ...`` made while a test runs. The fixtures
that use these are in conftest.py (see its docstring).
"""

from __future__ import annotations

import json
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kernel import cgroup

PY = "/usr/bin/python3"
PEAFS = [sys.executable, "-m", "peafs"]
DEFAULT_MAP = "[[0, 200000, 65536]]"
HOST_BASE = 200000


def peafs_cmd(*args) -> list[str]:
    return PEAFS + [str(a) for a in args]


def run_in_pea(pod: str, pea: str):
    def preexec():
        cgroup.join(os.getpid(), pod, pea)
    return preexec


def _fill_policy(text: str, name: str, root: Path) -> str:
    pod_lines = []
    if not re.search(r"^\s*name\s*=", _pod_table(text), re.M):
        pod_lines.append(f'name = "{name}"')
    if not re.search(r"^\s*root\s*=", _pod_table(text), re.M):
        pod_lines.append(f"root = {json.dumps(str(root))}")
    if not re.search(r"^\s*uid_map\s*=", _pod_table(text), re.M):
        pod_lines.append(f"uid_map = {DEFAULT_MAP}")
    if not re.search(r"^\s*gid_map\s*=", _pod_table(text), re.M):
        pod_lines.append(f"gid_map = {DEFAULT_MAP}")
    if not re.search(r"^\s*default_pea\s*=", _pod_table(text), re.M):
        first = re.search(r"^\s*\[pea\.([A-Za-z0-9_-]+)", text, re.M)
        if first:
            pod_lines.append(f'default_pea = "{first.group(1)}"')
    block = "\n".join(pod_lines) + "\n"
    if re.search(r"^\s*\[pod\]\s*$", text, re.M):
        return re.sub(r"^\s*\[pod\]\s*$", lambda m: "[pod]\n" + block.rstrip("\n"), text,
                      count=1, flags=re.M)
    return "[pod]\n" + block + "\n" + text


def _pod_table(text: str) -> str:
    m = re.search(r"^\s*\[pod\]\s*$(.*?)(?=^\s*\[|\Z)", text, re.M | re.S)
    return m.group(1) if m else ""


class PeaMount:
    def __init__(self, pod: str, root: Path, mountpoint: Path, policy_path: Path,
                 run_dir: Path):
        self.pod = pod
        self.root = root
        self.mountpoint = mountpoint
        self.policy_path = policy_path
        self.run_dir = run_dir
        self.state_dir = run_dir / "peafs" / pod
        self.mounted = False

    def env(self) -> dict:
        return {**os.environ, "PEAPOD_RUN": str(self.run_dir)}

    def run(self, cmd, pea: str, user: int = 0, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("timeout", 60)
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("env", self.env())
        return subprocess.run(peafs_cmd("run", self.mountpoint, "--pea", pea,
                                        "--user", user, "--", *cmd), **kw)

    def py(self, code: str, pea: str, user: int = 0, *args, **kw) -> subprocess.CompletedProcess:
        return self.run([PY, "-I", "-S", "-c", code, *map(str, args)], pea, user=user, **kw)

    def audit(self) -> list[dict]:
        path = self.state_dir / "audit.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def daemon_pid(self) -> int | None:
        try:
            return json.loads((self.state_dir / "mount.json").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return None

    def umount(self) -> None:
        if not self.mounted:
            return
        subprocess.run(peafs_cmd("umount", self.mountpoint), env=self.env(),
                       capture_output=True, timeout=60)
        self.mounted = False

    def cleanup(self) -> None:
        try:
            self.umount()
        finally:
            with open("/proc/self/mountinfo") as f:
                still = any(line.split()[4] == str(self.mountpoint) for line in f)
            if still:
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                               capture_output=True, timeout=30)


def _kill_until_empty(pids_of) -> None:
    """SIGKILL what ``pids_of()`` lists until it lists nothing (bounded)."""
    for _ in range(50):
        pids = pids_of()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def kill_pea(pod: str, pea: str) -> None:
    """Kill every process of one pea; the mount and the other peas stay."""
    procs = cgroup.pea_cgroup(pod, pea) / "cgroup.procs"
    _kill_until_empty(lambda: [int(x) for x in procs.read_text().split()]
                      if procs.exists() else [])


def kill_pod(pod: str) -> None:
    _kill_until_empty(lambda: cgroup.pids_in(pod))
    try:
        cgroup.remove_pod(pod)
    except cgroup.CgroupError:
        pass


class MountFactory:
    """Makes PeaMounts under one base directory and tears them all down."""

    def __init__(self, base: Path):
        self.base = base
        self.run_dir = base / "run"
        self.run_dir.mkdir(exist_ok=True)
        # Mount points live outside pytest's base directory, which is 0700:
        # a pod user (host uid 200000+) must be able to reach its mount.
        self.mnt_base = Path(tempfile.mkdtemp(prefix="peafs-mnt-", dir="/tmp"))
        self.mnt_base.chmod(0o755)
        self.mounts: list[PeaMount] = []
        self.names_by_root: dict[str, str] = {}
        self.counter = 0

    def __call__(self, policy_toml: str, root: Path | None = None,
                 pod: str | None = None, daemon_env: dict | None = None) -> PeaMount:
        """``daemon_env``: extra environment for the daemon (PEAFS_FD_CACHE)."""
        self.counter += 1
        n = self.counter
        if root is None:
            root = self.base / f"staging{n}"
            root.mkdir()
            root.chmod(0o755)
        root = Path(root)
        key = str(root.resolve())
        if pod is None:
            pod = self.names_by_root.get(key) or f"t{os.urandom(5).hex()}"
        self.names_by_root[key] = pod
        mp = self.mnt_base / f"mnt{n}"
        mp.mkdir()
        policy_path = self.base / f"policy{n}.toml"
        policy_path.write_text(_fill_policy(policy_toml, pod, root))
        m = PeaMount(pod, root, mp, policy_path, self.run_dir)
        r = subprocess.run(peafs_cmd("mount", root, mp, "--policy", policy_path),
                           env={**m.env(), **(daemon_env or {})}, capture_output=True,
                           text=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError(f"peafs mount failed ({r.returncode}): {r.stderr.strip()}")
        m.mounted = True
        self.mounts.append(m)
        return m

    def cleanup(self) -> None:
        for m in reversed(self.mounts):
            try:
                m.cleanup()
            except Exception:  # noqa: BLE001 - every mount gets its chance
                pass
        for pod in set(m.pod for m in self.mounts):
            kill_pod(pod)
        still_mounted = False
        with open("/proc/self/mountinfo") as f:
            points = {line.split()[4] for line in f}
        for m in self.mounts:
            still_mounted |= str(m.mountpoint) in points
        if not still_mounted:
            shutil.rmtree(self.mnt_base, ignore_errors=True)


