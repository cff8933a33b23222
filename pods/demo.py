"""``python -m pods.demo`` (``make demo``, as root): the mail pod, end to end.

1. What the policy says (examples/mail/pod.toml), in three questions to the
   rule engine.
2. examples/mail/setup: installs postfix and procmail if missing, builds the
   pod root (/var/lib/peapod/mail/root), starts the pod (idempotent).
3. A few messages from the host to alice over SMTP, on the pod's address.
4. Their headers in the pod's mailbox, with the X-Peapod-Pea stamp that
   procmail, in the delivery pea, puts on each message.
5. A break-in into Postfix tries a shell: `pod exec mail --pea smtpd -- /bin/sh`
   is refused, and the refusal is in the pod's audit log.
6. `pod stop mail`: nothing is left running.

Any failing step ends the demo with one line on stderr and status 1 (the pod
is stopped first).
"""

from __future__ import annotations

import email
import json
import os
import random
import smtplib
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import rules
from kernel import rundir
from pods import runtime
from pods.rules_cmd import describe

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "mail"
POLICY = EXAMPLE / "pod.toml"
SETUP = EXAMPLE / "setup"
# The `pod` command as `make deps` installs it (pods/pod_front.c), which
# `make demo` builds first; the Python command if it is missing.
_FRONT = Path(sys.prefix) / "bin" / "pod"
POD = [str(_FRONT)] if _FRONT.is_file() else [sys.executable, "-m", "pods.cli"]
SHOWN_HEADERS = ("From", "To", "Subject", "X-Peapod-Pea")
DELIVERY_TIMEOUT = 60

# (pea, path, what the question is about)
QUESTIONS = [
    ("smtpd", "/bin/sh", "a break-in into Postfix looks for a shell"),
    ("smtpd", "/var/mail/alice", "... or for the mailboxes"),
    ("smtpd", "/usr/bin/procmail", "Postfix's local(8) delivers by executing procmail"),
]


class DemoError(Exception):
    """A failed step: one line, exit status 1."""


def say(text: str = "") -> None:
    print(text, flush=True)


def indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


# ------------------------------------------------------------------ narration
# Pure functions (tested in tests/rules/test_rules_demo.py without root).

def explain(policy, pea: str, path: str) -> str:
    """What ``pea`` may do with ``path`` and the rule that decides, in the
    words of `pod rules explain`."""
    return describe(policy.pea(pea), path, policy.pea(pea).match(path))


def mail_headers(mbox: bytes, tag: str) -> list[list[str]]:
    """For each message of the mbox whose Subject contains ``tag``: its
    SHOWN_HEADERS lines, in that order."""
    out = []
    for chunk in mbox.split(b"\n\nFrom "):
        msg = email.message_from_bytes(chunk.split(b"\n", 1)[1] if b"\n" in chunk else b"")
        if tag not in str(msg.get("Subject", "")):
            continue
        out.append([f"{h}: {v}" for h in SHOWN_HEADERS for v in msg.get_all(h, [])])
    return out


def audit_lines(data: bytes) -> list[dict]:
    """Audit log entries (one JSON object per line), skipping a torn last line."""
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def describe_refusal(e: dict) -> str:
    return (f"pod {e.get('pod')}, pea {e.get('pea')}, uid {e.get('uid')}: "
            f"{e.get('operation')} {e.get('path')} refused, needs {e.get('need')!r} "
            f"(rule {e.get('rule')}, {e.get('kind')})")


# ------------------------------------------------------------------ the steps

def pod_cmd(*args, timeout=120) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(POD + [str(a) for a in args], cwd=REPO, text=True,
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise DemoError(f"pod {args[0]} did not finish within {timeout} s") from e


def step_policy(policy) -> None:
    say(f"== 1. The policy: {POLICY.relative_to(REPO)} (pod {policy.name}, "
        f"peas {', '.join(policy.peas)})")
    for pea, path, why in QUESTIONS:
        say(f"  {why}:")
        say(f"    $ pod rules explain {POLICY.relative_to(REPO)} --pea {pea} {path}")
        say(indent(explain(policy, pea, path), "    "))
    say()


def step_setup() -> None:
    say(f"== 2. Build and start the pod: {SETUP.relative_to(REPO)}")
    # Its progress is shown as it comes (installing packages takes a while);
    # it bounds each of its own steps (apt-get, pod start, the port wait).
    try:
        proc = subprocess.Popen([str(SETUP)], cwd=REPO, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise DemoError(f"cannot run {SETUP}: {e.strerror}") from e
    for line in proc.stdout:
        say(indent(line.rstrip()))
    err = proc.stderr.read()
    proc.wait()
    if proc.returncode != 0:
        last = (err.strip() or "no message").splitlines()[-1]
        raise DemoError(f"examples/mail/setup failed: {last}")
    say()


def step_send(ip: str, tag: str, count: int = 3) -> None:
    say(f"== 3. Send {count} messages from the host to alice@mail.pod.test via {ip}:25")
    try:
        with smtplib.SMTP(ip, 25, timeout=30) as smtp:
            banner = smtp.ehlo("host.demo")[1].decode(errors="replace").splitlines()[0]
            say(f"  connected: {banner}")
            for i in range(1, count + 1):
                msg = EmailMessage()
                msg["From"] = "bob@host.demo"
                msg["To"] = "alice@mail.pod.test"
                msg["Subject"] = f"demo {tag} #{i}"
                msg.set_content(f"Hello Alice, message {i} from the host.\n")
                smtp.send_message(msg)
                say(f"  sent: Subject: demo {tag} #{i}")
    except (OSError, smtplib.SMTPException) as e:
        raise DemoError(f"SMTP to {ip}:25 failed: {e}") from e
    say()


def step_delivered(root: Path, tag: str, count: int = 3) -> None:
    box = root / "var" / "mail" / "alice"
    say(f"== 4. Delivered by procmail in the delivery pea: {box}")
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    found: list[list[str]] = []
    while time.monotonic() < deadline:
        try:
            found = mail_headers(box.read_bytes(), tag)
        except FileNotFoundError:
            found = []
        if len(found) >= count:
            break
        time.sleep(0.3)
    for headers in sorted(found):
        say(indent("\n".join(headers)))
        say()
    if len(found) < count:
        raise DemoError(f"only {len(found)} of {count} messages in {box} after "
                        f"{DELIVERY_TIMEOUT} s (see {root / 'var/log/postfix.log'})")
    if not all("X-Peapod-Pea: delivery" in h for h in found):
        raise DemoError("a message lacks the stamp 'X-Peapod-Pea: delivery' "
                        "(procmail's recipe did not run in the delivery pea)")


def step_attack(name: str, root: Path) -> None:
    say("== 5. A break-in into Postfix tries a shell")
    audit = runtime.audit_log(root)   # kept after the pod stops
    offset = audit.stat().st_size if audit.exists() else 0
    cmd = ["/bin/sh", "-c", "echo I own this mail server"]
    say(f"  $ pod exec {name} --pea smtpd -- {' '.join(cmd[:2])} '{cmd[2]}'")
    r = pod_cmd("exec", name, "--pea", "smtpd", "--", *cmd, timeout=60)
    if r.returncode == 0 or "I own" in r.stdout:
        raise DemoError("the smtpd pea ran a shell: the policy is not enforced")
    say(indent((r.stderr.strip() or "(no message)") + f"\n(exit status {r.returncode})"))
    try:
        with open(audit, "rb") as f:
            f.seek(offset)
            entries = audit_lines(f.read())
    except FileNotFoundError:
        entries = []
    execs = [e for e in entries if e.get("operation") == "exec" and e.get("pea") == "smtpd"]
    if not execs:
        raise DemoError(f"the refusal is not in the audit log {audit}")
    say(f"  the pod's audit log ({audit}):")
    for e in execs:
        say(f"    {json.dumps(e)}")
        say(f"    = {describe_refusal(e)}")
    say()


def step_stop(run, name: str) -> None:
    say(f"== 6. Stop the pod: pod stop {name}")
    r = pod_cmd("stop", name, timeout=120)
    if r.returncode != 0:
        raise DemoError(f"pod stop {name} failed: {(r.stderr or r.stdout).strip()}")
    if run.is_alive(name):
        raise DemoError(f"pod {name} still runs after pod stop")
    listed = pod_cmd("list").stdout.strip().splitlines()[1:]   # without the header
    say(f"  pod {name} stopped; `pod list`: "
        f"{'; '.join(line.split()[0] for line in listed) or 'no pods'}")


def main() -> int:
    try:
        policy = rules.load(POLICY)
    except rules.PolicyError as e:
        print(f"demo: {POLICY} is not valid: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        print("demo: must run as root (it installs packages and starts a pod): "
              "sudo make demo", file=sys.stderr)
        return 1
    if policy.net is None:
        print(f"demo: {POLICY} has no [pod.net] address to send mail to", file=sys.stderr)
        return 1
    run = runtime.RunDir(rundir.run_dir_from(os.environ))   # the one read of $PEAPOD_RUN
    ip = policy.net.ip
    tag = f"{random.randrange(16**6):06x}"
    say("Pea-Pod demo: Postfix and procmail in the pod \"mail\", split into two peas\n")
    started = False
    try:
        step_policy(policy)
        started = True
        step_setup()
        step_send(ip, tag)
        step_delivered(Path(policy.root), tag)
        step_attack(policy.name, Path(policy.root))
        step_stop(run, policy.name)
        started = False
    except DemoError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    finally:
        if started and run.is_alive(policy.name):
            pod_cmd("stop", policy.name, timeout=120)
    say("\nDone. Start it again with examples/mail/setup; see examples/mail/README.md.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
