"""Constants and the Pod handle the pod tests import.

Here rather than in conftest.py: tests/peafs has a conftest.py too, both are
imported as the module ``conftest``, and the one loaded last would answer a
``from conftest import ...``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

# The `pod` command of this checkout as `make deps` installs it: the C front
# (pods/pod_front.c), which runs `pod exec` itself and hands every other
# command to pods.cli. The tests run what an administrator runs.
POD_COMMAND = Path(sys.prefix) / "bin" / "pod"
POD = [str(POD_COMMAND)]
POD_PYTHON = [sys.executable, "-m", "pods.cli"]   # the Python command alone
if not POD_COMMAND.is_file():
    raise RuntimeError(f"{POD_COMMAND} is missing: run `make deps` (it builds the pod command)")
PY = "/usr/bin/python3"                     # the host's python, seen inside through /usr
REPO = Path(__file__).resolve().parents[2]


class Pod:
    def __init__(self, factory, name: str, policy: Path, root: Path, base: int,
                 net: str | None):
        self.factory = factory
        self.name = name
        self.policy = policy
        self.root = root
        self.base = base
        self.net = net
        self.start_result: subprocess.CompletedProcess | None = None

    @property
    def run_dir(self) -> Path:
        return self.factory.run

    def cli(self, *args, timeout=60, **kw) -> subprocess.CompletedProcess:
        return self.factory.cli(*args, timeout=timeout, **kw)

    def exec(self, *cmd, pea=None, user=None, input=None, timeout=60) -> subprocess.CompletedProcess:
        args = ["exec", self.name]
        if pea is not None:
            args += ["--pea", pea]
        if user is not None:
            args += ["--user", str(user)]
        return self.cli(*args, "--", *cmd, input=input, timeout=timeout)

    def py(self, code: str, *args, pea=None, user=None, timeout=60) -> subprocess.CompletedProcess:
        return self.exec(PY, "-c", code, *args, pea=pea, user=user, timeout=timeout)

    def state(self) -> dict:
        return json.loads((self.run_dir / "pods" / self.name / "state.json").read_text())

    def stop(self) -> subprocess.CompletedProcess:
        return self.cli("stop", self.name, "--timeout", "3", timeout=90)


def wait_for(pred, timeout: float = 30.0, what: str = "condition", *, interval: float = 0.05):
    """``pred()``'s first true value, polled every ``interval`` seconds;
    AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def end_supervisor(sup, *procs) -> None:
    """Kill ``procs`` (None skipped) and close ``sup``."""
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
    sup.close()


def sleeper_with_pid(pid: int) -> subprocess.Popen:
    """A `sleep 30` given the dead ``pid`` again (ns_last_pid; bounded)."""
    for _ in range(20):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        p = subprocess.Popen(["sleep", "30"])
        if p.pid == pid:
            return p
        p.kill()
        p.wait()
    raise AssertionError(f"pid {pid} was not handed out again")
