"""Mail throughput: Postfix + procmail in the mail pod, on bindfs and on the host.

``rows(args) -> list[dict]`` (called by bench/apps.py), as root. The three
legs run in the same run, rotated (host, bindfs, pod; bindfs, pod, host;
...), on the same root tree and the same configuration:

- pod: a copy of examples/mail/pod.toml (its own name, root under a tmp
  dir, [pod.net] address, id range and $PEAPOD_RUN), built and started by
  examples/mail/setup: Postfix in the smtpd pea on port 25 of the pod's
  address, procmail (and the sed + formail of /etc/procmailrc) in the
  delivery pea, every file access through PeaFS, signals and sockets
  through the seccomp supervisor.
- host: a second root built by the same setup (--no-start), with the same
  main.cf, master.cf and procmailrc, except that the smtp service listens
  on 127.0.0.1:<free port> (the host's loopback: no veth). The Postfix
  master runs chrooted into that root in a private mount namespace
  (``unshare -m``) where the policy's [[pod.mount]] host directories are
  bound read-only and nosuid (as PeaFS mounts them: procmail is not
  set-uid in either leg) and /proc, /dev/null, /dev/urandom are bound in.
  That is the pod's file tree without PeaFS, peas, seccomp or the
  pid/user/net namespaces, so the ratio is what the pod costs. (The chroot
  also keeps examples/*/setup, which stops host copies of Postfix whose
  root is "/", away from it.) The host leg runs in a cgroup of its own
  named ``benchmail-host-PID`` (removed at the end), so procmailrc's stamp
  has a value there too and its processes are easy to account for.
- bindfs: a third root built the same way, on another port of 127.0.0.1,
  with the policy's [[pod.mount]] directories bound into it on the host
  and the root then served by bindfs (bench/common.py); the host leg's
  chroot is entered in the bindfs mount (cgroup ``benchmail-bindfs-PID``).
  Every file access pays FUSE and none pays PeaFS's rules, the peas or
  the namespaces: bindfs/host is the FUSE floor, pod/bindfs what the pod
  adds above it.

Each leg: N messages (1 000; ``--quick``: 100) to alice over SMTP from
CONNECTIONS parallel sessions on the host, timed from the first connect to
the last message accepted into the queue (rate: "SMTP accept"), to 99% of
them in the mailbox and to the last one in the mailbox (rate: "delivered to
mailbox"). The 99% figure is there because a message whose delivery failed
once waits for Postfix's next queue run (300 s or more) and would hide the
rate of the rest. "delivered before the last was accepted" counts the
messages already in the mailbox when the last one was accepted: delivery
shares the two cores with the accepting, and how much of it falls inside
that window changes from run to run and from leg to leg. "stamped" counts
the delivered messages whose X-Peapod-Pea header has a value (procmail's
sed ran). A message still
missing after DELIVERY_TIMEOUT is reported in the last row, not waited for.
"""

from __future__ import annotations

import os
import random
import re
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from pathlib import Path

from bench import common

REPO = Path(__file__).resolve().parent.parent
SETUP = REPO / "examples" / "mail" / "setup"
POD = [sys.executable, "-m", "pods.cli"]
CONNECTIONS = 4
DELIVERY_TIMEOUT = 600


# ------------------------------------------------------------------ helpers

def _examplelib():
    lib = str(REPO / "examples" / "mail")
    if lib not in sys.path:
        sys.path.insert(0, lib)
    import examplelib  # noqa: PLC0415

    return examplelib


def _policy_copy(dst: Path, *, name: str, root: Path, address: str, id_base: int) -> Path:
    """examples/mail/pod.toml with another name, root, address and id range."""
    return _examplelib().copy_policy(REPO / "examples" / "mail" / "pod.toml", dst, name=name,
                                     root=root, address=address, id_base=id_base)


def _run(cmd, env, timeout) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:3]))}... failed: "
                           f"{(r.stderr or r.stdout).strip()[-500:]}")
    return r


# ------------------------------------------------------------------ the two legs

class PodLeg:
    name = "pod"

    def __init__(self, base: Path):
        self.pod = f"benchmail{random.randrange(10**5):05d}"
        self.root = base / "pod-root"
        self.run = base / "pod-run"
        self.run.mkdir()
        address = _examplelib().free_address(100, 199)   # the web bench uses 200-250
        self.ip = address.split("/")[0]
        self.port = 25
        self.policy = _policy_copy(base / "pod.toml", name=self.pod, root=self.root,
                                   address=address,
                                   id_base=300_000_000 + random.randrange(500) * 65536)
        self.env = dict(os.environ, PEAPOD_RUN=str(self.run), PYTHONPATH=str(REPO))
        self.mailbox = self.root / "var" / "mail" / "alice"

    def start(self) -> None:
        _run([SETUP, "--policy", self.policy], self.env, timeout=1800)

    def stop(self) -> list[str]:
        subprocess.run(POD + ["stop", self.pod, "--timeout", "5"], env=self.env,
                       capture_output=True, timeout=120)
        left = []
        if (self.run / "pods" / self.pod).exists():
            left.append(f"runtime dir of pod {self.pod}")
        return left


class HostLeg:
    """The host leg, or with ``bindfs=True`` the bindfs leg: the same
    chroot, into bindfs of the root (bench/common.py) rather than the root
    itself; the policy's host directories are then bound into the root
    before bindfs serves it, so they too are reached through FUSE."""

    def __init__(self, base: Path, bindfs: bool = False):
        self.name = "bindfs" if bindfs else "host"
        self.root = base / f"{self.name}-root"
        self.ip = "127.0.0.1"
        self.port = _examplelib().free_port()
        self.policy = _policy_copy(base / f"{self.name}.toml", name=f"benchmail{self.name}",
                                   root=self.root, address="10.88.0.2/24", id_base=400_000_000)
        self.env = dict(os.environ, PYTHONPATH=str(REPO),
                        PEAPOD_RUN=str(base / f"{self.name}-run"))
        # Counted in the root itself, not through bindfs: the count is not the leg's work.
        self.mailbox = self.root / "var" / "mail" / "alice"
        self.proc: subprocess.Popen | None = None
        from kernel import cgroup
        self.cgroup = cgroup.cgroup2_root() / f"benchmail-{self.name}-{os.getpid()}"
        mounts = common.policy_mounts(self.policy)
        if bindfs:
            self.bindfs = common.BindfsRoot(self.root, base / "bindfs-mnt", mounts)
            self.chroot = self.bindfs.mnt
            self.mounts: list[tuple[str, str]] = []
        else:
            self.bindfs = None
            self.chroot = self.root
            self.mounts = [(m.host, m.path) for m in mounts]

    def build(self) -> None:
        _run([SETUP, "--policy", self.policy, "--no-start"], self.env, timeout=1800)
        master_cf = self.root / "etc" / "postfix" / "master.cf"
        text, n = re.subn(r"(?m)^smtp(\s+inet\s)", rf"127.0.0.1:{self.port}\1",
                          master_cf.read_text(), count=1)
        if n != 1:
            raise RuntimeError(f"{master_cf}: no smtp inet service")
        master_cf.write_text(text)

    def mount(self) -> None:
        """The bindfs leg's root: mounted (before the pod starts; see rows())."""
        if self.bindfs is not None:
            self.bindfs.start()

    def start(self) -> None:
        r = self.chroot
        self.cgroup.mkdir(exist_ok=True)
        lines = ["set -e", f"echo $$ > '{self.cgroup}/cgroup.procs'"]
        for host, path in self.mounts:
            t = r / path.lstrip("/")
            lines += [f"mkdir -p '{t}'", f"mount --bind '{host}' '{t}'",
                      f"mount -o remount,bind,ro,nosuid,nodev '{t}'"]
        lines += [f"mkdir -p '{r}/proc' '{r}/dev'", f"mount -t proc proc '{r}/proc'"]
        for dev in ("null", "urandom"):
            lines += [f"touch '{r}/dev/{dev}'", f"mount --bind /dev/{dev} '{r}/dev/{dev}'"]
        lines.append(f"exec chroot '{r}' /usr/lib/postfix/sbin/master -d")
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "/bin/sh", "-c", "\n".join(lines)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} Postfix exited: "
                                   f"{self.proc.stderr.read().decode()[-500:]}")
            try:
                with socket.create_connection((self.ip, self.port), timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} Postfix does not answer on {self.ip}:{self.port}")

    def _mine(self) -> list[int]:
        """Processes whose root is this leg's root or in its cgroup (all ours)."""
        try:
            pids = [int(x) for x in (self.cgroup / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if (os.readlink(f"/proc/{entry}/root") == str(self.chroot)
                            and int(entry) not in pids):
                        pids.append(int(entry))
                except OSError:
                    pass
        return pids

    def stop(self) -> list[str]:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        left = self._mine()
        while left and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
            left = self._mine()
        self.proc = None
        out = []
        if left:
            out.append(f"{self.name} Postfix processes {left}")
        else:
            try:
                self.cgroup.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                out.append(f"cgroup {self.cgroup}: {e.strerror}")
        if self.bindfs is not None:
            out += self.bindfs.stop()   # even with processes left: lazily then
        return out


# ------------------------------------------------------------------ the workload

def _send(ip: str, port: int, tag: str, indices: range, errors: list) -> None:
    try:
        with smtplib.SMTP(ip, port, timeout=60) as smtp:
            smtp.ehlo("bench.test")
            for i in indices:
                msg = EmailMessage()
                msg["From"] = "bench@bench.test"
                msg["To"] = "alice@mail.pod.test"
                msg["Subject"] = f"{tag} {i}"
                msg.set_content(f"benchmark message {i}\n")
                smtp.send_message(msg)
    except (OSError, smtplib.SMTPException) as e:
        errors.append(f"{type(e).__name__}: {e}")


def _count(mailbox: Path, tag: str) -> tuple[int, int]:
    """(messages of this run in the mailbox, how many of them carry a pea stamp)."""
    try:
        data = mailbox.read_bytes()
    except FileNotFoundError:
        return 0, 0
    total = stamped = 0
    for msg in data.split(b"\n\nFrom ")[0:]:
        if f"\nSubject: {tag} ".encode() in msg:
            total += 1
            m = re.search(rb"\nX-Peapod-Pea: *(\S*)", msg)
            if m and m.group(1):
                stamped += 1
    return total, stamped


def _one(leg, n: int) -> dict:
    tag = f"bench{random.randrange(10**9)}"
    per = [range(k, n, CONNECTIONS) for k in range(CONNECTIONS)]
    errors: list[str] = []
    threads = [threading.Thread(target=_send, args=(leg.ip, leg.port, tag, r, errors))
               for r in per]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = time.monotonic() - t0
    # How much of the delivery ran inside the accept window: the two
    # compete for the same two cores, and how many messages procmail
    # delivers before its mailbox lock first collides moves from round to
    # round (bench/README.md, "What an SMTP accept round holds").
    while_accepting = _count(leg.mailbox, tag)[0]
    if errors:
        raise RuntimeError(f"{leg.name}: SMTP failed: {errors[0]}")
    deadline = t0 + DELIVERY_TIMEOUT
    got = stamped = 0
    most = None
    while time.monotonic() < deadline:
        got, stamped = _count(leg.mailbox, tag)
        if most is None and got >= 0.99 * n:
            most = time.monotonic() - t0
        if got >= n:
            break
        time.sleep(0.2)
    delivered = time.monotonic() - t0
    return {"accept_s": accepted, "deliver_s": delivered, "deliver99_s": most or delivered,
            "delivered": got, "stamped": stamped, "while_accepting": while_accepting}


def rows(args) -> list[dict]:
    if os.geteuid() != 0:
        raise RuntimeError("apps_mail: must run as root")
    quick = getattr(args, "quick", False)
    n = 100 if quick else 1000
    reps = 1 if quick else 2
    base = Path(tempfile.mkdtemp(prefix="bench-mail-", dir="/var/tmp"))
    os.chmod(base, 0o755)
    pod, host, bindfs = PodLeg(base), HostLeg(base), HostLeg(base, bindfs=True)
    legs = (host, bindfs, pod)
    results: dict[str, list[dict]] = {leg.name: [] for leg in legs}
    left: list[str] = []
    try:
        host.build()
        bindfs.build()
        # bindfs is mounted before the pod starts: the pod daemon's mount
        # namespace, a copy of the host's, detaches it at once.
        bindfs.mount()
        pod.start()          # installs postfix/procmail if missing, builds, starts
        host.start()
        bindfs.start()
        for i in range(reps):
            for leg in legs[i % 3:] + legs[:i % 3]:   # rotated
                results[leg.name].append(_one(leg, n))
    finally:
        left += host.stop()
        left += bindfs.stop()
        left += pod.stop()
        if not left:
            left += common.remove_tree(base)
    if left:
        raise RuntimeError(f"apps_mail left behind: {left} (in {base})")

    def med(leg, key):
        return statistics.median(r[key] for r in results[leg])

    def row(what, unit, value):
        got = {leg: value(leg) for leg in ("pod", "bindfs", "host")}
        out = {"app": "mail", "what": what, **got, "unit": unit}
        for a, b in (("pod", "host"), ("bindfs", "host"), ("pod", "bindfs")):
            out[f"{a}/{b}"] = got[a] / got[b]
        return out

    out = []
    for what, key in (("SMTP accept", "accept_s"), ("delivered to mailbox", "deliver_s")):
        out.append(row(f"{what} ({n} msgs, {CONNECTIONS} sessions)", "msg/s",
                       lambda leg, key=key: n / med(leg, key)))
    # A count, not a rate: no ratios (the host leg may deliver none).
    out.append({"app": "mail", "what": "delivered before the last was accepted",
                **{leg: med(leg, "while_accepting") for leg in ("pod", "bindfs", "host")},
                "unit": "msgs (median)"})
    out.append(row(f"time until 99% of {n} delivered", "s",
                   lambda leg: med(leg, "deliver99_s")))
    out.append(row(f"time until all {n} delivered", "s", lambda leg: med(leg, "deliver_s")))
    counts = {leg: f"{sum(r['delivered'] for r in results[leg])}/"
                   f"{sum(r['stamped'] for r in results[leg])}" for leg in results}
    out.append({"app": "mail", "what": "delivered / stamped (all runs)", **counts,
                "unit": f"of {n * reps}"})
    return out


def run(args) -> dict:
    """``python -m bench apps_mail`` on its own (bench/apps.py calls rows())."""
    return {"rows": rows(args)}
