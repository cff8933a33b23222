"""pods/demo.py (``make demo``): its narration, and how it fails.

The whole demo (setup, SMTP, delivery, the refused shell, stop) needs root
and the real mail stack; tests/e2e/test_mail.py runs the same stack on a
copy of the policy. Here, without starting anything: what the demo says
about the policy, how it reads the mailbox and the audit log, and that a
failing step ends it with one line on stderr and status 1, no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import rules
from pods import demo

REPO = Path(__file__).resolve().parents[2]

MBOX = b"""From bob@host.demo  Tue Dec  1 21:36:20 2026
Return-Path: <bob@host.demo>
From: bob@host.demo
To: alice@mail.pod.test
Subject: demo abc123 #1
X-Peapod-Pea: delivery

Hello.
From here on, a body line starting with From is no separator.

From carol@host.demo  Tue Dec  1 21:36:21 2026
From: carol@host.demo
To: alice@mail.pod.test
Subject: another run
X-Peapod-Pea: delivery

Not ours.

From bob@host.demo  Tue Dec  1 21:36:22 2026
From: bob@host.demo
To: alice@mail.pod.test
Subject: demo abc123 #2
X-Peapod-Pea: smtpd
X-Peapod-Pea: delivery

Stamped twice.
"""


def test_the_policy_questions_are_answered_as_pod_rules_explain_does():
    policy = rules.load(demo.POLICY)
    shell = demo.explain(policy, "smtpd", "/bin/sh")
    assert shell.startswith("smtpd may not read, write or execute /bin/sh")
    assert "smtpd may not read, write or execute /var/mail/alice" in demo.explain(
        policy, "smtpd", "/var/mail/alice")
    procmail = demo.explain(policy, "smtpd", "/usr/bin/procmail")
    assert "smtpd may read and execute /usr/bin/procmail (not write)" in procmail
    assert ('executing it moves the process to pea delivery '
            '(transition "/usr/bin/procmail" = "delivery")') in procmail
    # The same words as the command.
    r = subprocess.run([sys.executable, "-m", "pods.cli", "rules", "explain", str(demo.POLICY),
                        "--pea", "smtpd", "/usr/bin/procmail"], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == procmail


def test_every_question_is_about_a_pea_of_the_policy():
    policy = rules.load(demo.POLICY)
    for pea, path, _ in demo.QUESTIONS:
        assert pea in policy.peas and path.startswith("/")


def test_mail_headers_picks_this_runs_messages_and_their_stamps():
    found = demo.mail_headers(MBOX, "abc123")
    assert found == [
        ["From: bob@host.demo", "To: alice@mail.pod.test", "Subject: demo abc123 #1",
         "X-Peapod-Pea: delivery"],
        ["From: bob@host.demo", "To: alice@mail.pod.test", "Subject: demo abc123 #2",
         "X-Peapod-Pea: smtpd", "X-Peapod-Pea: delivery"],
    ]
    assert demo.mail_headers(MBOX, "zzz") == []
    assert demo.mail_headers(b"", "abc123") == []


def test_audit_lines_skip_a_torn_last_line_and_describe_a_refusal():
    entry = {"time": "t", "pod": "mail", "pea": "smtpd", "pid": 7, "uid": 0,
             "operation": "exec", "path": "/usr/bin/dash", "need": "x", "rule": "/",
             "kind": "default", "complain": False}
    data = (json.dumps(entry) + "\n" + '{"time": "t2", "po').encode()
    assert demo.audit_lines(data) == [entry]
    assert demo.describe_refusal(entry) == (
        "pod mail, pea smtpd, uid 0: exec /usr/bin/dash refused, needs 'x' (rule /, default)")


def _policy_copy(tmp_path: Path) -> Path:
    text = demo.POLICY.read_text().replace('name = "mail"', 'name = "demotest"', 1)
    text = text.replace('root = "/var/lib/peapod/mail/root"', f'root = "{tmp_path}/root"', 1)
    policy = tmp_path / "pod.toml"
    policy.write_text(text)
    assert rules.load(policy).name == "demotest"
    return policy


def test_a_failing_step_is_one_line_and_status_1(tmp_path, monkeypatch, capsys):
    setup = tmp_path / "setup"
    setup.write_text("#!/bin/sh\necho 'setup: doing things'\n"
                     "echo 'mail setup: cannot install postfix: no network' >&2\nexit 1\n")
    os.chmod(setup, 0o755)
    monkeypatch.setattr(demo, "POLICY", _policy_copy(tmp_path))
    monkeypatch.setattr(demo, "SETUP", setup)
    monkeypatch.setattr(demo, "REPO", tmp_path)
    monkeypatch.setenv("PEAPOD_RUN", str(tmp_path / "run"))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert demo.main() == 1
    out, err = capsys.readouterr()
    assert "== 1. The policy" in out and "    setup: doing things" in out
    assert err == "demo: examples/mail/setup failed: mail setup: cannot install postfix: no network\n"
    assert "== 3." not in out


def test_not_root_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert demo.main() == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("demo: must run as root")


def test_an_invalid_policy_is_one_line(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "pod.toml"
    bad.write_text('[pod]\nname = "Mail"\n')
    monkeypatch.setattr(demo, "POLICY", bad)
    assert demo.main() == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith(f"demo: {bad} is not valid: ")
