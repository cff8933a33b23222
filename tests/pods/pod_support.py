"""Constants and the Pod handle the pod tests import.

Here rather than in conftest.py: tests/peafs has a conftest.py too, both are
imported as the module ``conftest``, and the one loaded last would answer a
``from conftest import ...``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

POD = [sys.executable, "-m", "pods.cli"]   # the `pod` command of this checkout
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
