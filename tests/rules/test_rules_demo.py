"""``python -m pods.demo`` (make demo) runs, checks both examples, exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_and_narrates():
    result = subprocess.run([sys.executable, "-m", "pods.demo"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert "$ pod rules check examples/mail/pod.toml\n    ok: pod mail" in out
    assert "$ pod rules check examples/web/pod.toml\n    ok: pod web" in out
    assert "smtpd may not read, write or execute /bin/sh" in out
    assert 'executing it moves the process to pea delivery (transition "/usr/bin/procmail" = "delivery")' in out
    assert 'executing it moves the process to pea cgi (transition "/usr/lib/cgi-bin/" = "cgi")' in out
    assert "httpd may not read, write or execute /run/mysqld/mysqld.sock" in out
    assert "note:" not in out.split("--pea delivery /var/mail\n")[1].split("$")[0]
