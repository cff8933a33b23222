"""From pod to host: start-up fails closed (DESIGN s.5, SECURITY.md "From pod to host").

A pod process must never run without its seccomp filter, and a pod never
without its supervisor: the modules that start them import the filter and
the supervisor unconditionally, so a broken or missing module stops the
start instead of running the pod unfiltered (which the first wave did, with
``except ImportError: ... = None``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("starter,needed,flags", [
    ("pods.tagger", "pods.seccomp", ["-S"]),   # the child that installs the filter
    ("pods.daemon", "pods.supervisor", []),    # the daemon that answers it
])
def test_a_broken_filter_or_supervisor_module_stops_the_start(starter, needed, flags):
    # The tagger runs with ``python -S`` (daemon.CHILD_PYTHON); a module
    # that cannot be imported is simulated the way the import system itself
    # spells it: a None entry in sys.modules raises ImportError on import.
    code = (f"import sys; sys.modules[{needed!r}] = None\n"
            f"import {starter}\n"
            "print('started without', " + repr(needed) + ")\n")
    r = subprocess.run([sys.executable, *flags, "-c", code], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0, f"{starter} imported without {needed}: {r.stdout}"
    assert f"import of {needed} halted" in r.stderr, r.stderr
