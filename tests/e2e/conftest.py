"""Helpers for whole-pod tests of the examples (root, /dev/fuse; they never skip).

Generic, shared by the example tests (mail, web):

- ``copy_policy(src, dst, name=, root=, address=, id_base=)``: a copy of an
  example policy with another pod name, root, [pod.net] address and host id
  range (the rest, peas included, is the example's own, byte for byte);
- ``free_address()``: "10.88.N.2/24" with a random N in 100-199 whose host
  side (10.88.N.1) no interface holds;
- ``PodRun(base)``: a private $PEAPOD_RUN; ``.env()``, ``.pod(*args)`` runs
  the ``pod`` command with it, ``.run(cmd)`` any command with it;
- ``leftovers(run, name, root)``: what a stopped pod left behind (an entry in
  ``pod list``, a mount under its root or run dir, processes, cgroups, a
  veth, its runtime dir), as a list of words; empty when clean;
- ``forced_cleanup(run, name)``: remove whatever is left (after a failure);
- ``safe_rmtree(path)``: rmtree, refused while anything is mounted below.

Tests get them through the ``e2e`` fixture (``e2e.copy_policy(...)``), so
they never import this file by name (each test directory has a conftest).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from peafs import cgroup
from pods import limits, netns

REPO = Path(__file__).resolve().parents[2]
POD = [sys.executable, "-m", "pods.cli"]


def copy_policy(src: Path, dst: Path, *, name: str, root: Path, address: str | None = None,
                id_base: int | None = None) -> Path:
    """Write ``dst``: ``src`` with [pod] name/root (and uid_map/gid_map when
    ``id_base`` is given) and [pod.net] address replaced; every other line
    is kept. Fails if a key to replace is not found."""
    table = None
    want = {("pod", "name"): json.dumps(name), ("pod", "root"): json.dumps(str(root))}
    if id_base is not None:
        want[("pod", "uid_map")] = f"[[0, {id_base}, 65536]]"
        want[("pod", "gid_map")] = f"[[0, {id_base}, 65536]]"
    if address is not None:
        want[("pod.net", "address")] = json.dumps(address)
    done = set()
    out = []
    for line in src.read_text().splitlines(keepends=True):
        m = re.match(r"\s*\[([^\[\]]+)\]\s*(#.*)?$", line)
        if m:
            table = m.group(1).strip()
        m = re.match(r"(\s*)([A-Za-z_]+)(\s*=\s*)", line)
        if m and (table, m.group(2)) in want and (table, m.group(2)) not in done:
            key = (table, m.group(2))
            line = f"{m.group(1)}{m.group(2)}{m.group(3)}{want[key]}\n"
            done.add(key)
        out.append(line)
    missing = set(want) - done
    assert not missing, f"{src}: keys not found to replace: {sorted(missing)}"
    dst.write_text("".join(out))
    return dst


def free_address() -> str:
    used = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                          timeout=20).stdout
    for _ in range(200):
        n = random.randrange(100, 200)
        if f" 10.88.{n}.1/" not in used and f" 10.88.{n}.2/" not in used:
            return f"10.88.{n}.2/24"
    raise AssertionError("no free 10.88.N.0/24 network for a test pod")


class PodRun:
    """A private $PEAPOD_RUN and the commands that use it."""

    def __init__(self, base: Path):
        self.dir = base / "run"
        self.dir.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict:
        env = dict(os.environ)
        env["PEAPOD_RUN"] = str(self.dir)
        env["PYTHONPATH"] = str(REPO) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def run(self, cmd, *, timeout=60, input=None) -> subprocess.CompletedProcess:
        return subprocess.run([str(c) for c in cmd], env=self.env(), cwd=REPO, text=True,
                              capture_output=True, timeout=timeout, input=input,
                              stdin=subprocess.DEVNULL if input is None else None)

    def pod(self, *args, timeout=60, input=None) -> subprocess.CompletedProcess:
        return self.run(POD + list(args), timeout=timeout, input=input)

    def listed(self) -> list[dict]:
        r = self.pod("list", "--json", timeout=30)
        assert r.returncode == 0, f"pod list: {r.stderr}"
        return json.loads(r.stdout or "[]")


def mounts_under(*dirs: Path) -> list[str]:
    """Mount points in this (the host's) mount namespace at or below ``dirs``."""
    found = []
    with open("/proc/mounts") as f:
        for line in f:
            mp = line.split()[1].encode().decode("unicode_escape")
            for d in dirs:
                if mp == str(d) or mp.startswith(str(d).rstrip("/") + "/"):
                    found.append(mp)
    return found


def leftovers(run: PodRun, name: str, root: Path) -> list[str]:
    found = []
    if any(p.get("name") == name for p in run.listed()):
        found.append(f"pod {name} in `pod list`")
    found += [f"mount {mp}" for mp in mounts_under(root, run.dir)]
    pids = set(cgroup.pids_in(name)) | set(limits.v1_pids(name))
    if pids:
        found.append(f"processes {sorted(pids)}")
    for d in [cgroup.pod_cgroup(name), *limits.v1_dirs(name)]:
        if d.exists():
            found.append(f"cgroup {d}")
    if netns.veth_exists(name):
        found.append(f"veth {netns.host_ifname(name)}")
    if (run.dir / "pods" / name).exists():
        found.append(f"runtime dir {run.dir / 'pods' / name}")
    return found


def forced_cleanup(run: PodRun, name: str) -> None:
    """After a failed test: stop the pod, then remove by force what is left."""
    try:
        run.pod("stop", name, "--timeout", "5", timeout=90)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 10
    while (cgroup.pids_in(name) or limits.v1_pids(name)) and time.monotonic() < deadline:
        limits.kill_all(name)
        time.sleep(0.05)
    for d in [cgroup.pod_cgroup(name), *limits.v1_dirs(name)]:
        if d.exists():
            for sub in sorted(d.glob("*/"), reverse=True):
                try:
                    os.rmdir(sub)
                except OSError:
                    pass
            try:
                os.rmdir(d)
            except OSError:
                pass
    if netns.veth_exists(name):
        netns.del_veth(name)
    shutil.rmtree(run.dir / "pods" / name, ignore_errors=True)


def safe_rmtree(path: Path) -> None:
    """Remove a pod root, but never through a mount (a bind of the host's
    /usr left below it would otherwise be emptied)."""
    mounted = mounts_under(path)
    assert not mounted, f"not removing {path}: still mounted below it: {mounted}"
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def e2e():
    return types.SimpleNamespace(
        REPO=REPO, copy_policy=copy_policy, free_address=free_address, PodRun=PodRun,
        leftovers=leftovers, forced_cleanup=forced_cleanup, mounts_under=mounts_under,
        safe_rmtree=safe_rmtree)
