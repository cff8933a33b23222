"""`pod logs | status`: what a pod's services said, and how the pod is doing.

`pod logs` reads ROOT.peapod/services.log (and its rotated generation
services.log.1), which the daemon writes (pods/services.py) and `pod stop`
keeps, so it works for a stopped pod given its policy file. `pod status`
asks the running daemon for its services (control op "status") and reads the
kernel's view (cgroups, /proc) for memory, processes and peas.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from kernel.text import escape_controls
from pods import control, runtime
from pods.cliout import EXIT_USAGE, connect as _connect, err as _err
from pods.lifecycle_cmd import find_lasting, pod_processes


def _when(t) -> str:
    try:
        t = float(t)
    except (TypeError, ValueError):
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def format_record(raw: bytes, service: str | None) -> str | None:
    """One log line for a terminal, or None if filtered out (or not a
    record). Everything in it comes from the pod: escaped."""
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(rec, dict) or (service is not None and rec.get("service") != service):
        return None
    name = escape_controls(str(rec.get("service", "?")))
    if "event" in rec:
        text = "-- " + str(rec["event"])
    else:
        text = str(rec.get("line", ""))
    return f"{_when(rec.get('t'))} {name}: " + escape_controls(text).replace("\n", "\\n")


def _print_lines(lines: list[bytes], service, as_json: bool) -> None:
    out = []
    for raw in lines:
        if as_json:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if service is None or (isinstance(rec, dict) and rec.get("service") == service):
                out.append(json.dumps(rec))
        else:
            text = format_record(raw, service)
            if text is not None:
                out.append(text)
    if out:
        sys.stdout.write("\n".join(out) + "\n")
        sys.stdout.flush()


def cmd_logs(args) -> int:
    run = args.run
    found = find_lasting(run, args.pod, runtime.SERVICE_LOG_NAME)
    if isinstance(found, str):
        _err(found)
        return EXIT_USAGE
    lasting, running, names = found
    if args.service is not None and names is not None and args.service not in names:
        _err(f"pod {args.pod}: no service {args.service!r} (services: "
             f"{', '.join(names) or 'none'})")
        return EXIT_USAGE
    if args.lines is not None and args.lines < 0:
        _err("logs: --lines must be 0 or more")
        return EXIT_USAGE
    path = runtime.service_log(lasting)
    old = path.with_name(path.name + ".1")
    backlog: list[bytes] = []
    for p in (old, path):
        try:
            backlog += p.read_bytes().splitlines()
        except FileNotFoundError:
            pass
        except OSError as e:
            _err(f"{p}: {e.strerror}")
            return 1
    if args.lines is not None:
        wanted = [r for r in backlog if args.service is None
                  or format_record(r, args.service) is not None]
        backlog = wanted[len(wanted) - args.lines:] if args.lines else []
    _print_lines(backlog, args.service, args.json)
    if not args.follow:
        return 0
    return _follow(run, path, running, args.service, args.json)


def _follow(run, path: Path, running: str | None, service, as_json: bool) -> int:
    """New lines as they come, across rotations, until interrupted or, for a
    running pod, until it stops."""
    f, ino = None, None
    try:
        st = os.stat(path)
        f = open(path, "rb")
        f.seek(st.st_size)
        ino = st.st_ino
    except FileNotFoundError:
        pass
    pending = b""
    while True:
        chunk = f.read() if f is not None else b""
        if chunk:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            _print_lines(lines, service, as_json)
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None and st.st_ino != ino:
            # Rotated (or created): what the old file got last was read
            # above; go on with the new one from its start.
            if f is not None:
                f.close()
            f, ino, pending = open(path, "rb"), st.st_ino, b""
            continue
        if running is not None and not run.is_alive(running):
            return 0
        time.sleep(0.2)


# ------------------------------------------------------------------ status

def _size(n: int | None) -> str:
    if n is None:
        return "no limit"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def _ago(t) -> str:
    s = max(0, int(time.time() - float(t)))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def pod_status(run, name: str) -> dict | str:
    """The status of running pod ``name`` as a dict, or why not."""
    try:
        run.pod_dir(name)
    except ValueError as e:
        return str(e)
    if not run.is_alive(name):
        return f"pod {name} is not running"
    s = _connect(run, name)
    if s is None:
        return f"pod {name}: cannot reach its daemon"
    try:
        control.send_msg(s, {"op": "status"})
        s.settimeout(30)
        reply, fds = control.recv_msg(s)
        for fd in fds:
            os.close(fd)
    except OSError as e:
        return f"pod {name}: its daemon did not answer: {e.strerror or e}"
    finally:
        s.close()
    if not reply or not reply.get("ok"):
        return f"pod {name}: its daemon did not answer"
    procs = pod_processes(run, name)
    per_pea = {p: 0 for p in reply.get("peas", [])}
    for row in procs:
        # pid 1 is the pod's reaper (pods/init.py), in no pea's charge.
        if row.get("pea") is not None and row.get("vpid") != 1:
            per_pea[row["pea"]] = per_pea.get(row["pea"], 0) + 1
    reply.pop("ok", None)
    reply["processes"] = len(procs)
    reply["processes_per_pea"] = per_pea
    from pods import limits

    reply["usage"] = limits.usage(name)
    return reply


def cmd_status(args) -> int:
    run = args.run
    st = pod_status(run, args.name)
    if isinstance(st, str):
        _err(st)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(st))
        return 0
    e = escape_controls
    started = st.get("started")
    print(f"pod {st['name']}: {st.get('state')}, daemon pid {st.get('daemon_pid')}"
          + (f", up {_ago(started)}" if started else ""))
    use = st.get("usage") or {}
    mem, pids = use.get("memory"), use.get("pids")
    if mem:
        print(f"memory: {_size(mem['current'])} of {_size(mem['max'])}")
    if pids:
        print(f"processes: {pids['current']} of {pids['max'] or 'no limit'}")
    print("peas: " + ", ".join(f"{e(p)} ({n})" for p, n in st["processes_per_pea"].items()))
    svcs = st.get("services") or []
    if not svcs:
        print("services: none")
        return 0
    print("services:")
    for sv in svcs:
        pid = f"pid {sv['vpid']}" if sv.get("vpid") else ""
        last = f"; last: {e(sv['last_end'])}" if sv.get("last_end") else ""
        print(f"  {e(sv['name'])}: {sv['state']} for {_ago(sv['since'])}"
              + (f", {pid}" if pid else "") + f", pea {e(sv['pea'])}, "
              f"restarts {sv['restarts']} ({sv['restart']}){last}")
    return 0


# ------------------------------------------------------------------ parsers

def register(sub) -> None:
    p = sub.add_parser("logs", help="what a pod's services wrote, kept after `pod stop`",
                       description="Print the services' stdout and stderr and the daemon's "
                                   "events about them (started, exited, restarting), from "
                                   f"ROOT.peapod/{runtime.SERVICE_LOG_NAME} (rotated at "
                                   f"{runtime.SERVICE_LOG_MAX >> 20} MiB to "
                                   f"{runtime.SERVICE_LOG_NAME}.1).")
    p.add_argument("pod", metavar="NAME|POLICY",
                   help="a running pod's name, or the policy file of any pod")
    p.add_argument("-f", "--follow", action="store_true",
                   help="wait for new lines (until the pod stops)")
    p.add_argument("--service", metavar="S", help="only service S")
    p.add_argument("-n", "--lines", type=int, metavar="N", help="only the last N lines")
    p.add_argument("--json", action="store_true", help="the records as stored, one per line")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("status", help="a running pod: daemon, services, use against limits",
                       description="The daemon's pid and uptime, each service's state and "
                                   "restarts, memory and processes against [pod.limits], "
                                   "and the processes of each pea.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
