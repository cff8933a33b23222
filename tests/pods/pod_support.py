"""Constants the pod tests import.

Here rather than in conftest.py: tests/peafs has a conftest.py too, both are
imported as the module ``conftest``, and the one loaded last would answer a
``from conftest import ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path

POD = [sys.executable, "-m", "pods.cli"]   # the `pod` command of this checkout
PY = "/usr/bin/python3"                     # the host's python, seen inside through /usr
REPO = Path(__file__).resolve().parents[2]
