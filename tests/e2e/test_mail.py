"""The mail pod end to end: real Postfix and procmail, 100 messages, and a
break-in into Postfix that the smtpd pea contains.

A copy of examples/mail/pod.toml (its own pod name, root under a tmp dir,
[pod.net] address 10.88.N.2/24 and host id range; the peas are the
example's, unchanged) is set up with examples/mail/setup, which installs
postfix and procmail if they are missing (this test never skips for them),
builds the root and starts the pod. From the host, 100 messages go over SMTP
to alice@mail.pod.test on the pod's address, port 25; all of them must be in
ROOT/var/mail/alice within 120 s, each stamped by /etc/procmailrc with
``X-Peapod-Pea: delivery`` (the cgroup of the process that delivered it: the
transition smtpd -> delivery on exec of procmail happened).

The break-in. The smtpd pea executes nothing but Postfix's daemons, the
dynamic loader and procmail (which leaves the pea): no python3, no shell,
no coreutils, so there is no program in the pod with which to probe *as* the
smtpd pea. An attacker who has taken over a Postfix daemon has no need of one:
they run their own code in that process. We do the equivalent, honestly and
without touching the policy: the payload is a small C program (compiled on
the host with gcc, a dependency of `make deps`), written into Postfix's
queue directory /var/spool/postfix/ (the one tree the smtpd pea may write,
so an attacker could put it there too) without any x bit, and run with the
dynamic loader, which the smtpd pea may execute:

    pod exec NAME --pea smtpd -- /lib64/ld-linux-x86-64.so.2 /var/spool/postfix/PROBE ...

The loader only reads and maps the file, so no exec rule names it and no
transition happens: the payload runs in the smtpd pea (it prints its own
cgroup to prove it) with every right the pea has and none more, as pod root
(uid 0: Unix permissions would allow all of it, so each refusal is PeaFS's).
It then tries what the attacker wants and reports each errno by name: exec
of /bin/sh, a new file in /usr (in /usr/lib/postfix/sbin/, the directory the
pea may execute from, and in /usr itself), a new file in /etc and a write
to /etc/passwd, a read of /var/mail/alice; all must fail with exactly
EACCES, and each refusal must be in the pod's audit log (ROOT.peapod/audit.log,
beside the root: it outlives the pod). A read of /etc/postfix/main.cf, which
the pea may do, must succeed (the probe is not refused wholesale).
Executing /bin/sh directly with `pod exec --pea smtpd` is refused as well.

Teardown: `pod stop`; then nothing may be left (no entry in `pod list`, no
mount below the root or the run dir, no process, cgroup, veth or runtime
dir); the tmp root and its ROOT.peapod are removed in every case.
"""

from __future__ import annotations

import mailbox
import random
import smtplib
import time
from email.message import EmailMessage
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "examples" / "mail" / "setup"
MESSAGES = 100
DELIVERY_TIMEOUT = 120
PROBE = "/var/spool/postfix/peapod-probe"

# (operation, path) the payload tries, and what must happen.
REFUSED = [
    ("exec", "/bin/sh"),
    ("create", "/usr/lib/postfix/sbin/peapod-probe"),
    ("create", "/usr/peapod-probe"),
    ("create", "/etc/peapod-probe"),
    ("write", "/etc/passwd"),
    ("read", "/var/mail/alice"),
]
ALLOWED = [("read", "/etc/postfix/main.cf")]


def send_messages(ip: str, tag: str, count: int) -> None:
    with smtplib.SMTP(ip, 25, timeout=30) as smtp:
        smtp.ehlo("host.test")
        for i in range(count):
            msg = EmailMessage()
            msg["From"] = "bob@host.test"
            msg["To"] = "alice@mail.pod.test"
            msg["Subject"] = f"{tag} message {i}"
            msg["Message-ID"] = f"<{tag}.{i}@host.test>"
            msg.set_content(f"message {i} of {count}\n")
            refused = smtp.send_message(msg)
            assert not refused, f"recipients refused: {refused}"


def problems(log: Path) -> list[str]:
    """The lines of Postfix's log that are not routine."""
    routine = ("status=sent", "removed", "client=", "message-id=", "queue active", "connect ")
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return [line for line in lines if not any(r in line for r in routine)][-10:]


def mailbox_messages(path: Path) -> list:
    """The messages of an mbox that procmail may be appending to right now.
    The mailbox module indexes the file, then reads each message by offset:
    a message written between the two gives offsets that no longer fit
    (ValueError: read length must be non-negative), so a read that raced a
    delivery is taken again (bounded; the callers poll anyway)."""
    for _ in range(20):
        box = mailbox.mbox(str(path), create=False)
        try:
            return list(box)
        except ValueError:
            time.sleep(0.1)
        finally:
            box.close()
    return []


def wait_for_delivery(path: Path, tag: str, count: int, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    mine: list = []
    while time.monotonic() < deadline:
        mine = [m for m in mailbox_messages(path) if str(m["Subject"]).startswith(tag)]
        if len(mine) >= count:
            return mine
        time.sleep(0.5)
    return mine


def test_mail_pod_end_to_end(tmp_path, e2e):
    name = f"mailt{random.randrange(10**6):06d}"
    address = e2e.free_address(100, 199)
    ip = address.split("/")[0]
    root = tmp_path / "root"
    policy = e2e.copy_policy(REPO / "examples" / "mail" / "pod.toml", tmp_path / "pod.toml",
                             name=name, root=root, address=address,
                             id_base=200_000_000 + random.randrange(1000) * 65536)
    run = e2e.PodRun(tmp_path)
    passed = False
    stop = None
    left: list[str] = []
    try:
        # 1. Packages (installed if missing) and the root, without starting.
        e2e.build_root(run, SETUP, policy, root, f"{ip} mail.pod.test mail")

        # The attacker's payload, in the queue directory, not executable.
        # (Its creates make programs, mode 0755; its exec runs a shell command.)
        binary = e2e.compile_probe(tmp_path, create_mode=0o755,
                                   exec_script="echo a shell runs")
        e2e.plant(binary, root, PROBE, 0o644)

        # 2. Start: setup is idempotent (the root is kept, the pod starts).
        e2e.start_pod(run, SETUP, policy, name, ip, 25, timeout=300)

        # 3. 100 messages from the host, all delivered by the delivery pea.
        tag = f"t{random.randrange(10**9)}"
        t0 = time.monotonic()
        send_messages(ip, tag, MESSAGES)
        box = root / "var" / "mail" / "alice"
        got = wait_for_delivery(box, tag, MESSAGES, DELIVERY_TIMEOUT)
        elapsed = time.monotonic() - t0
        assert len(got) == MESSAGES, (
            f"{len(got)} of {MESSAGES} messages in {box} after {DELIVERY_TIMEOUT} s; "
            f"postfix.log: {problems(root / 'var/log/postfix.log')}")
        subjects = sorted(str(m["Subject"]) for m in got)
        assert subjects == sorted(f"{tag} message {i}" for i in range(MESSAGES))
        stamps = [tuple(m.get_all("X-Peapod-Pea") or ()) for m in got]
        bad = [s for s in stamps if s != ("delivery",)]
        assert not bad, (
            f"{len(bad)} of {MESSAGES} messages lack 'X-Peapod-Pea: delivery' (they have "
            f"{sorted(set(bad))}): procmail's recipe (sed, formail) did not run for them; "
            f"postfix.log: {problems(root / 'var/log/postfix.log')}")
        print(f"{MESSAGES} messages delivered in {elapsed:.1f} s")

        # 4. The break-in: the payload in the smtpd pea.
        audit = e2e.Audit(root)
        e2e.run_payload(run, name, "smtpd", PROBE, REFUSED, ALLOWED)
        assert not (root / "usr").joinpath("peapod-probe").exists()
        assert not (root / "etc" / "peapod-probe").exists()

        # The same shell, executed directly.
        e2e.assert_exec_refused(run, name, "smtpd", "/bin/sh", "-c", "echo a shell runs",
                                output="a shell runs")

        entries = audit.entries()
        e2e.assert_audited(entries, name, "smtpd", REFUSED, 0)
        execs = [e for e in entries if e["operation"] == "exec"]
        assert len(execs) == 2, execs   # the payload's and pod exec's
        passed = True
    finally:
        stop, left = e2e.teardown(run, name, root, stop_timeout=5)
    if passed:
        e2e.assert_clean(stop, left, root)
