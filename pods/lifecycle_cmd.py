"""`pod start | exec | ps | list | stop`: the pod lifecycle commands.

`pod start` checks everything it can before anything exists (policy, root,
host directories, name, id ranges), under $PEAPOD_RUN/start.lock so two
starts cannot both pass the checks, then starts the pod's daemon
(pods/daemon.py) and waits for its "ok". The other commands talk to the
daemon's control socket (pods/control.py) or read the kernel's view
(cgroups, /proc) directly, so `pod list` and `pod ps` work from any shell.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from kernel import cgroup, jsonline, names
from kernel.pidfd import process_exited
from kernel.text import one_line, shown
from pods import control, exec_cmd, runtime
from pods.cliout import EXIT_USAGE, connect as _connect, err as _err

# Imported where a command needs them: `pod exec` connects to the daemon
# without them (python -X importtime -m pods.cli exec ...).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess


# ------------------------------------------------------------------ start

def _overlap(a, b) -> bool:
    """Do two id-map range lists overlap on the host side?"""
    return any(x[1] < y[1] + y[2] and y[1] < x[1] + x[2] for x in a for y in b)


def _within(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def _one_name_each(root: Path, mounts) -> str | None:
    """Refuse [[pod.mount]] host directories that put one directory into the
    pod under two names: the same directory (or one inside another) mounted
    twice, as /usr and /lib are on a usr-merged host, or a part of the pod's
    own root. PeaFS gives one object one node id, and the kernel's dentry
    cache holds a directory under one parent only: with two, concurrent
    lookups move it between them and an exec or open fails at random with
    ESTALE. (Files may have several names: hard links.)"""
    real_root = root.resolve()
    seen: list[tuple[Path, str]] = []
    for m in mounts:
        host = Path(m.host).resolve()
        if _within(host, real_root) or _within(real_root, host):
            return (f"[[pod.mount]] {m.path}: host directory {m.host} ({host}) overlaps the "
                    f"pod's root {root}: a directory may be in a pod under one name only")
        for other, path in seen:
            if _within(host, other) or _within(other, host):
                return (f"[[pod.mount]] {m.path}: host directory {m.host} ({host}) overlaps "
                        f"the one mounted at {path} ({other}): a directory may be in a pod "
                        f"under one name only (on a usr-merged host, mount /usr and put "
                        f"the links bin, lib, lib64, sbin -> usr/... in the root)")
        seen.append((host, m.path))
    return None


def _gaps_problem(policy) -> str | None:
    """Refuse a pod of several peas whose policy does not accept, by name,
    each way its peas are not separated on this kernel (SECURITY.md, Known
    gaps): whoever splits a service into peas must know what it does not buy."""
    from rules.policy import KNOWN_GAPS

    missing = policy.unaccepted_gaps()
    if not missing:
        return None
    lines = "".join(f"\n  {g}: {KNOWN_GAPS[g]}" for g in missing)
    names = ", ".join(f'"{g}"' for g in KNOWN_GAPS)
    return (f"pod {policy.name} has {len(policy.peas)} peas, and they are not separated "
            f"in these ways (docs/SECURITY.md, \"Known gaps\"):{lines}\n"
            f"Run peas that must keep secrets from each other under different uids, and "
            f"accept the rest in the policy's [pod] table:\n  accept_gaps = [{names}]")


def _start_checks(run, policy) -> str | None:
    problem = _gaps_problem(policy)
    if problem:
        return problem
    root = Path(policy.root)
    if not root.is_dir():
        return f"root {root} does not exist or is not a directory"
    for m in policy.mounts:
        if not Path(m.host).is_dir():
            return f"host directory {m.host} (for {m.path}) does not exist"
    problem = _one_name_each(root, policy.mounts)
    if problem:
        return problem
    if run.is_alive(policy.name):
        return f"pod {policy.name} is already running"
    problem = _conflicts(run, policy)
    if problem:
        return problem
    mine_u = [list(r) for r in policy.uid_map]
    mine_g = [list(r) for r in policy.gid_map]
    for other in run.pod_names():
        if other == policy.name or not run.is_alive(other):
            continue
        st = run.read_state(other) or {}
        if _overlap(mine_u, st.get("uid_map", [])) or _overlap(mine_g, st.get("gid_map", [])):
            return (f"the id ranges of pod {policy.name} overlap those of running pod "
                    f"{other}: pods must not share host ids")
    return None


def _conflicts(run, policy) -> str | None:
    """What another running pod, or the host, already holds of this pod's:
    its root (two pods serving one tree would write over each other's files
    and share one audit log) and its addresses (a second veth with the same
    address starts and is unreachable)."""
    import ipaddress

    from pods import netns

    root = Path(policy.root).resolve()
    net = ipaddress.ip_interface(policy.net.address).network if policy.net else None
    for other in run.pod_names():
        if other == policy.name or not run.is_alive(other):
            continue
        st = run.read_state(other) or {}
        if st.get("root") and Path(st["root"]).resolve() == root:
            return f"root {policy.root} is already served by running pod {other}"
        theirs = st.get("net")
        if net is not None and theirs:
            their_net = ipaddress.ip_network(f"{theirs['ip']}/{theirs['prefixlen']}",
                                             strict=False)
            if net.overlaps(their_net):
                return (f"[pod.net] address {policy.net.address}: network {net} overlaps "
                        f"network {their_net} of running pod {other}")
    if net is not None:
        try:
            held = netns.address_owners()
        except OSError as e:
            return f"cannot list the host's addresses: {e}"
        ours = netns.host_ifname(policy.name)  # a dead pod's leftover: removed at start
        for addr, what in ((policy.net.ip, "address"), (policy.net.host_ip, "host-side address")):
            iface = held.get(addr)
            if iface is not None and iface != ours:
                return (f"[pod.net] {what} {addr} is already on host interface {iface}: "
                        f"choose a network the host does not use")
    return None


def _note_slow_transitions(policy) -> None:
    """Say once, at start, what the host's cgroup2 mount costs each pea
    transition: without ``favordynmods`` every move waits for an RCU grace
    period (milliseconds) while the pod's file system serves nobody
    (kernel/cgroup.py, favors_dynamic_moves). A note, not an error: the
    option is the host's to set, and it cannot be undone until reboot."""
    if any(pea.exec for pea in policy.peas.values()) and not cgroup.favors_dynamic_moves():
        _err(f"note: pod {policy.name} has exec transitions and the cgroup2 hierarchy "
             f"({cgroup.cgroup2_root()}) is mounted without favordynmods: each transition "
             "then waits for an RCU grace period (milliseconds), and the pod's file system "
             "serves no pea meanwhile (docs/ARCHITECTURE.md, \"Pea transitions and "
             "favordynmods\")")


def cmd_start(args) -> int:
    return start(args, args.policy)


def start(args, policy_path, restore: str | None = None) -> int:
    """`pod start POLICY`, and `pod restore` (``restore``: the checkpoint
    whose processes the new daemon puts back before its services start)."""
    run = args.run
    import rules  # here, not at the top: every other command starts faster

    try:
        policy = rules.load(policy_path)
    except rules.PolicyError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        _err(f"{policy_path}: {e.strerror}")
        return EXIT_USAGE
    from pods.daemon import cleanup_leftovers

    base = run.path
    (base / "pods").mkdir(parents=True, exist_ok=True)
    os.chmod(base / "pods", 0o700)
    lock = os.open(run.start_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    _err("another `pod start` holds the start lock")
                    return 1
                time.sleep(0.05)
        problem = _start_checks(run, policy)
        if problem:
            _err(problem)
            return EXIT_USAGE
        d = run.pod_dir(policy.name)
        if d.exists():  # a dead pod of this name: clear what it left
            cleanup_leftovers(run, policy.name)
        d.mkdir(mode=0o700)
        return _spawn_daemon(policy, args, d, policy_path, restore)
    finally:
        os.close(lock)


def _spawn_daemon(policy, args, d: Path, policy_path, restore: str | None) -> int:
    import subprocess
    run = args.run
    from pods.daemon import cleanup_leftovers
    from pods.startup import child_env, python_command

    pod_lock = os.open(d / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(pod_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    ready_r, ready_w = os.pipe()
    log = os.open(d / "daemon.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    cmd = python_command("pods.daemon", "--policy", str(Path(policy_path).resolve()),
                         "--run-dir", str(run.path), "--ready-fd", str(ready_w),
                         "--lock-fd", str(pod_lock), site=True)
    if restore is not None:
        cmd += ["--restore", str(Path(restore).resolve())]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                pass_fds=[ready_w, pod_lock], start_new_session=True,
                                env=child_env(), cwd="/")
        if args.foreground:
            # From here a TERM (systemd's stop, a shell's kill) must reach
            # the daemon as an orderly stop, not kill us before we pass it on.
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, lambda signum, _f: _pass_on(proc, signum))
    finally:
        os.close(ready_w)
        os.close(log)
        os.close(pod_lock)  # the daemon's copy keeps the lock
    # One message: {"ok": true}, or {"error": why} (pods/control.py, read_line).
    answer, raw = jsonline.read_line(ready_r, timeout=args.timeout)
    os.close(ready_r)
    if answer is not None and answer.get("ok") is True:
        print(policy.name, flush=True)
        _note_slow_transitions(policy)
        if args.foreground:
            return _stay_in_foreground(run, policy.name, proc)
        return 0
    if answer is not None and "error" in answer:
        text = str(answer["error"])
    elif raw.strip():
        text = f"the pod's daemon said something unexpected: {raw[:200]!r}"
    else:
        proc.kill()
        text = "the pod's daemon did not report in time" if proc.poll() is None else \
            "the pod's daemon exited (see its log)"
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log_text = ""
    try:
        log_text = (d / "daemon.log").read_text().strip()
    except OSError:
        pass
    cleanup_leftovers(run, policy.name)
    _err(f"cannot start pod {policy.name}: {text}")
    if log_text and os.environ.get("PEAPOD_DEBUG"):
        print(log_text, file=sys.stderr)
    return EXIT_USAGE


def _pass_on(proc: subprocess.Popen, signum: int) -> None:
    try:
        proc.send_signal(signum)    # the daemon stops the pod in order
    except OSError:
        pass
    _notify("STOPPING=1")


def _notify(text: str) -> None:
    """A datagram to systemd's $NOTIFY_SOCKET (sd_notify(3)), if we run
    under a unit of Type=notify; nothing otherwise."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path or path[0] not in "/@":
        return
    addr = "\0" + path[1:] if path[0] == "@" else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(text.encode(), addr)
    except OSError:
        pass    # a service manager that went away is no reason to stop the pod


def _stay_in_foreground(run, name: str, proc: subprocess.Popen) -> int:
    """`pod start --foreground`: live as long as the pod's daemon. 0 after an
    orderly stop (`pod stop`, a TERM to us or to the daemon), 1 if the pod
    failed (its daemon died or reported an error)."""
    _notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=pod {name} runs")
    while True:
        try:
            code = proc.wait()
            break
        except InterruptedError:
            continue
    if code == 0:
        return 0
    _err(f"pod {name} failed: {death_reason(run, name)}")
    return 1


# ------------------------------------------------------------------ exec

# ------------------------------------------------------------------ ps / list

def pod_processes(run, name: str) -> list[dict]:
    """The pod's processes as seen from the host: only those in the pod's pid
    namespace (the keeper, the tagger and its monitors are on the host side)."""
    from kernel import cgroup, idmap, procfs

    st = run.read_state(name) or {}
    init_pid = st.get("init_pid")
    if not init_pid:
        return []
    try:
        pidns = os.stat(f"/proc/{init_pid}/ns/pid").st_ino
    except OSError:
        return []
    rows = []
    for pid in sorted(set(cgroup.pids_in(name))):
        try:
            if os.stat(f"/proc/{pid}/ns/pid").st_ino != pidns:
                continue
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        status = procfs.status(pid) or {}
        nspid = status.get("NSpid", "").split()
        uid_host = int(status.get("Uid", "-1").split()[0]) if status.get("Uid") else -1
        argv = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
        rows.append({
            "vpid": int(nspid[-1]) if nspid else None,
            "pid": pid,
            "pea": cgroup.pea_of(pid, name),
            "uid": idmap.to_pod(st.get("uid_map", []), uid_host),
            "command": " ".join(argv) or f"[{status.get('Name', '?')}]",
        })
    rows.sort(key=lambda r: (r["vpid"] is None, r["vpid"]))
    return rows


def _table(rows: list[dict], cols: list[str], fit: bool = False) -> None:
    """Print ``rows`` as columns. Every cell is one line with its controls
    escaped: command lines and names come from the pod, and a process must
    not write terminal sequences to the administrator's screen, nor a line
    that looks like another process. ``fit``: the last column is cut (with
    "...") so that each line fits the terminal (80 columns when there is none)."""
    import shutil

    cells = [[("" if r.get(c) is None else one_line(str(r.get(c)))) for c in cols]
             for r in rows]
    widths = [max([len(c)] + [len(x[i]) for x in cells]) for i, c in enumerate(cols)]
    if fit and cells:
        room = shutil.get_terminal_size((80, 24)).columns - sum(w + 2 for w in widths[:-1])
        room = max(room, len(cols[-1]), 10)
        for row in cells:
            if len(row[-1]) > room:
                row[-1] = row[-1][:room - 3] + "..."
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


# The pod's pid 1 (pods/init.py) is a Python command line of some 400
# characters; in the table it is named for what it is.
INIT_LABEL = "[pod init]"


def cmd_ps(args) -> int:
    run = args.run
    if not run.is_alive(args.name):
        _err(f"pod {args.name} is not running")
        return EXIT_USAGE
    rows = pod_processes(run, args.name)
    if args.json:
        print(json.dumps(rows))
    else:
        rows = [dict(r, command=INIT_LABEL) if r["vpid"] == 1 else r for r in rows]
        _table(rows, ["vpid", "pid", "pea", "uid", "command"], fit=True)
    return 0


def death_reason(run, name: str) -> str:
    """Why the daemon of ``name`` is gone, as far as its log tells: its last
    line (a traceback ends with the exception), or that it said nothing (a
    SIGKILL, the OOM killer). The log stays until `pod stop` clears the pod."""
    log = run.pod_dir(name) / "daemon.log"
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 65536))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        lines = []
    last = next((ln for ln in reversed(lines) if ln), "")
    if last:
        return f"the daemon died; its log ends: {last} ({log})"
    return f"the daemon died without a word (killed?); see {log}"


def cmd_list(args) -> int:
    run = args.run
    rows = []
    for name in run.pod_names():
        st = run.read_state(name) or {}
        alive = run.is_alive(name)
        row = {
            "name": name,
            # A pod whose daemon is gone without `pod stop` has failed: its
            # processes died with the daemon (SECURITY.md, "Lifecycle").
            "state": (st.get("state", "starting") if alive else "failed"),
            "peas": st.get("peas", []),
            "processes": len(pod_processes(run, name)) if alive else 0,
        }
        if not alive:
            row["reason"] = death_reason(run, name)
        rows.append(row)
    if args.json:
        print(json.dumps(rows))
    else:
        cols = ["name", "state", "peas", "processes"]
        if any("reason" in r for r in rows):
            cols.append("reason")
        _table([dict(r, peas=",".join(r["peas"])) for r in rows], cols)
    return 0


# ------------------------------------------------------------------ audit

def find_lasting(run, what: str, log_name: str):
    """(ROOT.peapod of running pod NAME, or of the pod a policy file
    describes, running or not; the running pod's name or None; its service
    names or None), or why not. The logs kept there (the audit log, the
    services' log: ``log_name``, for the message) outlive the pod."""
    if what.endswith(".toml") or "/" in what:
        import rules

        try:
            policy = rules.load(what)
        except rules.PolicyError as e:
            return str(e)
        except OSError as e:
            return f"{what}: {e.strerror}"
        name = policy.name if run.is_alive(policy.name) else None
        return runtime.lasting_dir(policy.root), name, [sv.name for sv in policy.services]
    if not names.NAME_RE.match(what):
        return (f"{shown(what)} is neither a pod name nor a policy file (.toml): "
                f"a pod name is a lowercase letter, then at most 30 lowercase letters, "
                f"digits and '-'")
    state = run.read_state(what)
    if state is None or "root" not in state or not run.is_alive(what):
        return (f"pod {what} is not running; for a stopped pod give its policy file "
                f"(the log is ROOT.peapod/{log_name} beside the pod's root)")
    return runtime.lasting_dir(Path(state["root"])), what, state.get("services")


def _audit_path(run, what: str) -> Path | str:
    """The audit log of a running pod NAME, or of the pod a policy file
    describes; or why not."""
    from peafs.audit import AUDIT_NAME

    found = find_lasting(run, what, AUDIT_NAME)
    return found if isinstance(found, str) else found[0] / AUDIT_NAME


def cmd_audit(args) -> int:
    run = args.run
    from peafs.audit import print_log

    path = _audit_path(run, args.pod)
    if isinstance(path, str):
        _err(path)
        return EXIT_USAGE
    print_log(path, args.follow)
    return 0


# ------------------------------------------------------------------ stop

def cmd_stop(args) -> int:
    run = args.run
    from pods.daemon import cleanup_leftovers

    try:
        d = run.pod_dir(args.name)
    except ValueError as e:
        _err(str(e))
        return EXIT_USAGE
    if not d.exists():
        _err(f"pod {args.name} is not running")
        return EXIT_USAGE
    if run.is_alive(args.name):
        # The daemon's pidfd, taken while its lock shows it alive (so the pid
        # is the daemon's): its lock goes with its last descriptor, before
        # the process has finished exiting, and `pod stop` returns only when
        # the daemon is gone (test_stop_leaves_no_process_mount_cgroup_veth_or_file
        # once found it alive right after).
        daemon_fd = None
        st = run.read_state(args.name) or {}
        if st.get("daemon_pid"):
            try:
                daemon_fd = os.pidfd_open(st["daemon_pid"])
            except OSError:
                pass
        s = _connect(run, args.name)
        if s is not None:
            try:
                control.send_msg(s, {"op": "stop", "timeout": args.timeout})
                control.recv_msg(s)
            except OSError:
                pass
            finally:
                s.close()
        deadline = time.monotonic() + args.timeout + 30
        while run.is_alive(args.name) and time.monotonic() < deadline:
            time.sleep(0.05)
        if run.is_alive(args.name):
            st = run.read_state(args.name) or {}
            pid = st.get("daemon_pid")
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)  # the pod dies with it (PDEATHSIG chain)
                except OSError:
                    pass
            time.sleep(0.2)
        if daemon_fd is not None:
            process_exited(daemon_fd, deadline - time.monotonic())
            os.close(daemon_fd)
    problems = cleanup_leftovers(run, args.name)
    for p in problems:
        _err(p)
    return 1 if problems else 0


# ------------------------------------------------------------------ parsers

def register(sub) -> None:
    p = sub.add_parser("start", help="start a pod from its policy; prints its name",
                       description="Start the pod a policy describes and return once it runs.")
    p.add_argument("policy", metavar="POLICY", help="the pod's policy file (TOML)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the pod to run (default 60)")
    p.add_argument("--foreground", action="store_true",
                   help="stay until the pod stops (for a service manager): TERM stops the "
                        "pod in order; exit 0 after an orderly stop, 1 if the pod failed; "
                        "tells systemd READY=1 through $NOTIFY_SOCKET once the pod runs")
    p.set_defaults(func=cmd_start)

    exec_cmd.register_exec(sub)
    register_rest(sub)


def register_rest(sub) -> None:
    p = sub.add_parser("ps", help="processes of a pod",
                       description="vpid (pid in the pod), host pid, pea, pod uid, command.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("list", help="pods on this host",
                       description="name, state, peas and number of processes of each pod.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("audit", help="the refusals of a pod, one JSON object per line",
                       description="Print the pod's audit log (ROOT.peapod/audit.log, kept "
                                   "after `pod stop`): every refusal by PeaFS.")
    p.add_argument("pod", metavar="NAME|POLICY",
                   help="a running pod's name, or the policy file of any pod")
    p.add_argument("--follow", action="store_true", help="wait for new refusals")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("stop", help="stop a pod; nothing is left behind",
                       description="TERM every process of the pod, KILL after the timeout, "
                                   "unmount, remove cgroups, veth and runtime files.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="seconds between TERM and KILL (default 5)")
    p.set_defaults(func=cmd_stop)
