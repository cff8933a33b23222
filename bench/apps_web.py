"""The web stack (Apache, a CGI program, MariaDB) in its pod, on bindfs and on the host.

``rows(args) -> list[dict]`` (called by bench/apps.py; ``python -m bench
apps_web [--quick]`` runs it alone), as root. The three legs run the same
stack, built by examples/web/setup from a copy of examples/web/pod.toml: the
same Apache configuration, the same CGI program (python3 + pymysql), the
same MariaDB with the same data, each in a root of its own under a
temporary directory:

- pod: the pod (its own name, root, address 10.88.N.2/24 with N in 200-250,
  $PEAPOD_RUN), Apache in the httpd pea on port 80 of the pod's address (over
  its veth), the CGI in the cgi pea, MariaDB in the db pea: PeaFS, the
  seccomp filter and supervisor, the namespaces.
- host: the second root, entered with chroot (in a private mount namespace
  holding a read-only bind of /usr, /dev/null, /dev/zero, /dev/urandom and a
  /proc), Apache on 127.0.0.1:PORT (a free port; ports.conf's WEB_LISTEN
  define) and MariaDB started by host root, no PeaFS, no filter.
- bindfs: the third root with the host's /usr bound in (as the pod places
  its [[pod.mount]]), served by bindfs on the host (bench/common.py), and the
  host leg's chroot entered there, on another port of 127.0.0.1: every file
  access pays FUSE, none pays PeaFS's rules, the peas or the namespaces.

The load is wrk (Debian package wrk, installed if missing; ab from
apache2-utils if wrk cannot be had): the static page ``/`` and the CGI page
``/cgi-bin/items`` (a python3 process and a database query per request),
legs rotated inside one run, median of the repetitions. Figures, one row
each: requests/s, latency p50 and p99 (ms), and the ratios pod/host,
bindfs/host (the FUSE floor) and pod/bindfs (what the pod adds above it).
The load generator runs on the same 2-core machine as the server on every
leg.

``--quick``: 2 s per measurement, one repetition.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "examples" / "web" / "setup"
POLICY = REPO / "examples" / "web" / "pod.toml"
POD = [sys.executable, "-m", "pods.cli"]
PAGES = [("static /", "/", 16), ("cgi /cgi-bin/items", "/cgi-bin/items", 4)]  # (name, path, connections)
ROWS_EXPECTED = 5
APACHE_DEFINES = ["APACHE_RUN_USER www-data", "APACHE_RUN_GROUP www-data",
                  "APACHE_RUN_DIR /run/apache2", "APACHE_PID_FILE /run/apache2/apache2.pid",
                  "APACHE_LOCK_DIR /run/lock/apache2", "APACHE_LOG_DIR /var/log/apache2"]


# ------------------------------------------------------------------ helpers

def _examplelib():
    lib = str(REPO / "examples" / "mail")
    if lib not in sys.path:
        sys.path.insert(0, lib)
    import examplelib  # noqa: PLC0415

    return examplelib


def _env(run: Path) -> dict:
    return dict(_examplelib().pod_env(), PEAPOD_RUN=str(run))


def _get(url: str, timeout: float = 10) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def _wait_rows(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            status, body = _get(url)
            if status == 200 and len(body.splitlines()) == ROWS_EXPECTED:
                return
            last = f"{status}: {body[:200]}"
        except OSError as e:
            last = str(e)
        time.sleep(0.3)
    raise RuntimeError(f"{url} does not list the rows within {timeout} s ({last})")


# ------------------------------------------------------------------ the load tool

def _load_tool() -> str:
    if shutil.which("wrk"):
        return "wrk"
    ex = _examplelib()
    try:
        ex.ensure_packages(["wrk"])
        return "wrk"
    except ex.SetupError as e:
        print(f"bench apps_web: no wrk ({e}); using ab", file=sys.stderr)
    if not shutil.which("ab"):
        ex.ensure_packages(["apache2-utils"])
    return "ab"


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def _measure(tool: str, url: str, connections: int, seconds: float) -> dict:
    if tool == "wrk":
        cmd = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s", "--latency",
               "--timeout", "10s", url]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        if r.returncode != 0:
            raise RuntimeError(f"wrk failed: {r.stderr.strip() or r.stdout.strip()}")
        out = r.stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        lat = {p: _ms(v, u) for p, v, u in
               re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
        m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
        errors = int(m.group(1)) if m else 0
        m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        if m:
            errors += sum(int(x) for x in m.groups())
        return {"req_s": rps, "p50_ms": lat["50"], "p99_ms": lat["99"], "errors": errors}
    # ab: a number of requests rather than a duration; about `seconds` worth.
    n = max(200, int(seconds * (2000 if "cgi-bin" not in url else 40)))
    r = subprocess.run(["ab", "-q", "-n", str(n), "-c", str(connections), "-s", "10", url],
                       capture_output=True, text=True, timeout=seconds * 10 + 120)
    if r.returncode != 0:
        raise RuntimeError(f"ab failed: {r.stderr.strip() or r.stdout.strip()}")
    out = r.stdout
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))
    lat = {p: float(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\d+)", out, re.M)}
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    m = re.search(r"Non-2xx responses:\s+(\d+)", out)
    return {"req_s": rps, "p50_ms": lat["50"], "p99_ms": lat["99"],
            "errors": failed + (int(m.group(1)) if m else 0)}


# ------------------------------------------------------------------ the host leg

def chroot_leg_main(root: str, port: int, bind_usr: bool) -> int:
    """Run as a child: a private mount namespace, chroot into ROOT, MariaDB
    and Apache (on 127.0.0.1:PORT) until SIGTERM; then stop both. With
    ``bind_usr``, the host's /usr is bound read-only into ROOT first (the
    bindfs leg has it already, through bindfs)."""
    from kernel import libc  # noqa: PLC0415
    from pods import namespaces as ns  # noqa: PLC0415

    libc.unshare(libc.CLONE_NEWNS)
    ns.mount(None, "/", None, ns.MS_REC | ns.MS_PRIVATE)
    r = Path(root)
    if bind_usr:
        ns.mount("/usr", str(r / "usr"), None, ns.MS_BIND)
        ns.mount(None, str(r / "usr"), None,
                 ns.MS_BIND | ns.MS_REMOUNT | ns.MS_RDONLY | ns.MS_NOSUID | ns.MS_NODEV)
    ns.mount("proc", str(r / "proc"), "proc", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC)
    for dev in ("null", "zero", "urandom"):
        ns.mount(f"/dev/{dev}", str(r / "dev" / dev), None, ns.MS_BIND)
    os.chroot(root)
    os.chdir("/")
    env = {"PATH": "/usr/sbin:/usr/bin", "LANG": "C"}
    with open("/var/log/mysql/mariadbd-host.log", "ab") as log:
        db = subprocess.Popen(["/usr/sbin/mariadbd"], stdin=subprocess.DEVNULL, stdout=log,
                              stderr=log, env=env)
    defines = []
    for d in APACHE_DEFINES + [f"WEB_LISTEN 127.0.0.1:{port}"]:
        defines += ["-C", f"Define {d}"]
    web = subprocess.Popen(["/usr/sbin/apache2", "-DFOREGROUND", *defines],
                           stdin=subprocess.DEVNULL, env=env)
    # Blocked only now: the children must not inherit a blocked SIGTERM.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    print("started", flush=True)
    signal.sigwait({signal.SIGTERM})
    for p in (web, db):
        p.terminate()
    for p in (web, db):
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return 0


def prepare_chroot(root: Path) -> None:
    """The mount points a chroot leg needs in a root that setup built."""
    for d in ("usr", "proc", "dev"):
        (root / d).mkdir(exist_ok=True)
    for dev in ("null", "zero", "urandom"):
        (root / "dev" / dev).touch()


class ChrootLeg:
    """The stack chrooted into ``root`` on the host (the host leg), or into
    the bindfs mount of a root (the bindfs leg, ``bind_usr=False``)."""

    def __init__(self, root: Path, port: int, run: Path, bind_usr: bool = True):
        self.root, self.port = root, port
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--chroot-leg", str(root), str(port),
             "usr" if bind_usr else "no-usr"],
            env=_env(run), stdout=subprocess.PIPE, text=True, cwd="/",
            start_new_session=True)
        line = self.proc.stdout.readline().strip()
        if line != "started":
            self.stop()
            raise RuntimeError(f"chroot leg in {root} did not start (exit {self.proc.poll()})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            # Whatever is left of its session (a worker that outlived Apache).
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc.stdout.close()


# ------------------------------------------------------------------ rows

def _setup(policy: Path, run: Path, *extra: str) -> None:
    r = subprocess.run([str(SETUP), "--policy", str(policy), *extra], env=_env(run), cwd=REPO,
                       capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"examples/web/setup {' '.join(extra)} failed: "
                           f"{r.stderr.strip() or r.stdout.strip()}")


LEGS = ("pod", "bindfs", "host")
METRICS = ("req_s", "p50_ms", "p99_ms")


def rows(args) -> list[dict]:
    from bench import common  # noqa: PLC0415 - not needed by the chroot leg's child

    quick = getattr(args, "quick", False)
    seconds = 2.0 if quick else 10.0
    reps = 1 if quick else 3
    tool = _load_tool()
    base = Path(tempfile.mkdtemp(prefix="bench-web-", dir="/var/tmp"))
    name = f"webb{random.randrange(10**6):06d}"
    run = base / "run"
    run.mkdir()
    ex = _examplelib()
    # N in 200-250: the web share of 10.88/16 (the mail bench uses 100-199).
    address = ex.free_address(200, 250)
    ip = address.split("/")[0]
    pod_policy = ex.copy_policy(POLICY, base / "pod.toml", name=name, root=base / "pod-root",
                                address=address,
                                id_base=400_000_000 + random.randrange(1000) * 65536)
    # The host and bindfs legs' roots: built by the same setup (never started as pods).
    host_policy = ex.copy_policy(POLICY, base / "host.toml", name=name + "h",
                                 root=base / "host-root", address=address, id_base=1_000_000)
    bindfs_policy = ex.copy_policy(POLICY, base / "bindfs.toml", name=name + "b",
                                   root=base / "bindfs-root", address=address,
                                   id_base=1_000_000)
    bindfs = common.BindfsRoot(base / "bindfs-root", base / "bindfs-mnt",
                               common.policy_mounts(bindfs_policy))
    chroots: list[ChrootLeg] = []
    started = False
    left: list[str] = []
    raw: dict[str, dict[str, list[dict]]] = {}
    try:
        _setup(host_policy, run, "--no-start")
        _setup(bindfs_policy, run, "--no-start")
        prepare_chroot(base / "host-root")
        prepare_chroot(base / "bindfs-root")
        # Mounted before the pod starts: the pod daemon's mount namespace,
        # a copy of the host's, detaches it at once.
        bindfs.start()
        started = True
        _setup(pod_policy, run)
        ports = {"host": ex.free_port()}
        chroots.append(ChrootLeg(base / "host-root", ports["host"], run))
        ports["bindfs"] = ex.free_port()
        chroots.append(ChrootLeg(bindfs.mnt, ports["bindfs"], run, bind_usr=False))
        urls = {"pod": f"http://{ip}:80", "bindfs": f"http://127.0.0.1:{ports['bindfs']}",
                "host": f"http://127.0.0.1:{ports['host']}"}
        for leg in LEGS:
            _wait_rows(urls[leg] + "/cgi-bin/items", 60)
        for label, path, conns in PAGES:
            for leg in LEGS:   # warm-up: caches, Apache's workers, MariaDB's pool
                _measure(tool, urls[leg] + path, conns, 1)
            for i in range(reps):
                for leg in LEGS[i % 3:] + LEGS[:i % 3]:   # rotated
                    raw.setdefault(label, {}).setdefault(leg, []).append(
                        _measure(tool, urls[leg] + path, conns, seconds))
    finally:
        for leg in chroots:
            leg.stop()
        if started:
            subprocess.run(POD + ["stop", name, "--timeout", "10"], env=_env(run), cwd=REPO,
                           capture_output=True, timeout=120)
        left += bindfs.stop()
        left += common.remove_tree(base)
    if left:
        raise RuntimeError(f"apps_web left mounted: {left} (in {base})")

    out = []
    for label, path, conns in PAGES:
        med = {leg: {k: statistics.median(m[k] for m in raw[label][leg]) for k in METRICS}
               for leg in LEGS}
        errors = sum(m["errors"] for leg in raw[label].values() for m in leg)
        for k in METRICS:
            row: dict = {"workload": f"web {label}", "metric": k}
            row.update({leg: med[leg][k] for leg in LEGS})
            for a, b in (("pod", "host"), ("bindfs", "host"), ("pod", "bindfs")):
                row[f"{a}/{b}"] = med[a][k] / med[b][k] if med[b][k] else None
            row.update({"tool": tool, "connections": conns, "seconds": seconds, "reps": reps,
                        "errors": errors})
            out.append(row)
    return out


def run(args) -> dict:
    """``python -m bench apps_web``: the rows alone."""
    r = rows(args)
    return {"rows": r, "params": {"pages": [p[1] for p in PAGES],
                                  "connections": {p[1]: p[2] for p in PAGES}}}


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--chroot-leg":
        sys.exit(chroot_leg_main(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "usr"))
    print("usage: python -m bench apps_web [--quick]", file=sys.stderr)
    sys.exit(2)
