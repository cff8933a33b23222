"""What the example pods' setup scripts share (examples/mail/setup, examples/web/setup).

Standard library only: the setup scripts run before anything else is
installed. Each step prints what it does and fails with one clear line:

- packages: installed only if missing, with a /usr/sbin/policy-rc.d that
  exits 101 for the duration, so the packages' maintainer scripts never start
  the host's copy of a daemon (an existing policy-rc.d is put back as it was);
- host daemons: a copy of a pod's daemon running on the host (outside every
  pod) is stopped, so the host keeps none running;
- the root: built in ``.ROOT.new-PID`` next to the final directory, marked
  with /.peapod-built and renamed into place last; a directory at the root's
  place without the marker is a root left over and is reported, not used;
- the pod: `pod start POLICY`, then wait until its service answers on the
  pod's address.

The example tests (tests/e2e) and the app benchmarks (bench/apps_*.py) use
it too, to run an example beside its own pod: ``copy_policy`` (the example's
policy with another name, root, address and id range), ``free_address``
(a 10.88.N.2/24 no interface is on, N in a given range), ``free_port``.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARKER = ".peapod-built"
POLICY_RC = Path("/usr/sbin/policy-rc.d")


class SetupError(Exception):
    """A failure, reported as one line and exit status 1."""


def say(msg: str) -> None:
    print(f"setup: {msg}", flush=True)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ------------------------------------------------------------------ the policy

class PolicyInfo:
    """The few [pod] values setup needs, read with tomllib (the policy is
    checked in full by `pod start`)."""

    def __init__(self, path: Path):
        self.path = path.resolve()
        try:
            data = tomllib.loads(self.path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise SetupError(f"policy {path}: {e}") from e
        pod = data.get("pod", {})
        self.name = pod.get("name", "")
        root = Path(pod.get("root", ""))
        self.root = root if root.is_absolute() else (self.path.parent / root)
        address = pod.get("net", {}).get("address")
        self.ip = self.host_ip = None
        if address:
            ip, _, prefix = address.partition("/")
            self.ip = ip
            parts = ip.split(".")
            self.host_ip = ".".join(parts[:3] + ["1"])
            self.prefix = int(prefix or 24)


# ------------------------------------------------------------------ copies (tests, benchmarks)

# What the example tests (tests/e2e) and the app benchmarks (bench/apps_*.py)
# share: each runs an example under its own pod name, root, address and id
# range, beside the example's own pod and each other.

def copy_policy(src: Path, dst: Path, *, name: str, root: Path, address: str | None = None,
                id_base: int | None = None) -> Path:
    """Write ``dst``: ``src`` with [pod] name/root (and uid_map/gid_map when
    ``id_base`` is given) and [pod.net] address replaced; every other line
    is kept (the peas are the example's, byte for byte). SetupError if a key
    to replace is not found."""
    table = None
    want = {("pod", "name"): json.dumps(name), ("pod", "root"): json.dumps(str(root))}
    if id_base is not None:
        want[("pod", "uid_map")] = f"[[0, {id_base}, 65536]]"
        want[("pod", "gid_map")] = f"[[0, {id_base}, 65536]]"
    if address is not None:
        want[("pod.net", "address")] = json.dumps(address)
    done = set()
    out = []
    for line in src.read_text().splitlines(keepends=True):
        m = re.match(r"\s*\[([^\[\]]+)\]\s*(#.*)?$", line)
        if m:
            table = m.group(1).strip()
        m = re.match(r"(\s*)([A-Za-z_]+)(\s*=\s*)", line)
        if m and (table, m.group(2)) in want and (table, m.group(2)) not in done:
            key = (table, m.group(2))
            line = f"{m.group(1)}{m.group(2)}{m.group(3)}{want[key]}\n"
            done.add(key)
        out.append(line)
    missing = set(want) - done
    if missing:
        raise SetupError(f"{src}: keys not found to replace: {sorted(missing)}")
    dst.write_text("".join(out))
    return dst


def free_address(first: int, last: int) -> str:
    """"10.88.N.2/24" with a random N in first-last (both included) such that
    no interface holds an address in 10.88.N.0/24 (the host side 10.88.N.1
    included): the caller's share of 10.88/16."""
    used = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                          timeout=20).stdout
    for _ in range(200):
        n = random.randint(first, last)
        if f" 10.88.{n}." not in used:
            return f"10.88.{n}.2/24"
    raise SetupError(f"no free 10.88.N.0/24 network (N in {first}-{last})")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ pod command

def pod_command() -> list[str]:
    front = REPO / ".venv" / "bin" / "pod"    # `make deps` builds it (pods/pod_front.c)
    if front.is_file():
        return [str(front)]
    venv = REPO / ".venv" / "bin" / "python"
    if venv.exists():
        return [str(venv), "-m", "pods.cli"]
    found = shutil.which("pod")
    if found:
        return [found]
    raise SetupError("the `pod` command is not installed (run `make deps` in the repository)")


def pod_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def pod(*args, timeout=120, check=False) -> subprocess.CompletedProcess:
    r = subprocess.run(pod_command() + [str(a) for a in args], env=pod_env(), text=True,
                       capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise SetupError(f"pod {args[0]} failed: {r.stderr.strip() or r.stdout.strip()}")
    return r


def pod_running(name: str) -> bool:
    r = pod("list", "--json")
    if r.returncode != 0:
        raise SetupError(f"pod list failed: {r.stderr.strip()}")
    return any(p.get("name") == name and p.get("state") in ("running", "starting")
               for p in json.loads(r.stdout or "[]"))


def run_dir() -> Path:
    return Path(os.environ.get("PEAPOD_RUN", "/run/peapod"))


# ------------------------------------------------------------------ packages

def missing_packages(packages: list[str]) -> list[str]:
    missing = []
    for p in packages:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                           text=True)
        if r.returncode != 0 or "install ok installed" not in r.stdout:
            missing.append(p)
    return missing


# Held while a setup checks and installs packages: two setups run at once
# (mail and web) must not interleave their policy-rc.d (the second would save
# the first's copy and put it back after the first removed it, or install
# with none in place once the first removed it).
INSTALL_LOCK = Path("/run/lock/peapod-setup-packages.lock")
# apt-get waits this long for dpkg's own lock (another apt-get, unattended-upgrades).
APT_LOCK = ["-o", "DPkg::Lock::Timeout=600"]


def ensure_packages(packages: list[str], debconf: list[str] = ()) -> None:
    if not missing_packages(packages):
        return
    INSTALL_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(INSTALL_LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("waiting for another setup to finish installing packages")
            fcntl.flock(lock, fcntl.LOCK_EX)
        _install_missing(packages, debconf)


def _install_missing(packages: list[str], debconf: list[str]) -> None:
    missing = missing_packages(packages)
    if not missing:
        return
    say(f"installing Debian packages: {' '.join(missing)}")
    if debconf:
        subprocess.run(["debconf-set-selections"], input="\n".join(debconf) + "\n", text=True,
                       check=False, capture_output=True)
    saved = POLICY_RC.read_bytes() if POLICY_RC.exists() else None
    saved_mode = POLICY_RC.stat().st_mode if saved is not None else None
    # 101 = "action forbidden": invoke-rc.d then starts nothing on install.
    POLICY_RC.write_text("#!/bin/sh\n# examples/*/setup: no daemon starts on install\nexit 101\n")
    os.chmod(POLICY_RC, 0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        r = subprocess.run(["apt-get", *APT_LOCK, "install", "-y", "-q", "--no-install-recommends",
                            *missing], env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            # A fresh machine may have no package lists yet.
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True,
                           timeout=600)
            r = subprocess.run(["apt-get", *APT_LOCK, "install", "-y", "-q", "--no-install-recommends",
                                *missing], env=env, capture_output=True, text=True,
                               timeout=900)
        if r.returncode != 0:
            last = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:]
            raise SetupError(f"cannot install {' '.join(missing)}: "
                             f"{last[0] if last else 'apt-get failed'}")
    finally:
        if saved is None:
            POLICY_RC.unlink(missing_ok=True)
        else:
            POLICY_RC.write_bytes(saved)
            os.chmod(POLICY_RC, saved_mode)
    still = missing_packages(packages)
    if still:
        raise SetupError(f"Debian packages still missing after install: {' '.join(still)}")


def stop_host_daemons(programs: list[str]) -> None:
    """SIGTERM to host copies (processes in the host's pid namespace) of the
    pods' daemons: the host runs none of them."""
    host_ns = os.readlink("/proc/self/ns/pid")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{entry}/exe")
            ns = os.readlink(f"/proc/{entry}/ns/pid")
        except OSError:
            continue
        if exe in programs and ns == host_ns:
            # Only a copy started on the host (a pod's copy lives in the pod's
            # own pid namespace, a host bench's copy is chrooted).
            try:
                if os.readlink(f"/proc/{entry}/root") != "/":
                    continue
                os.kill(int(entry), 15)
                say(f"stopped the host's copy of {exe} (pid {entry})")
            except OSError:
                pass


# ------------------------------------------------------------------ the root

USR_MERGE_LINKS = ("bin", "lib", "lib64", "sbin")


def base_tree(root: Path, *, hostname: str, hosts_line: str) -> None:
    """What every example pod's root holds besides its service: the files
    the C library reads, /tmp, /root, /run, and Debian's usr-merge links
    /bin, /lib, /lib64, /sbin -> usr/...: the policy mounts only /usr (the
    pod's daemon makes its mount point and binds the host's), so every
    program and library has one name in the pod."""
    for link in USR_MERGE_LINKS:
        os.symlink(f"usr/{link}", root / link)
    for d, mode in (("etc", 0o755), ("tmp", 0o1777), ("root", 0o700), ("run", 0o755),
                    ("var/log", 0o755), ("var/tmp", 0o1777), ("home", 0o755)):
        (root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(root / d, mode)
    etc = root / "etc"
    for f in ("nsswitch.conf", "services", "protocols", "ld.so.cache", "host.conf",
              "mime.types"):
        if Path("/etc", f).exists():
            shutil.copy2(Path("/etc", f), etc / f)
    os.symlink("/usr/share/zoneinfo/Etc/UTC", etc / "localtime")
    write(etc / "hostname", hostname + "\n")
    write(etc / "hosts", f"127.0.0.1 localhost\n{hosts_line}\n")
    write(etc / "resolv.conf", "# no DNS in this pod\n")


def remove_stale_temps(root: Path) -> None:
    """Temporary roots of earlier runs that died (their pid is gone)."""
    for tmp in root.parent.glob(f".{root.name}.new-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and Path(f"/proc/{pid}").exists() and int(pid) != os.getpid():
            continue
        say(f"removing {tmp} (left by an earlier setup that failed)")
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_root(root: Path, build, rebuild: bool, running: bool) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root)
    if root.exists() or root.is_symlink():
        if not (root / MARKER).is_file() or root.is_symlink():
            raise SetupError(f"{root} exists but was not built by this setup (no /{MARKER} "
                             f"inside): a root left over; move it away and run setup again")
        if not rebuild:
            if not all((root / link).is_symlink() for link in USR_MERGE_LINKS):
                # Built by a setup from before the policies mounted /usr alone:
                # without the links, /lib64/ld-linux-x86-64.so.2 is missing.
                raise SetupError(f"{root} was built by an older setup (no usr-merge links "
                                 f"{', '.join(USR_MERGE_LINKS)}): run setup with --rebuild")
            say(f"root {root} is already built")
            return
        if running:
            raise SetupError("--rebuild: stop the pod first")
        say(f"removing {root} (--rebuild)")
        shutil.rmtree(root)
    # A new root holds new files: hard-link rules kept for the old one
    # (ROOT.peapod/links.json, pods/runtime.lasting_dir) would give their
    # rules to whatever now has those paths. The audit log stays.
    links = root.parent / f"{root.name}.peapod" / "links.json"
    if links.exists():
        say(f"removing {links} (the link rules of the previous root)")
        links.unlink()
    tmp = root.parent / f".{root.name}.new-{os.getpid()}"
    say(f"building the root in {tmp}")
    tmp.mkdir(mode=0o755)
    try:
        build(tmp)
        write(tmp / MARKER, json.dumps({"built": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                time.gmtime())}) + "\n")
        os.chmod(tmp / MARKER, 0o600)
        os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"root ready: {root}")


# ------------------------------------------------------------------ starting

def address_in_use(ip: str) -> str | None:
    """The host interface that already holds ``ip`` (another pod with the
    same [pod.net] address), or None."""
    r = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                       timeout=20)
    for line in r.stdout.splitlines():
        m = re.search(r"^\d+:\s+(\S+)\s+inet\s+([\d.]+)/", line)
        if m and m.group(2) == ip:
            return m.group(1)
    return None


def wait_for_port(ip: str, port: int, timeout: float, init_log: Path | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if init_log is not None and " ended: " in tail(init_log, 3):
            return False   # the pod's init program exited: nothing will answer
        try:
            with socket.create_connection((ip, port), timeout=2):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_pod(info: PolicyInfo, port: int, service: str, logs: list[Path]) -> None:
    if info.host_ip:
        used = address_in_use(info.host_ip)
        if used:
            raise SetupError(f"address {info.host_ip} (host side of {info.ip}) is already on "
                             f"interface {used}: another pod with the same [pod.net] address "
                             f"is running; stop it first")
    say(f"starting pod {info.name}: pod start {info.path}")
    r = pod("start", info.path, timeout=180)
    if r.returncode != 0:
        raise SetupError(f"pod start failed: {r.stderr.strip()}")
    if info.ip:
        init_log = run_dir() / "pods" / info.name / "init.log"
        if not wait_for_port(info.ip, port, 60, init_log):
            detail = "; ".join(t for t in (tail(p, 5) for p in [init_log, *logs]) if t)
            pod("stop", info.name, timeout=120)
            raise SetupError(f"{service} does not answer on {info.ip}:{port} within 60 s "
                             f"(port in use or the service failed; pod stopped)"
                             f"{': ' + detail if detail else ''}")
        say(f"{service} answers on {info.ip}:{port}")


def add_common_args(p, default_policy: Path) -> None:
    p.add_argument("--policy", type=Path, default=default_policy,
                   help=f"the pod's policy (default {default_policy})")
    p.add_argument("--rebuild", action="store_true",
                   help="rebuild the root even if it is already built (the pod must be stopped)")
    p.add_argument("--no-start", action="store_true", help="build only, do not start the pod")


def run_setup(args, *, example: str, packages, debconf, host_daemons, build, port, service,
              after_start=None, logs=(), before_start=None) -> int:
    """``before_start(info)``: called when the pod is about to start (not
    running), e.g. to clear a run directory of the root as a boot would."""
    try:
        if os.geteuid() != 0:
            raise SetupError("must run as root (packages, pod root ownership, pods)")
        info = PolicyInfo(args.policy)
        ensure_packages(packages, debconf)
        stop_host_daemons(host_daemons)
        running = pod_running(info.name)
        ensure_root(info.root, build, args.rebuild, running)
        if args.no_start:
            return 0
        if running:
            say(f"pod {info.name} is already running")
            return 0
        if before_start is not None:
            before_start(info)
        start_pod(info, port, service, [info.root / p for p in logs])
        try:
            if after_start is not None:
                after_start(info)
        except BaseException:
            pod("stop", info.name, timeout=120)
            raise
        say(f"pod {info.name} is running; stop it with: pod stop {info.name}")
        return 0
    except SetupError as e:
        print(f"{example} setup: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{example} setup: interrupted", file=sys.stderr)
        return 130
