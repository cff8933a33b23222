"""Services: an honest `pod start`, restarts, logs kept after stop, status,
conflicts refused at start, and `pod start --foreground` for a service
manager (pods/services.py, pods/service_cmd.py).

Each test starts real pods (root, /dev/fuse, namespaces); the fixtures stop
them and fail the test if anything was left behind.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

import pod_support
from pod_support import POD
from pods import services

PEAS = '[pea.main.files]\n"/" = "rwx"\n\n[pea.other.files]\n"/" = "rx"\n'


def service(name: str, argv: list[str], **keys) -> str:
    lines = ["[[pod.service]]", f'name = "{name}"', f"exec = {json.dumps(argv)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n\n"


def sh(name: str, script: str, **keys) -> str:
    return service(name, ["/bin/sh", "-c", script], **keys)


wait_for = functools.partial(pod_support.wait_for, interval=0.1)


def status(pod) -> dict:
    r = pod.cli("status", pod.name, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def svc(pod, name) -> dict:
    return next(s for s in status(pod)["services"] if s["name"] == name)


def log_records(pod) -> list[dict]:
    r = pod.cli("logs", pod.policy, "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(x) for x in r.stdout.splitlines()]


# ----------------------------------------------------------------- honest start

@pytest.mark.parametrize("init, why", [
    (["/usr/sbin/nginxx", "-g", "daemon off;"], "service init: cannot start /usr/sbin/nginxx: No such file or directory"),
    (["/usr/bin/false"], "service init: exited with status 1"),
    (["/bin/sh", "-c", "echo 'bad directive on line 3' >&2; exit 78"],
     "service init: exited with status 78; its last output: bad directive on line 3"),
])
def test_start_fails_when_the_service_cannot_run(pod_factory, init, why):
    pod = pod_factory.start(extra_pod=f"init = {json.dumps(init)}", check=False)
    r = pod.start_result
    assert r.returncode == 2, r
    assert r.stdout == ""
    assert r.stderr == f"pod: cannot start pod {pod.name}: {why}\n"
    # Nothing is left running, and `pod list` does not show it.
    assert pod.cli("list", "--json").stdout.strip() == "[]"
    assert not (pod.run_dir / "pods" / pod.name).exists()


def test_a_service_that_exits_zero_at_once_is_a_success(pod_factory):
    pod = pod_factory.start(extra_pod='init = ["/bin/true"]')
    s = svc(pod, "init")
    assert (s["state"], s["last_end"], s["restarts"]) == ("exited", "exited with status 0", 0)
    assert status(pod)["state"] == "running"


def test_start_waits_for_every_service(pod_factory):
    """`pod start` returns once both services run: the first has written its
    line by then (its output is read while start waits)."""
    pod = pod_factory.start(peas=PEAS + sh("a", "echo a-up; exec sleep 600")
                            + sh("b", "exec sleep 600", pea="other"))
    states = {s["name"]: (s["state"], s["pea"]) for s in status(pod)["services"]}
    assert states == {"a": ("running", "main"), "b": ("running", "other")}
    rows = json.loads(pod.cli("ps", pod.name, "--json").stdout)
    peas = {r["pea"] for r in rows if "sleep" in r["command"]}
    assert peas == {"main", "other"}


def test_a_service_user_is_looked_up_in_the_pods_passwd(pod_factory):
    pod = pod_factory.start(peas=PEAS + sh("who", "id -u; id -g; exec sleep 600",
                                           user="user"))
    lines = [r["line"] for r in log_records(pod) if r.get("service") == "who" and "line" in r]
    assert lines[:2] == ["1000", "1000"]


def test_passwd_symlinked_to_a_host_file_is_not_read(pod_factory, tmp_path):
    """Attack: pod root makes /etc/passwd a symlink to a host file that
    names a user the attacker wants. The lookup resolves the link inside the
    pod root (openat2 RESOLVE_IN_ROOT), where that file does not exist.
    Before pods/podusers.py, user names were not accepted at all."""
    host_file = tmp_path / "crafted-passwd"
    host_file.write_text("evil:x:4242:4242::/:/bin/sh\n")
    policy, name, root, _ = pod_factory.write_policy(
        peas=PEAS + sh("x", "exec sleep 600", user="evil"))
    os.unlink(root / "etc" / "passwd")
    os.symlink(host_file, root / "etc" / "passwd")
    r = pod_factory.cli("start", policy, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"pod: cannot start pod {name}: service x: cannot start /bin/sh: "
                                "no user \"evil\" in the pod's /etc/passwd")


def test_passwd_fifo_does_not_hang_the_start(pod_factory):
    policy, name, root, _ = pod_factory.write_policy(
        peas=PEAS + sh("x", "exec sleep 600", user="user"))
    os.unlink(root / "etc" / "passwd")
    os.mkfifo(root / "etc" / "passwd")
    r = pod_factory.cli("start", policy, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"pod: cannot start pod {name}: service x: cannot start /bin/sh: "
                                "the pod's /etc/passwd is not a regular file")


# ----------------------------------------------------------------- restarts

def test_on_failure_restarts_until_the_pod_stops(pod_factory):
    pod = pod_factory.start(peas=PEAS + sh("flaky", "echo up; sleep 0.7; exit 3"))
    wait_for(lambda: svc(pod, "flaky")["restarts"] >= 2, what="two restarts")
    events = [r["event"] for r in log_records(pod) if r.get("service") == "flaky"
              and "event" in r]
    assert events[0].startswith("started (pid ") and events[2].startswith("started (pid ")
    assert events[1] == "exited with status 3; restarting in 1 s"
    # The delay doubles while it keeps failing.
    wait_for(lambda: any(r.get("event") == "exited with status 3; restarting in 2 s"
                         for r in log_records(pod)), what="the doubled delay")
    assert pod.stop().returncode == 0
    restarts = [r for r in log_records(pod) if "restarting" in r.get("event", "")]
    time.sleep(1.5)     # a restart due after the stop would have logged by now
    assert [r for r in log_records(pod) if "restarting" in r.get("event", "")] == restarts


def test_restart_no_and_always(pod_factory):
    pod = pod_factory.start(peas=PEAS + sh("once", "sleep 0.7; exit 4", restart="no")
                            + sh("loop", "sleep 0.7; exit 0", restart="always")
                            + sh("ok", "sleep 0.7; exit 0"))
    wait_for(lambda: svc(pod, "loop")["restarts"] >= 1, what="a restart of 'always'")
    once, ok = svc(pod, "once"), svc(pod, "ok")
    assert (once["state"], once["last_end"], once["restarts"]) == \
        ("failed", "exited with status 4", 0)
    assert (ok["state"], ok["last_end"], ok["restarts"]) == ("exited", "exited with status 0", 0)


# ----------------------------------------------------------------- logs

def test_logs_are_kept_after_stop_and_filtered(pod_factory):
    pod = pod_factory.start(peas=PEAS + sh("a", "echo alpha; exec sleep 600")
                            + sh("b", "echo beta >&2; exec sleep 600"))
    wait_for(lambda: "beta" in pod.cli("logs", pod.name).stdout, what="b's line")
    assert pod.stop().returncode == 0
    r = pod.cli("logs", pod.name)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"pod: pod {pod.name} is not running; for a stopped pod give "
                                "its policy file (the log is ROOT.peapod/services.log beside "
                                "the pod's root)")
    out = pod.cli("logs", pod.policy, "--service", "b").stdout.splitlines()
    shown = [line.split(" ", 1)[1] for line in out]     # without the time stamp
    assert re.fullmatch(r"b: -- started \(pid \d+ in the pod\)", shown[0]), shown
    assert shown[1:] == ["b: beta", "b: -- killed by signal 15 (the pod stops)"]
    assert pod.cli("logs", pod.policy, "-n", "1").stdout.count("\n") == 1
    r = pod.cli("logs", pod.policy, "--service", "c")
    assert (r.returncode, r.stderr.strip()) == (2, f"pod: pod {pod.policy}: no service 'c' "
                                                   "(services: a, b)")


def test_service_output_cannot_forge_records_or_drive_the_terminal(pod_factory):
    forged = json.dumps({"t": 0, "service": "other", "event": "started"})
    pod = pod_factory.start(peas=PEAS + sh(
        "a", f"echo '{forged}'; printf 'clear\\033[2J\\n'; exec sleep 600"))
    wait_for(lambda: "clear" in pod.cli("logs", pod.name).stdout, what="the output")
    recs = [r for r in log_records(pod) if r.get("service") == "a" and "line" in r]
    assert [r["line"] for r in recs] == [forged, "clear\x1b[2J"]
    assert not any(r.get("service") == "other" for r in log_records(pod))
    text = pod.cli("logs", pod.name).stdout
    assert "\x1b" not in text and "clear\\x1b[2J" in text


def test_the_log_is_rotated_at_its_size_limit(pod_factory):
    """9 MB of output: services.log never grows past LOG_MAX; the older part
    is in services.log.1 (one generation)."""
    script = "head -c 9000000 /dev/zero | tr '\\0' x | fold -w 1000; echo; echo done; exec sleep 600"
    pod = pod_factory.start(peas=PEAS + sh("big", script))
    lasting = pod.root.parent / "root.peapod"
    wait_for(lambda: b'"done"' in (lasting / "services.log").read_bytes()
             if (lasting / "services.log").exists() else False, timeout=60, what="all output")
    assert (lasting / "services.log").stat().st_size <= services.LOG_MAX
    assert (lasting / "services.log.1").stat().st_size <= services.LOG_MAX
    assert oct((lasting / "services.log.1").stat().st_mode & 0o777) == "0o600"


# ----------------------------------------------------------------- status

def test_status_reports_services_limits_and_peas(pod_factory):
    pod = pod_factory.start(limits_={"memory": "256M", "pids": 100},
                            peas=PEAS + sh("a", "exec sleep 600")
                            + sh("b", "sleep 600 & exec sleep 600", pea="other"))
    st = status(pod)
    assert st["name"] == pod.name and st["state"] == "running"
    assert st["daemon_pid"] == pod.state()["daemon_pid"]
    assert st["usage"]["memory"]["max"] == 256 << 20
    assert st["usage"]["pids"]["max"] == 100
    assert 0 < st["usage"]["memory"]["current"] < 256 << 20
    # The pod's pid 1 (in the default pea's cgroup) is not counted in a pea.
    assert st["processes_per_pea"] == {"main": 1, "other": 2}
    assert [(s["name"], s["state"]) for s in st["services"]] == [("a", "running"),
                                                                 ("b", "running")]
    text = pod.cli("status", pod.name).stdout
    assert "memory: " in text and " of 256.0 MiB" in text
    assert "peas: main (1), other (2)" in text
    r = pod.cli("status", "nosuchpod")
    assert (r.returncode, r.stderr.strip()) == (2, "pod: pod nosuchpod is not running")


# ----------------------------------------------------------------- conflicts

def test_a_root_served_by_a_running_pod_is_refused(pod_factory):
    first = pod_factory.start()
    policy, name, _, _ = pod_factory.write_policy(root=first.root)
    r = pod_factory.cli("start", policy, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"pod: root {first.root} is already served by running pod "
                                f"{first.name}")


def test_an_address_in_use_is_refused(pod_factory):
    first = pod_factory.start(net="10.97.3.2/24")
    policy, name, _, _ = pod_factory.write_policy(net="10.97.0.9/16")
    r = pod_factory.cli("start", policy, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == ("pod: [pod.net] address 10.97.0.9/16: network 10.97.0.0/16 "
                                f"overlaps network 10.97.3.0/24 of running pod {first.name}")
    # The host side of 127.0.0.2/8 would be 127.0.0.1, which the host's
    # loopback holds.
    policy, name, _, _ = pod_factory.write_policy(net="127.0.0.2/8")
    r = pod_factory.cli("start", policy, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == ("pod: [pod.net] host-side address 127.0.0.1 is already on "
                                "host interface lo: choose a network the host does not use")


# ----------------------------------------------------------------- foreground

def test_foreground_start_for_a_service_manager(pod_factory, tmp_path):
    """`pod start --foreground` as systemd runs it (Type=notify): READY=1
    once the services run, STOPPING=1 and exit 0 after a TERM, which stops
    the pod in order."""
    policy, name, _, _ = pod_factory.write_policy(peas=PEAS + sh("a", "exec sleep 600"))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    env = dict(pod_factory.env(), NOTIFY_SOCKET=str(tmp_path / "notify"))
    proc = subprocess.Popen(POD + ["start", "--foreground", str(policy)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        ready = notify.recv(4096).decode()
        assert ready == f"READY=1\nMAINPID={proc.pid}\nSTATUS=pod {name} runs"
        assert proc.stdout.readline() == f"{name}\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
        assert notify.recv(4096) == b"STOPPING=1"
        assert not (pod_factory.run / "pods" / name).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()


def test_foreground_start_fails_when_the_daemon_dies(pod_factory):
    policy, name, _, _ = pod_factory.write_policy()
    proc = subprocess.Popen(POD + ["start", "--foreground", str(policy)],
                            env=pod_factory.env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == f"{name}\n"
        state = json.loads((pod_factory.run / "pods" / name / "state.json").read_text())
        os.kill(state["daemon_pid"], signal.SIGKILL)
        assert proc.wait(timeout=90) == 1
        assert proc.stderr.read().startswith(f"pod: pod {name} failed: the daemon died")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pod_factory.cli("stop", name, timeout=90)
