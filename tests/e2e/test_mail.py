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

import json
import mailbox
import os
import random
import shutil
import smtplib
import subprocess
import time
from email.message import EmailMessage
from pathlib import Path

from pods import runtime

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "examples" / "mail" / "setup"
MESSAGES = 100
DELIVERY_TIMEOUT = 120
LOADER = "/lib64/ld-linux-x86-64.so.2"
PROBE = "/var/spool/postfix/peapod-probe"

PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* The attacker's payload: each pair of arguments is an operation and a path;
   one line per pair, "OP PATH OK" or "OP PATH ERRNONAME". */
int main(int argc, char **argv) {
    char line[512], cg[512] = "?";
    FILE *f = fopen("/proc/self/cgroup", "r");   /* the unified hierarchy's line: 0::PATH */
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "0::", 3)) { line[strcspn(line, "\n")] = 0; strcpy(cg, line); }
    if (f) fclose(f);
    printf("cgroup %s\n", cg);
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *op = argv[i], *path = argv[i + 1];
        int r;
        fflush(stdout);
        if (!strcmp(op, "exec")) {
            char *const args[] = {(char *)path, "-c", "echo a shell runs", NULL};
            r = execv(path, args);
        } else if (!strcmp(op, "create")) {
            r = open(path, O_WRONLY | O_CREAT | O_EXCL, 0755);
        } else if (!strcmp(op, "write")) {
            r = open(path, O_WRONLY | O_APPEND);
        } else if (!strcmp(op, "read")) {
            r = open(path, O_RDONLY);
        } else {
            r = -1;
            errno = EINVAL;
        }
        printf("%s %s %s\n", op, path, r < 0 ? strerrorname_np(errno) : "OK");
        if (r >= 0) close(r);
    }
    return 0;
}
"""

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


def same_file(pod_path: str, other: str) -> bool:
    """Do two pod paths name the same file? /bin, /lib, /lib64 and /sbin are
    the host's symbolic links into /usr, mounted as directories of their
    own, so PeaFS may log an object under either name; the pod's mounts are
    the host's directories, so the host resolves both the same way."""
    return os.path.realpath(pod_path) == os.path.realpath(other)


def audit_entry_for(op: str, path: str, entries: list[dict]) -> dict | None:
    """The audit line the refusal of (op, path) in the smtpd pea writes."""
    for e in entries:
        if e.get("pea") != "smtpd" or e.get("complain"):
            continue
        if op == "exec":
            # The kernel opens the file the symlinks lead to (/usr/bin/dash).
            if e["operation"] == "exec" and e["need"] == "x" and same_file(e["path"], path):
                return e
        elif op == "create":
            # Creating is a write in the directory: the refused path is the directory.
            if (e["operation"] == "create" and "w" in e["need"]
                    and same_file(e["path"], os.path.dirname(path))):
                return e
        elif op in ("write", "read"):
            if (e["operation"] == "open" and same_file(e["path"], path)
                    and ("w" if op == "write" else "r") in e["need"]):
                return e
    return None


def read_audit(path: Path, offset: int) -> list[dict]:
    with open(path, "rb") as f:
        f.seek(offset)
        return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]


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
    box = mailbox.mbox(str(path), create=False)
    try:
        return list(box)
    finally:
        box.close()


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
    address = e2e.free_address()
    ip = address.split("/")[0]
    root = tmp_path / "root"
    policy = e2e.copy_policy(REPO / "examples" / "mail" / "pod.toml", tmp_path / "pod.toml",
                             name=name, root=root, address=address,
                             id_base=200_000_000 + random.randrange(1000) * 65536)
    run = e2e.PodRun(tmp_path)
    passed = False
    try:
        # 1. Packages (installed if missing) and the root, without starting.
        r = run.run([SETUP, "--policy", policy, "--no-start"], timeout=1800)
        assert r.returncode == 0, f"setup --no-start failed:\n{r.stdout}\n{r.stderr}"
        assert (root / ".peapod-built").is_file()
        assert f"{ip} mail.pod.test mail" in (root / "etc" / "hosts").read_text()

        # The attacker's payload, in the queue directory, not executable.
        src = tmp_path / "probe.c"
        src.write_text(PROBE_C)
        binary = tmp_path / "probe"
        cc = subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(src)],
                            capture_output=True, text=True, timeout=120)
        assert cc.returncode == 0, f"gcc (installed by `make deps`) failed: {cc.stderr}"
        planted = root / PROBE.lstrip("/")
        shutil.copyfile(binary, planted)
        os.chmod(planted, 0o644)

        # 2. Start: setup is idempotent (the root is kept, the pod starts).
        r = run.run([SETUP, "--policy", policy], timeout=300)
        assert r.returncode == 0, f"setup failed:\n{r.stdout}\n{r.stderr}"
        assert "is already built" in r.stdout
        assert f"answers on {ip}:25" in r.stdout
        listed = {p["name"]: p for p in run.listed()}
        assert listed.get(name, {}).get("state") == "running", listed

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
        audit = runtime.lasting_dir(root) / "audit.log"
        offset = audit.stat().st_size if audit.exists() else 0
        args = [a for pair in REFUSED + ALLOWED for a in pair]
        r = run.pod("exec", name, "--pea", "smtpd", "--", LOADER, PROBE, *args, timeout=60)
        assert r.returncode == 0, f"probe: {r.returncode} {r.stdout} {r.stderr}"
        lines = r.stdout.splitlines()
        assert lines[0] == "cgroup 0::/smtpd", f"the payload is not in the smtpd pea: {lines[0]}"
        results = {tuple(line.split()[:2]): line.split()[2] for line in lines[1:]}
        for op, path in REFUSED:
            assert results.get((op, path)) == "EACCES", f"{op} {path}: {results.get((op, path))}"
        for op, path in ALLOWED:
            assert results.get((op, path)) == "OK", f"{op} {path}: {results.get((op, path))}"
        assert not (root / "usr").joinpath("peapod-probe").exists()
        assert not (root / "etc" / "peapod-probe").exists()

        # The same shell, executed directly.
        r = run.pod("exec", name, "--pea", "smtpd", "--", "/bin/sh", "-c", "echo a shell runs",
                    timeout=60)
        assert r.returncode == 126 and "a shell runs" not in r.stdout, (r.returncode, r.stdout)
        assert "Permission denied" in r.stderr, r.stderr

        entries = read_audit(audit, offset)
        for op, path in REFUSED:
            e = audit_entry_for(op, path, entries)
            assert e is not None, f"no audit line for {op} {path} in {entries}"
            assert e["pod"] == name and e["uid"] == 0 and e["complain"] is False
        execs = [e for e in entries if e["operation"] == "exec"]
        assert len(execs) == 2, execs   # the payload's and pod exec's
        passed = True
    finally:
        stop = run.pod("stop", name, "--timeout", "5", timeout=120)
        left = e2e.leftovers(run, name, root)
        if left:
            e2e.forced_cleanup(run, name)
        e2e.safe_rmtree(root)
        shutil.rmtree(runtime.lasting_dir(root), ignore_errors=True)
        if passed:
            assert stop.returncode == 0, f"pod stop: {stop.stderr}"
            assert not left, f"left behind after pod stop: {left}"
            assert not root.exists()
