"""Fixtures for pod tests (root, /dev/fuse, namespaces, cgroups; they never skip).

``pods`` (module scope) and ``pod_factory`` (function scope) are factories:

    pod = pods.start(extra_pod="", peas=None, name=None, net=None, net_extra="",
                     limits=None, mounts=None, check=True)

- a fresh staging root under a tmp dir: etc/passwd, etc/group, tmp (1777),
  root/, the usr-merge symlinks bin, lib, lib64, sbin -> usr/...; the host's
  /usr is a read-only [[pod.mount]], so /bin/sh, coreutils and
  /usr/bin/python3 run inside.
- a unique name (``p<pid><random>``) and a random host id range
  (``uid_map = [[0, BASE, 65536]]``), so concurrent test runs never collide.
- $PEAPOD_RUN is a directory of the factory (passed to every command).
- ``pod.exec(*cmd, pea=None, user=None, input=None, timeout=60)`` runs
  ``pod exec`` and returns the CompletedProcess (text, captured);
  ``pod.py(code, ...)`` runs ``/usr/bin/python3 -c code`` inside;
  ``pod.cli(*args)`` runs any ``pod`` subcommand with the pod's $PEAPOD_RUN.
- teardown: ``pod stop``, then whatever is left is removed by force
  (processes, cgroups, veth, runtime dir) and the test fails if it had to.
"""

from __future__ import annotations

import json
import os
import itertools
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from kernel import cgroup
from rules.policy import KNOWN_GAPS
from pods import limits, netns
from pod_support import POD, REPO, Pod


def make_staging(base: Path) -> Path:
    root = base / "root"
    root.mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\ntty:x:5:\nuser:x:1000:\n")
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    (root / "root").mkdir(mode=0o700)
    for link in ("bin", "lib", "lib64", "sbin"):
        os.symlink(f"usr/{link}", root / link)
    return root



# Host id ranges, one per pod of this test run: drawn at random they
# collided now and then between two pods alive at once (`pod start` then
# rightly refuses the second). A counter from a random start never repeats
# within a run, and differs from run to run.
_RANGES = itertools.count(random.randrange(2000))

class PodFactory:
    def __init__(self, base: Path):
        self.base = base
        self.run = base / "run"
        self.pods: list[Pod] = []

    def env(self) -> dict:
        env = dict(os.environ)
        env["PEAPOD_RUN"] = str(self.run)
        env["PYTHONPATH"] = str(REPO)
        return env

    def cli(self, *args, timeout=60, input=None, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        if input is None and "stdin" not in kw:
            kw["stdin"] = subprocess.DEVNULL
        return subprocess.run(POD + [str(a) for a in args], env=self.env(), timeout=timeout,
                              input=input, **kw)

    def write_policy(self, *, name=None, extra_pod="", peas=None, net=None, limits_=None,
                     mounts=None, base=None, root=None, net_extra: str = "",
                     accept_gaps: bool = True) -> tuple[Path, str, Path, int]:
        """``net_extra``: lines added to the ``[pod.net]`` table (with ``net``).
        ``accept_gaps``: the ``[pod]`` table accepts every known gap between
        peas (without it, a pod of several peas does not start)."""
        name = name or f"p{os.getpid() % 100000}{random.randrange(1 << 16):04x}"
        d = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.base))
        root = root or make_staging(d)
        base = base or 1_000_000 + next(_RANGES) % 2000 * 65536
        lines = ["[pod]", f'name = "{name}"', f'hostname = "{name}-host"',
                 f"root = {json.dumps(str(root))}",
                 f"uid_map = [[0, {base}, 65536]]", f"gid_map = [[0, {base}, 65536]]",
                 'default_pea = "main"', extra_pod]
        if accept_gaps:
            lines.append("accept_gaps = " + json.dumps(list(KNOWN_GAPS)))
        lines.append("")
        for host, path, rw in (mounts if mounts is not None else [("/usr", "/usr", False)]):
            lines += ["[[pod.mount]]", f"host = {json.dumps(str(host))}",
                      f"path = {json.dumps(path)}"] + (["rw = true"] if rw else []) + [""]
        if net:
            lines += ["[pod.net]", f'address = "{net}"'] + ([net_extra] if net_extra else []) + [""]
        if limits_:
            lines += ["[pod.limits]"] + [f"{k} = {json.dumps(v)}" for k, v in limits_.items()]
            lines.append("")
        lines.append(peas or '[pea.main.files]\n"/" = "rwx"\n\n[pea.other.files]\n"/" = "rwx"\n')
        policy = d / "pod.toml"
        policy.write_text("\n".join(lines))
        return policy, name, root, base

    def start(self, *, check=True, net=None, **kw) -> Pod:
        policy, name, root, base = self.write_policy(net=net, **kw)
        pod = Pod(self, name, policy, root, base, net)
        self.pods.append(pod)
        r = self.cli("start", policy, timeout=120)
        pod.start_result = r
        if check:
            assert r.returncode == 0, f"pod start failed: {r.stderr}"
            assert r.stdout.strip() == name
        return pod

    def teardown(self) -> list[str]:
        leftovers = []
        for pod in self.pods:
            if (self.run / "pods" / pod.name).exists():
                pod.stop()
            leftovers += forced_cleanup(pod.name, self.run)
        return leftovers


def forced_cleanup(name: str, run: Path) -> list[str]:
    """Remove what a pod left and say what it was (a test failure)."""
    found = []
    pids = set(cgroup.pids_in(name)) | set(limits.v1_pids(name))
    if pids:
        found.append(f"processes {sorted(pids)}")
        limits.kill_all(name)
        deadline = time.monotonic() + 10
        while (cgroup.pids_in(name) or limits.v1_pids(name)) and time.monotonic() < deadline:
            limits.kill_all(name)
            time.sleep(0.05)
    for d in [cgroup.pod_cgroup(name), *limits.v1_dirs(name)]:
        if d.exists():
            found.append(f"cgroup {d}")
            for sub in sorted(d.glob("*/"), reverse=True):
                if sub.is_dir():
                    try:
                        os.rmdir(sub)
                    except OSError:
                        pass
            try:
                os.rmdir(d)
            except OSError:
                pass
    if netns.veth_exists(name):
        found.append(f"veth {netns.host_ifname(name)}")
        netns.del_veth(name)
    d = run / "pods" / name
    if d.exists():
        found.append(f"runtime dir {d}")
        shutil.rmtree(d, ignore_errors=True)
    return found


@pytest.fixture
def pod_factory(tmp_path):
    f = PodFactory(tmp_path)
    yield f
    leftovers = f.teardown()
    assert not leftovers, f"pods left behind: {leftovers}"


@pytest.fixture(scope="module")
def pods(tmp_path_factory):
    f = PodFactory(tmp_path_factory.mktemp("pods"))
    yield f
    leftovers = f.teardown()
    assert not leftovers, f"pods left behind: {leftovers}"


@pytest.fixture(scope="module")
def shared_pod(pods):
    """One pod shared by a module's read-mostly tests."""
    return pods.start()
