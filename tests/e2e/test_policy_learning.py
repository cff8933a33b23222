"""The mail pod's policy learned, not written (issue #17, "Done means").

The example's policy with every file rule gone: each pea has only
``"/" = ""`` and ``complain = true`` (the transition to procmail, the network
rules and the pod's settings are kept). One complain-mode run with real
traffic (setup, 20 messages over SMTP); then ``pod rules suggest --write``
writes the rules the audit log calls for, complain is switched off in the
file and ``pod rules reload`` applies it to the running pod, with no
restart. In enforce mode 20 more messages must all be delivered by the
delivery pea, and the smtpd pea must still be unable to run a shell or
read /var/mail (refused exec; the learned policy grants it no r on the
mailbox and no x on any shell).
"""

from __future__ import annotations

import json
import random
import re
import smtplib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from test_mail import SETUP, send_messages, wait_for_delivery, problems  # noqa: E402

MESSAGES = 20


def learning_policy(text: str) -> str:
    """``text`` with each [pea.X.files] table reduced to "/" = "" and every
    pea in complain mode."""
    out, table = [], None
    for line in text.splitlines():
        m = re.match(r"\s*\[([^\[\]]+)\]", line)
        if m:
            table = m.group(1).strip()
            out.append(line)
            if table.endswith(".files"):
                out.append('"/" = ""')
            continue
        if table and table.endswith(".files") and line.strip() and not line.lstrip().startswith("#"):
            continue
        if table == "pea.delivery" and line.startswith("complain"):
            line = "complain = true"
        out.append(line)
    out += ["", "[pea.smtpd]", "complain = true", ""]
    return "\n".join(out)


def test_the_mail_policy_is_learned_in_complain_mode_then_enforced(tmp_path, e2e):
    name = f"learn{random.randrange(10**6):06d}"
    address = e2e.free_address(100, 199)
    ip = address.split("/")[0]
    root = tmp_path / "root"
    policy = e2e.copy_policy(REPO / "examples" / "mail" / "pod.toml", tmp_path / "pod.toml",
                             name=name, root=root, address=address,
                             id_base=200_000_000 + random.randrange(1000) * 65536)
    policy.write_text(learning_policy(policy.read_text()))
    run = e2e.PodRun(tmp_path)
    passed = False
    stop = None
    left: list[str] = []
    try:
        e2e.build_root(run, SETUP, policy, root, f"{ip} mail.pod.test mail")
        e2e.start_pod(run, SETUP, policy, name, ip, 25, timeout=300)
        box = root / "var" / "mail" / "alice"

        # 1. Complain mode: everything is allowed, and logged.
        tag = f"c{random.randrange(10**9)}"
        try:
            send_messages(ip, tag, MESSAGES)
        except (OSError, smtplib.SMTPException) as e:
            log = root / "var/log/postfix.log"
            raise AssertionError(f"complain mode: SMTP failed ({e}); postfix.log: "
                                 f"{log.read_text()[-3000:] if log.exists() else ''}") from None
        got = wait_for_delivery(box, tag, MESSAGES, 120)
        assert len(got) == MESSAGES, f"complain mode: {len(got)} delivered; " \
                                     f"{problems(root / 'var/log/postfix.log')}"

        # 2. The rules the log calls for, written into the policy.
        r = run.pod("rules", "suggest", str(policy), "--write", timeout=120)
        assert r.returncode == 0, r.stderr
        text = policy.read_text()
        assert text.count("complain = true") == 2
        policy.write_text(text.replace("complain = true", "complain = false"))
        r = run.pod("rules", "check", str(policy))
        assert r.returncode == 0, r.stdout + r.stderr

        # 3. Enforce, without a restart.
        r = run.pod("rules", "reload", name, str(policy), timeout=120)
        assert r.returncode == 0, r.stderr
        tag = f"e{random.randrange(10**9)}"
        try:
            send_messages(ip, tag, MESSAGES)
        except (OSError, smtplib.SMTPException) as e:
            audit = root.parent / "root.peapod" / "audit.log"
            refused = [ln for ln in audit.read_text().splitlines() if '"complain": false' in ln]
            raise AssertionError(f"enforce mode: SMTP failed ({e}); refusals: {refused[-15:]}; "
                                 f"policy: {policy.read_text()[-4000:]}") from None
        got = wait_for_delivery(box, tag, MESSAGES, 120)
        assert len(got) == MESSAGES, (
            f"enforce mode: {len(got)} of {MESSAGES} delivered; postfix.log: "
            f"{problems(root / 'var/log/postfix.log')}; audit: "
            f"{(root.parent / 'root.peapod' / 'audit.log').read_text()[-3000:]}")
        assert all(m.get_all("X-Peapod-Pea") == ["delivery"] for m in got)

        # 4. The smtpd pea learned nothing it did not do.
        e2e.assert_exec_refused(run, name, "smtpd", "/bin/sh", "-c", "echo a shell runs",
                                output="a shell runs")
        for path, letter in (("/var/mail/alice", "r"), ("/var/mail/", "r"),
                             ("/usr/bin/dash", "x"), ("/usr/bin/bash", "x")):
            r = run.pod("rules", "explain", str(policy), "--pea", "smtpd", path, "--json")
            assert r.returncode == 0, r.stderr
            assert letter not in json.loads(r.stdout)["perm"], (path, r.stdout)
        passed = True
    finally:
        stop, left = e2e.teardown(run, name, root, stop_timeout=5)
    if passed:
        e2e.assert_clean(stop, left, root)
