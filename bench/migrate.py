"""Checkpoint and restore: how long `pod checkpoint` and `pod restore` take,
and how big the image is, beside a plain `pod start` / `pod stop` of the
same pod and the Pea-Pod paper's figures.

``python -m bench migrate [--quick]``, as root; CRIU is built first if
missing (contrib/criu/install-criu, `make criu`). Pods, each checkpointed
and restored REPS times in a row (each restore is checkpointed next):

- idle: one service, `sleep` (one process): the fixed cost;
- counter: the checkpoint test's service (tests/pods/test_checkpoint.py), a
  shell loop with a worker moved to a second pea by a transition;
- web: examples/web (Apache with its workers and cgid, MariaDB with its
  threads: two services, three peas), set up by examples/web/setup on a
  root of its own; after each restore the CGI page must list the
  database's rows again;
- mail: examples/mail (Postfix's master and its daemons; delivery by
  procmail in another pea); after each restore a message sent over SMTP
  must be delivered. The checkpoints fall between messages: one taken
  while an SMTP connection is open is refused (docs/MIGRATION.md 2.14).

Per pod: `pod checkpoint` wall time (command to exit: the hold, criu per
tree, the manifest, the pod stopped), the daemon's own figure for hold and
dump, `pod restore` wall time (command to exit: a new daemon, PeaFS, the
verified copy, criu per tree, re-arming, the services adopted), `pod
start` and `pod stop` of the same policy (what a restore costs beyond a
start), the image's size and the number of processes. Medians of REPS.

The paper (section 4, its applications): checkpoint 0.08-0.85 s, restart
0.05-0.94 s, images of 0.8-35 MB.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
POD = [str(Path(sys.prefix) / "bin" / "pod")]
PAPER = {"checkpoint_s": "0.08-0.85", "restore_s": "0.05-0.94", "image_mb": "0.8-35"}

# The counter of tests/pods/test_checkpoint.py (a worker in a second pea).
COUNTER_PEAS = """
[pea.app.files]
"/" = "r"
"/usr/" = "rx"
"/srv/data" = "rw"
"/srv/data/" = "rw"
"/srv/bin/" = "rx"

[pea.app.exec]
"/srv/bin/worker" = "work"

[pea.work.files]
"/" = "r"
"/usr/" = "rx"
"/srv/bin/worker" = "rx"
"""
COUNTER = ("/srv/bin/worker 100000 & i=0; while :; do i=$((i+1)); echo $i > /srv/data/count; "
           "sleep 0.1; done")


def _run(cmd, env, timeout=600) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], env=env, timeout=timeout, capture_output=True,
                       text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def _timed(cmd, env) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = _run(cmd, env)
    return time.perf_counter() - t0, r


def _make_root(root: Path) -> None:
    for d in ("etc", "tmp", "root", "srv/bin", "srv/data"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    for link in ("bin", "lib", "lib64", "sbin"):
        os.symlink(f"usr/{link}", root / link)
    shutil.copy("/usr/bin/sleep", root / "srv/bin/worker")


def _policy(base: Path, name: str, service: list[str], peas: str, pea: str) -> Path:
    root = base / "root"
    _make_root(root)
    uid = 600_000_000 + random.randrange(1000) * 65536
    text = f"""[pod]
name = "{name}"
root = "{root}"
uid_map = [[0, {uid}, 65536]]
gid_map = [[0, {uid}, 65536]]
default_pea = "{pea}"
accept_gaps = ["proc-read", "ipc-after-transition"]

[[pod.mount]]
host = "/usr"
path = "/usr"

[[pod.service]]
name = "main"
pea = "{pea}"
exec = {json.dumps(service)}
{peas}"""
    policy = base / "pod.toml"
    policy.write_text(text)
    return policy


class Leg:
    """One pod of the benchmark: its policy, $PEAPOD_RUN, and a check that
    it works after a restore."""

    def __init__(self, label: str, base: Path, policy: Path, name: str, check=None):
        self.label, self.base, self.policy, self.name = label, base, policy, name
        self.env = dict(os.environ, PEAPOD_RUN=str(base / "run"))
        self.check = check or (lambda: None)

    def processes(self) -> int:
        from kernel import cgroup

        return len(cgroup.pids_in(self.name)) - 2      # pid 1 and the keeper are ours

    def stop(self) -> None:
        subprocess.run(POD + ["stop", self.name], env=self.env, capture_output=True, timeout=120)


def _cycle(leg: Leg, reps: int) -> dict:
    """Start/stop once for reference, then REPS checkpoint + restore."""
    starts, stops, ckpts, dumps, restores, sizes, procs = [], [], [], [], [], [], []
    for _ in range(2):
        t, _ = _timed(POD + ["start", leg.policy], leg.env)
        starts.append(t)
        leg.check()
        t, _ = _timed(POD + ["stop", leg.name], leg.env)
        stops.append(t)
    _run(POD + ["start", leg.policy], leg.env)
    leg.check()
    for i in range(reps):
        img = leg.base / f"img{i}"
        procs.append(leg.processes())
        t, r = _timed(POD + ["checkpoint", leg.name, img, "--json"], leg.env)
        ckpts.append(t)
        reply = json.loads(r.stdout)
        dumps.append(reply["seconds"])
        sizes.append(reply["bytes"] / 1e6)
        deadline = time.monotonic() + 60
        while (leg.base / "run" / "pods" / leg.name).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        t, _ = _timed(POD + ["restore", img], leg.env)
        restores.append(t)
        leg.check()
    leg.stop()
    med = statistics.median
    return {"pod": leg.label, "processes": max(procs),
            "checkpoint_s": round(med(ckpts), 3), "hold_and_dump_s": round(med(dumps), 3),
            "restore_s": round(med(restores), 3), "start_s": round(med(starts), 3),
            "stop_s": round(med(stops), 3),
            "restore_minus_start_s": round(med(restores) - med(starts), 3),
            "image_mb": round(med(sizes), 2)}


def _web_leg(base: Path) -> Leg:
    sys.path.insert(0, str(REPO / "examples" / "mail"))
    import examplelib as ex  # noqa: PLC0415

    name = f"webm{random.randrange(10**6):06d}"
    address = ex.free_address(200, 250)
    ip = address.split("/")[0]
    policy = ex.copy_policy(REPO / "examples/web/pod.toml", base / "pod.toml", name=name,
                            root=base / "pod-root", address=address,
                            id_base=700_000_000 + random.randrange(1000) * 65536)
    env = dict(os.environ, PEAPOD_RUN=str(base / "run"))
    r = subprocess.run([str(REPO / "examples/web/setup"), "--policy", str(policy), "--no-start"],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=1800,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"examples/web/setup: {r.stderr.strip() or r.stdout.strip()}")
    from bench.apps_web import _wait_rows  # noqa: PLC0415

    return Leg("web (Apache + MariaDB)", base, policy, name,
               check=lambda: _wait_rows(f"http://{ip}:80/cgi-bin/items", 60))


def _mail_leg(base: Path) -> Leg:
    """examples/mail (Postfix's master and its daemons, procmail): checked
    after each restore by a message sent over SMTP and delivered."""
    import smtplib  # noqa: PLC0415

    from bench import apps_mail  # noqa: PLC0415

    ex = apps_mail._examplelib()
    name = f"mailm{random.randrange(10**5):05d}"
    address = ex.free_address(100, 199)
    ip = address.split("/")[0]
    root = base / "pod-root"
    policy = apps_mail._policy_copy(base / "pod.toml", name=name, root=root, address=address,
                                    id_base=710_000_000 + random.randrange(1000) * 65536)
    env = dict(os.environ, PEAPOD_RUN=str(base / "run"))
    r = subprocess.run([str(apps_mail.SETUP), "--policy", str(policy), "--no-start"], env=env,
                       cwd=REPO, capture_output=True, text=True, timeout=1800,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"examples/mail/setup: {r.stderr.strip() or r.stdout.strip()}")
    mailbox = root / "var/mail/alice"
    sent = [0]

    def check() -> None:
        sent[0] += 1
        deadline = time.monotonic() + 60
        while True:
            try:
                with smtplib.SMTP(ip, 25, timeout=30) as s:
                    s.sendmail("bob@example.org", ["alice@mail.pod.test"],
                               f"Subject: migrate {sent[0]}\r\n\r\nafter a restore\r\n")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        while time.monotonic() < deadline:
            text = mailbox.read_text(errors="replace") if mailbox.exists() else ""
            if f"Subject: migrate {sent[0]}\n" in text:
                return
            time.sleep(0.1)
        raise RuntimeError(f"message {sent[0]} not delivered")

    return Leg("mail (Postfix + procmail)", base, policy, name, check=check)


def rows(args) -> list[dict]:
    quick = getattr(args, "quick", False)
    reps = 2 if quick else 5
    r = subprocess.run([str(REPO / "contrib/criu/install-criu")], capture_output=True, text=True,
                       timeout=1800, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"contrib/criu/install-criu: {r.stderr.strip()[-500:]}")
    top = Path(tempfile.mkdtemp(prefix="bench-migrate-", dir="/var/tmp"))
    out = []
    legs = []
    try:
        for label, service, peas, pea in (
                ("idle (one sleep)", ["/usr/bin/sleep", "100000"], '[pea.main.files]\n"/" = "rwx"\n',
                 "main"),
                ("counter (2 peas)", ["/bin/sh", "-c", COUNTER], COUNTER_PEAS, "app")):
            base = top / label.split()[0]
            base.mkdir()
            name = f"mig{label[0]}{random.randrange(10**5):05d}"
            legs.append(Leg(label, base, _policy(base, name, service, peas, pea), name))
        if not quick:
            for label, make in (("web", _web_leg), ("mail", _mail_leg)):
                base = top / label
                base.mkdir()
                legs.append(make(base))
        for leg in legs:
            out.append(_cycle(leg, reps))
        out.append({"pod": "the paper (its applications)", **PAPER})
    finally:
        for leg in legs:
            leg.stop()
        shutil.rmtree(top, ignore_errors=True)
    return out


def run(args) -> dict:
    return {"rows": rows(args), "reps": 2 if getattr(args, "quick", False) else 5}
