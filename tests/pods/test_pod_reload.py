"""`pod rules reload NAME [POLICY]`: a changed policy applied to a running pod
(pods/daemon.py ``reload``, peafs/session.py ``swap_policy``, the network
programs replaced by pods/netbpf.py ``attach_pea``/``detach``).
"""

from __future__ import annotations

import json
import subprocess
import time

from pod_support import POD, PY

BASE = '''
[pea.main]
complain = true

[pea.main.files]
"/" = "rx"
"/tmp/" = "rw"

[pea.main.net]
bind = []

[pea.other.files]
"/" = "rwx"
'''


def policy_text(pod) -> str:
    return pod.policy.read_text()


def write_variant(pod, name: str, text: str):
    path = pod.policy.with_name(name)
    path.write_text(text)
    return path


def reload(pod, path=None):
    return pod.cli("rules", "reload", pod.name, *([str(path)] if path else []), timeout=120)


def test_complain_to_enforce_without_a_restart(pod_factory):
    pod = pod_factory.start(peas=BASE)
    sleeper = subprocess.Popen(POD + ["exec", pod.name, "--", "/bin/sleep", "600"],
                               env=pod.factory.env(), stdin=subprocess.DEVNULL)
    try:
        r = pod.exec("/bin/sh", "-c", "echo a > /srv-x && echo wrote")
        assert (r.returncode, r.stdout) == (0, "wrote\n"), r    # complain: allowed, logged
        before = [p for p in json.loads(pod.cli("ps", pod.name, "--json").stdout)
                  if p["command"].startswith("/bin/sleep")]
        enforce = write_variant(pod, "enforce.toml",
                                policy_text(pod).replace("complain = true", "complain = false"))
        r = reload(pod, enforce)
        assert (r.returncode, r.stdout, r.stderr) == (0, f"pod {pod.name} now runs {enforce}\n", "")
        r = pod.exec("/bin/sh", "-c", "echo b > /srv-y && echo wrote")
        assert r.returncode == 2
        assert r.stderr == "/bin/sh: 1: cannot create /srv-y: Permission denied\n"
        after = [p for p in json.loads(pod.cli("ps", pod.name, "--json").stdout)
                 if p["command"].startswith("/bin/sleep")]
        assert after == before and sleeper.poll() is None     # processes keep running
        # Without POLICY: the file the pod started from, read again.
        r = reload(pod)
        assert r.stdout == f"pod {pod.name} now runs {pod.policy}\n"
        r = pod.exec("/bin/sh", "-c", "echo c > /srv-z && echo wrote")
        assert (r.returncode, r.stdout) == (0, "wrote\n")
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)


def test_network_rules_and_peas_change(pod_factory):
    pod = pod_factory.start(peas=BASE.replace("complain = true", "complain = false"))
    bind = ('import socket, errno\ns = socket.socket()\n'
            'try:\n    s.bind(("127.0.0.1", 8080)); print("bound")\n'
            'except OSError as e:\n    print(errno.errorcode[e.errno])')
    assert pod.py(bind).stdout == "EACCES\n"
    text = policy_text(pod).replace("bind = []", "bind = [8080]")
    text += '\n[pea.third.files]\n"/" = "rx"\n'
    r = reload(pod, write_variant(pod, "more.toml", text))
    assert r.returncode == 0 and r.stdout.endswith("; added peas third\n"), r
    assert pod.py(bind).stdout == "bound\n"
    r = pod.exec("/bin/cat", "/etc/group", pea="third")
    assert (r.returncode, r.stdout.splitlines()[0]) == (0, "root:x:0:"), r
    r = pod.exec("/bin/sh", "-c", "echo x > /tmp/t", pea="third")
    assert r.stderr == "/bin/sh: 1: cannot create /tmp/t: Permission denied\n"
    # A pea leaves the policy only when no process is in it.
    third = subprocess.Popen(POD + ["exec", pod.name, "--pea", "third", "--", "/bin/sleep",
                                    "600"], env=pod.factory.env(), stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
                p["pea"] == "third" for p in json.loads(pod.cli("ps", pod.name, "--json").stdout)):
            time.sleep(0.1)
        fewer = write_variant(pod, "fewer.toml", policy_text(pod))
        r = reload(pod, fewer)
        assert (r.returncode, r.stderr) == (2, f"pod: rules reload {pod.name}: pea third still "
                                               "has 1 process(es): stop them before a policy "
                                               "without it is loaded\n")
        # Killing `pod exec` leaves its program running: end it inside.
        vpid = next(p["vpid"] for p in json.loads(pod.cli("ps", pod.name, "--json").stdout)
                    if p["pea"] == "third")
        assert pod.exec("/bin/kill", "-9", str(vpid), pea="third").returncode == 0
    finally:
        third.kill()
        third.wait(timeout=30)
    deadline = time.monotonic() + 30
    while True:
        r = reload(pod, fewer)
        if r.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.stdout.endswith("; removed peas third\n"), r
    r = pod.exec("/bin/true", pea="third")
    assert (r.returncode, r.stderr) == (2, f"pod: exec /bin/true: pod {pod.name} has no pea "
                                           "'third'\n"), r


def test_what_a_reload_cannot_change_is_refused(pod_factory):
    pod = pod_factory.start(peas=BASE, limits_={"pids": 100})
    text = policy_text(pod)
    for change, what in [
        (text.replace(f"uid_map = [[0, {pod.base}, 65536]]",
                      f"uid_map = [[0, {pod.base + 65536}, 65536]]"), "uid_map"),
        (text.replace('path = "/usr"', 'path = "/usr2"'), "[[pod.mount]]"),
        (text.replace("pids = 100", "pids = 200"), "[pod.limits]"),
        (text.replace('default_pea = "main"', 'default_pea = "main"\ninit = ["/bin/true"]'),
         "init and [[pod.service]]"),
    ]:
        r = reload(pod, write_variant(pod, "changed.toml", change))
        assert (r.returncode, r.stdout, r.stderr) == (
            2, "", f"pod: rules reload {pod.name}: reload cannot change {what}: stop and "
                   "start the pod for that\n"), (what, r)
    bad = write_variant(pod, "bad.toml", text.replace('"/" = "rx"', '"/" = "rq"', 1))
    r = reload(pod, bad)
    assert r.returncode == 2 and r.stderr.startswith(f"{bad}:"), r
    assert "Traceback" not in r.stderr
    r = pod.cli("rules", "reload", "nosuchpod", str(pod.policy))
    assert (r.returncode, r.stderr) == (2, "pod: pod nosuchpod is not running\n")
    # The pod still runs its first policy: complain mode, writes allowed.
    assert pod.exec("/bin/sh", "-c", "echo a > /srv-q && echo ok").stdout == "ok\n"


LINK_PEAS = '''
[pea.main.files]
"/" = "rx"
"/tmp/" = "rw"
"/data/" = ""

[pea.other.files]
"/" = "rwx"
'''


def test_link_rules_outlive_a_reload(pod_factory):
    """A hard link keeps the rules of the file it names (SECURITY.md, "Hard
    links"): the rules are state of the pod, not of the policy file, so a
    reload keeps them."""
    pod = pod_factory.start(peas=LINK_PEAS)
    r = pod.exec("/bin/sh", "-c", "mkdir -p /data && echo secret > /data/f && "
                 "ln /data/f /tmp/g && echo linked", pea="other")
    assert (r.returncode, r.stdout) == (0, "linked\n"), r
    assert pod.exec("/bin/cat", "/tmp/g").returncode == 1
    r = reload(pod, write_variant(pod, "same.toml", policy_text(pod)))
    assert r.returncode == 0, r
    r = pod.exec("/bin/cat", "/tmp/g")
    assert (r.returncode, r.stderr) == (1, "/bin/cat: /tmp/g: Permission denied\n"), r


def test_reload_under_load_loses_no_request(pod_factory):
    """A process reads a file in a loop while the policy is reloaded ten
    times: every read succeeds (each decision is under the old or the new
    policy, never neither)."""
    pod = pod_factory.start(peas=BASE.replace("complain = true", "complain = false"))
    reader = subprocess.Popen(
        POD + ["exec", pod.name, "--", PY, "-c",
               "import time\nn = bad = 0\nend = time.monotonic() + 15\n"
               "while time.monotonic() < end:\n"
               "    try:\n        open('/etc/passwd').read(); n += 1\n"
               "    except OSError:\n        bad += 1\n"
               "print(n, bad)"],
        env=pod.factory.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        same = write_variant(pod, "same.toml", policy_text(pod))
        for _ in range(10):
            assert reload(pod, same).returncode == 0
        n, bad = map(int, reader.communicate(timeout=60)[0].split())
        assert bad == 0 and n > 100, (n, bad)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait(timeout=30)
