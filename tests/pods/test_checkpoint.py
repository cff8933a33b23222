"""`pod checkpoint` and `pod restore` (pods/checkpoint.py, docs/MIGRATION.md):
a service's processes saved and put back into a new pod, each in its pea,
with its mediation back, and every bad image refused before anything runs.

Real pods and a real CRIU: the module's fixture runs contrib/criu/install-criu
(`make criu`), which builds CRIU from Debian's source on a fresh machine
(about 95 s; 0.1 s once built). The pod fixtures stop every pod and fail the
test if anything was left behind.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from kernel import cgroup, procfs
from pods import ckptimage
from pod_support import POD, Pod, REPO, wait_for

# The tree spans two peas: the shell in "app", its worker (a copy of sleep)
# moved to "work" by a transition when it was executed. Each round the
# shell counts, and tries a signal across peas (to the worker): the
# supervisor refuses it (EPERM); with no listener it would be ENOSYS.
LOOP = ("/srv/bin/worker 100000 & w=$!; i=0; while :; do i=$((i+1)); echo $i > /srv/data/count; "
        "echo line $i; kill -0 $w 2>/srv/data/kill; echo rc=$? >> /srv/data/kill; sleep 0.1; done")
PEAS = """
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

[pea.main.files]
"/" = "rwx"
"""
SERVICE = ('[[pod.service]]\nname = "counter"\npea = "app"\n'
           f'exec = ["/bin/sh", "-c", {json.dumps(LOOP)}]\n')


@pytest.fixture(scope="module")
def criu_built():
    r = subprocess.run([str(REPO / "contrib/criu/install-criu")], capture_output=True, text=True,
                       timeout=1800, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"contrib/criu/install-criu failed:\n{r.stderr[-3000:]}"
    return r.stdout.strip().splitlines()[-1]


def counter_root(root: Path) -> Path:
    """The counter's programs and data in a staging root made by the
    pod fixture (conftest.make_staging)."""
    (root / "srv/bin").mkdir(parents=True)
    (root / "srv/data").mkdir()
    shutil.copy("/usr/bin/sleep", root / "srv/bin/worker")
    return root


def python_service(name: str, argv: list[str]) -> str:
    return (f'[[pod.service]]\nname = "{name}"\npea = "app"\n'
            f'exec = {json.dumps(["/usr/bin/python3", *argv])}\n\n')


def start_services(pod_factory, services: str, *, peas=PEAS, files=None, net=None) -> Pod:
    """A started pod with the counter's programs (counter_root), running
    ``services`` (TOML), ``files`` ({path in the root: text}) planted
    before it starts; ``net``: its [pod.net] address."""
    policy, name, root, base = pod_factory.write_policy(peas=peas, net=net)
    counter_root(root)
    for path, text in (files or {}).items():
        (root / path).write_text(text)
    policy.write_text(policy.read_text() + "\n" + services)
    pod = Pod(pod_factory, name, policy, root, base, net)
    pod_factory.pods.append(pod)
    r = pod_factory.cli("start", policy, timeout=120)
    assert r.returncode == 0, r.stderr
    return pod


def start_counter(pod_factory, tmp_path, *, peas=PEAS, files=None, services="",
                  net=None) -> Pod:
    """A pod running the counter, with ``services`` besides (TOML)."""
    pod = start_services(pod_factory, SERVICE + "\n" + services, peas=peas, files=files, net=net)
    wait_for(lambda: count(pod) >= 5, what="the counter to count")
    return pod


def count(pod: Pod) -> int:
    try:
        return int((pod.root / "srv/data/count").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0




def service(pod: Pod) -> dict:
    r = pod.cli("status", pod.name, "--json")
    assert r.returncode == 0, r.stderr
    return next(s for s in json.loads(r.stdout)["services"] if s["name"] == "counter")


def processes(name: str) -> dict[int, tuple[str, str]]:
    """host pid -> (pea, command line) of every process of pod ``name``."""
    out = {}
    for pid in cgroup.pids_in(name):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        out[pid] = (cgroup.pea_of(pid, name), cmd.strip())
    return out


def test_a_restored_counter_goes_on_in_its_peas_with_its_mediation(pod_factory, tmp_path,
                                                                    criu_built):
    pod = start_counter(pod_factory, tmp_path)
    before = service(pod)
    img = tmp_path / "img"
    r = pod.cli("checkpoint", pod.name, img, "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["stopped"] is True and result["trees"] == 1
    at_dump = count(pod)
    wait_for(lambda: not (pod_factory.run / "pods" / pod.name).exists(), what="the pod to stop")
    time.sleep(0.5)
    assert count(pod) == at_dump, "a process ran after its dump"
    assert (img / "manifest.json").is_file() and (img / "tree-1").is_dir()

    r = pod.cli("restore", img, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == pod.name
    wait_for(lambda: count(pod) > at_dump + 3, what="the restored counter to count")
    assert count(pod) < at_dump + 60, "the counter started again instead of going on"
    after = service(pod)
    assert after["state"] == "running" and after["vpid"] == before["vpid"]
    procs = processes(pod.name)
    shells = [pid for pid, (pea, cmd) in procs.items() if cmd.startswith("/bin/sh -c")]
    workers = [pid for pid, (pea, cmd) in procs.items() if cmd.startswith("/srv/bin/worker")]
    assert [procs[p][0] for p in shells] == ["app"] and [procs[p][0] for p in workers] == ["work"]
    assert not [p for p, (pea, _) in procs.items() if pea == cgroup.CHECKPOINT]
    # The signal across peas is refused by the supervisor, as before. The
    # file is written twice per turn (kill's message, then rc=): read it
    # whole, not between the two writes.
    refused = wait_for(lambda: (lambda t: t if "rc=" in t else "")(
        (pod.root / "srv/data/kill").read_text()), what="a whole turn of the kill file")
    assert "Operation not permitted" in refused and "rc=1" in refused, refused
    # Its output reaches the log again, through the new pipe.
    def logged_after():
        r = pod.cli("logs", pod.policy, "--json")
        lines = [json.loads(x) for x in r.stdout.splitlines()]
        return [x for x in lines if x.get("line", "").startswith("line ")
                and int(x["line"].split()[1]) > at_dump]
    wait_for(logged_after, what="the restored service's output in its log")
    # PeaFS judges by the peas again (criu ran with every right): pea work
    # may not write the counter's directory.
    r = pod.exec("/bin/sh", "-c", "echo x > /srv/data/x", pea="work")
    assert r.returncode != 0 and "Permission denied" in r.stderr, (r.returncode, r.stderr)
    assert not (pod.root / "srv/data/x").exists()
    # A restored pod is checkpointed again: its tasks are in the time
    # namespace criu made for them, which criu must share to dump them.
    r = pod.cli("checkpoint", pod.name, tmp_path / "again", "--leave-running", timeout=300)
    assert r.returncode == 0, r.stderr


def test_checkpoint_leave_running_and_bad_images(pod_factory, tmp_path, criu_built):
    pod = start_counter(pod_factory, tmp_path)
    img = tmp_path / "img"
    r = pod.cli("checkpoint", pod.name, img, "--leave-running", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "still running" in r.stdout
    c = count(pod)
    wait_for(lambda: count(pod) > c + 2, what="the counter to go on after the checkpoint")

    # Into a directory that is not empty: refused, nothing written.
    r = pod.cli("checkpoint", pod.name, img, "--leave-running", timeout=300)
    assert r.returncode == 1
    assert r.stderr.strip() == f"pod: checkpoint {pod.name}: {img}: not empty (a checkpoint " \
                               f"never writes over an image)"
    # The pod's name is taken while it runs.
    r = pod.cli("restore", img, timeout=120)
    assert r.returncode == 2 and f"pod {pod.name} is already running" in r.stderr

    def restore_refused(image, expected):
        r = pod.cli("restore", image, "--name", "restored-x", timeout=120)
        assert r.returncode == 2, r.stdout + r.stderr
        assert re.fullmatch(expected, r.stderr.strip()), r.stderr
        assert not (pod_factory.run / "pods" / "restored-x").exists()
        assert not cgroup.pod_cgroup("restored-x").exists()
        return r

    restore_refused(tmp_path / "missing", r"pod: restore: .*missing: .*")
    # An image whose manifest verifies but which criu cannot restore (a
    # process's core image gone, the manifest written again, as root could):
    # the new pod is started, the restore fails, and nothing is left.
    broken = tmp_path / "broken"
    shutil.copytree(img, broken, symlinks=True)
    for core in (broken / "tree-1").glob("core-*.img"):
        core.unlink()
    (broken / "manifest.json").unlink()
    ckptimage.write_manifest(broken, {"pod": pod.name})
    assert pod.stop().returncode == 0          # its root and ids are the image's
    r = restore_refused(broken, r"pod: cannot start pod restored-x: restore from .*broken: "
                                r"restore of tree tree-1 failed: .*")
    # What it keeps is criu's log, named in the message (removed here).
    kept = Path(re.search(r"\(log: (/var/tmp/peapod-restore-[^/]+)/", r.stderr).group(1))
    assert {p.name for p in kept.rglob("*") if p.is_file()} == {"dump.log", "restore.log"}
    shutil.rmtree(kept)
    bad = tmp_path / "bad"
    shutil.copytree(img, bad, symlinks=True)
    pages = sorted((bad / "tree-1").glob("pages-*.img"))[0]
    data = bytearray(pages.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pages.write_bytes(bytes(data))
    restore_refused(bad, re.escape(f"pod: restore: {pages}: sha256 mismatch") + ".*")
    (bad / "tree-1" / pages.name).unlink()
    restore_refused(bad, re.escape(f"pod: restore: {pages}: ") + ".*missing.*")


def test_a_pod_exec_session_is_refused(pod_factory, tmp_path, criu_built):
    pod = start_counter(pod_factory, tmp_path)
    sleeper = subprocess.Popen([*POD, "exec", pod.name, "--", "sleep", "30"],
                               env=pod_factory.env(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(cmd.startswith("sleep 30") for _, cmd in processes(pod.name).values()),
                 what="the exec'd sleep")
        r = pod.cli("checkpoint", pod.name, tmp_path / "img", timeout=300)
        assert r.returncode == 1
        assert re.fullmatch(rf"pod: checkpoint {pod.name}: `pod exec` commands are running in pod "
                            rf"{pod.name} \(host pids \d+\): a checkpoint keeps services and what "
                            r"they started; end them first", r.stderr.strip()), r.stderr
        c = count(pod)
        wait_for(lambda: count(pod) > c, what="the pod to go on after a refused checkpoint")
        assert service(pod)["restarts"] == 0, "a refused checkpoint killed the service"
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)


# A pod process that watches for criu's abstract sockets (/proc/net/unix:
# "@/crtools-pr-..." of the parasite, "@/criu-fdstore-..." of the fd store)
# and connects to each as soon as it appears. The checkpoint holds the pod
# still while the peas' abstract-Unix programs are off, so it never gets a
# chance; it writes what it managed to /srv/data/reached.
ATTACKER = r"""
import socket, time
seen = set()
end = time.monotonic() + 60
while time.monotonic() < end:
    try:
        names = [l.split()[-1] for l in open("/proc/net/unix").read().splitlines()[1:]
                 if l.split()[-1].startswith("@")]
    except OSError:
        names = []
    for n in names:
        if ("crtools" in n or "criu" in n) and n not in seen:
            seen.add(n)
            for kind in (socket.SOCK_SEQPACKET, socket.SOCK_STREAM, socket.SOCK_DGRAM):
                s = socket.socket(socket.AF_UNIX, kind)
                try:
                    s.connect("\0" + n[1:])
                    open("/srv/data/reached", "a").write(n + "\n")
                except OSError as e:
                    open("/srv/data/refused", "a").write(f"{n} {e.errno}\n")
                s.close()
"""


def test_no_pod_process_reaches_criu_sockets_during_a_checkpoint(pod_factory, tmp_path,
                                                                 criu_built):
    pod = start_counter(pod_factory, tmp_path, files={"srv/bin/attack.py": ATTACKER},
                        services=python_service("attacker", ["/srv/bin/attack.py"]))
    root = pod.root
    results = []
    for i in range(3):
        r = pod.cli("checkpoint", pod.name, tmp_path / f"img{i}", "--leave-running", timeout=300)
        results.append(r)
        if r.returncode != 0:
            break
    time.sleep(1)
    # Without the hold the attacker connects to criu's parasite socket
    # ("@/crtools-pr-13-<run id>") while another tree is dumped.
    assert not (root / "srv/data/reached").exists(), (root / "srv/data/reached").read_text()
    assert [r.returncode for r in results] == [0, 0, 0], results[-1].stderr


# A process that arms a POSIX timer whose signal is SIGCONT: the kernel
# would wake it, with no pod code running, while the peas' programs are off
# (pods/podhold.py, "What is not covered"). timer_create's sigevent is in
# memory, out of the filter's reach, so the checkpoint reads
# /proc/PID/timers under the hold and refuses.
TIMER = r"""
import ctypes, signal, time
libc = ctypes.CDLL(None, use_errno=True)
class Sigevent(ctypes.Structure):
    _fields_ = [("value", ctypes.c_void_p), ("signo", ctypes.c_int), ("notify", ctypes.c_int),
                ("pad", ctypes.c_int * 12)]
class Spec(ctypes.Structure):
    _fields_ = [("interval", ctypes.c_long * 2), ("value", ctypes.c_long * 2)]
signal.signal(signal.SIGCONT, lambda *a: None)
ev = Sigevent(signo=signal.SIGCONT, notify=0)
timer = ctypes.c_void_p()
assert libc.timer_create(1, ctypes.byref(ev), ctypes.byref(timer)) == 0
spec = Spec((0, 300_000_000), (0, 300_000_000))
assert libc.timer_settime(timer, 0, ctypes.byref(spec), None) == 0
while True:
    time.sleep(1)
"""


def test_a_timer_that_sends_sigcont_refuses_the_checkpoint(pod_factory, tmp_path, criu_built):
    pod = start_counter(pod_factory, tmp_path, files={"srv/bin/timer.py": TIMER},
                        services=python_service("waker", ["/srv/bin/timer.py"]))
    name = pod.name
    waker_pid = next(s["pid"] for s in json.loads(pod.cli("status", name, "--json").stdout)["services"]
                     if s["name"] == "waker")
    r = pod.cli("checkpoint", name, tmp_path / "img", timeout=300)
    assert r.returncode == 1, r.stdout
    assert r.stderr.strip() == (
        f"pod: checkpoint {name}: processes of pod {name} have a timer that sends a signal the "
        f"hold cannot stop (host pid: {waker_pid} (SIGCONT)): they could run during the dump; "
        f"a checkpoint is refused while they have one")
    assert not (tmp_path / "img" / "manifest.json").exists()
    c = count(pod)
    wait_for(lambda: count(pod) > c, what="the pod to go on after the refusal")
    assert service(pod)["restarts"] == 0, "a refused checkpoint killed the service"


def test_migration_to_another_run_directory_and_a_copied_root(pod_factory, tmp_path, criu_built):
    """The two-step move (README, "Moving a pod"): checkpoint under one
    $PEAPOD_RUN, copy the staging directory while no pod runs on it,
    restore under another $PEAPOD_RUN (standing for another host) on the
    copy; the target refuses what it cannot take."""
    pod = start_counter(pod_factory, tmp_path)
    # A hard link gives its new path the original's rule in every pea
    # (PeaFS's link rules, kept in ROOT.peapod/, which the copy below
    # leaves behind): pea work may execute /srv/data/w through it.
    r = pod.exec("/bin/ln", "/srv/bin/worker", "/srv/data/w", pea="main")
    assert r.returncode == 0, r.stderr
    img = tmp_path / "img"
    r = pod.cli("checkpoint", pod.name, img, timeout=300)
    assert r.returncode == 0, r.stderr
    at_dump = count(pod)
    wait_for(lambda: not (pod_factory.run / "pods" / pod.name).exists(), what="the pod to stop")
    copy = tmp_path / "host-b" / "root"
    copy.parent.mkdir()
    subprocess.run(["cp", "-a", str(pod.root), str(copy)], check=True)
    other = type(pod_factory)(tmp_path / "host-b")     # conftest.PodFactory: another run dir
    try:
        moved = Pod(other, "moved", pod.policy, copy, pod.base, None)
        other.pods.append(moved)
        r = other.cli("restore", img, "--name", "moved", "--root", copy, timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "moved"
        wait_for(lambda: count(moved) > at_dump + 3, what="the counter on the copy")
        assert count(pod) == at_dump, "the original root was written after the move"
        assert (other.run / "restored" / "moved.toml").is_file()
        r = moved.exec("/srv/data/w", "0", pea="work")
        assert r.returncode == 0, f"the link rule did not move with the image: {r.stderr}"
        # The target refuses what it cannot take: the name, then the ids.
        r = other.cli("restore", img, "--name", "moved", "--root", copy, timeout=120)
        assert r.returncode == 2 and "pod moved is already running" in r.stderr, r.stderr
        r = other.cli("restore", img, "--name", "again", "--root", pod.root, timeout=120)
        assert r.returncode == 2, r.stderr
        assert "the id ranges of pod again overlap those of running pod moved" in r.stderr
        assert not cgroup.pod_cgroup("again").exists()
    finally:
        leftovers = other.teardown()
    assert not leftovers, leftovers


# Two services of one pod joined by a TCP connection over the pod's own
# loopback: criu would need --tcp-established, whose restore needs a
# capability pod root never has, so the checkpoint is refused and the pod
# goes on untouched.
TCP_SERVER = ("import socket, time\n"
              "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
              "s.bind(('127.0.0.1', 7000)); s.listen(); c, _ = s.accept()\n"
              "open('/srv/data/accepted', 'w').write('yes')\n"
              "time.sleep(100000)\n")
TCP_CLIENT = ("import socket, time\n"
              "while True:\n"
              "    try:\n"
              "        c = socket.create_connection(('127.0.0.1', 7000)); break\n"
              "    except OSError:\n"
              "        time.sleep(0.05)\n"
              "time.sleep(100000)\n")


def test_an_open_tcp_connection_refuses_the_checkpoint(pod_factory, tmp_path, criu_built):
    peas = PEAS + '\n[pea.app.net]\nconnect = true\nbind = [7000]\n'
    pod = start_counter(pod_factory, tmp_path, peas=peas,
                        services=python_service("server", ["-c", TCP_SERVER])
                        + python_service("client", ["-c", TCP_CLIENT]))
    root, name = pod.root, pod.name
    wait_for(lambda: (root / "srv/data/accepted").exists(), what="the connection")
    r = pod.cli("checkpoint", name, tmp_path / "img", timeout=300)
    assert r.returncode == 1, r.stdout
    assert re.fullmatch(rf"pod: checkpoint {name}: dump of tree tree-\d \(pid \d+ in the pod\) "
                        r"failed: a TCP connection is open, and a checkpoint keeps none; the pod "
                        r"goes on: try again when its clients are done \(log: .*dump.log\)",
                        r.stderr.strip()), r.stderr
    assert not (tmp_path / "img" / "manifest.json").exists()
    # What the failure left is criu's logs only, and a retry may use the
    # same directory (it is not an image to protect).
    assert {p.name for p in (tmp_path / "img").rglob("*") if p.is_file()} <= {"dump.log"}
    again = pod.cli("checkpoint", name, tmp_path / "img", timeout=300)
    assert again.returncode == 1 and "a TCP connection is open" in again.stderr, again.stderr
    c = count(pod)
    wait_for(lambda: count(pod) > c, what="the pod to go on")
    st = json.loads(pod.cli("status", name, "--json").stdout)["services"]
    assert [s["restarts"] for s in st] == [0, 0, 0], st


def test_restore_refuses_an_address_in_use(pod_factory, tmp_path, criu_built):
    """The target cannot take the pod: its address is a running pod's. The
    restore is refused before anything starts (`pod start`'s checks)."""
    third = random.randrange(100, 200)
    pod = start_counter(pod_factory, tmp_path, net=f"10.233.{third}.2/24")
    img = tmp_path / "img"
    r = pod.cli("checkpoint", pod.name, img, "--leave-running", timeout=300)
    assert r.returncode == 0, r.stderr
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(pod.root), str(copy)], check=True)
    r = pod.cli("restore", img, "--name", "twin", "--root", copy, timeout=120)
    assert r.returncode == 2, r.stdout
    assert (f"[pod.net] address 10.233.{third}.2/24: network 10.233.{third}.0/24 overlaps "
            f"network 10.233.{third}.0/24 of running pod {pod.name}") in r.stderr, r.stderr
    assert not cgroup.pod_cgroup("twin").exists()
    assert not (pod_factory.run / "pods" / "twin").exists()
    # With another address it is the ids that clash: the same range.
    r = pod.cli("restore", img, "--name", "twin", "--root", copy, "--address",
                f"10.233.{third + 50}.2/24", timeout=120)
    assert r.returncode == 2 and "the id ranges of pod twin overlap" in r.stderr, r.stderr


def test_a_process_that_exits_while_the_trees_are_read_is_no_pod_exec(monkeypatch):
    # find_trees lists the pod's processes, then reads each one's parent.
    # One that exited in between has no parent to read: it is gone, not a
    # tree of its own, and not a `pod exec` tree that refuses the
    # checkpoint (the mail pod's deliveries made it so, once, in
    # tests/e2e/test_mail_move.py).
    from types import SimpleNamespace
    from pods import checkpoint
    parents = {10: 1000, 11: 10, 12: None}
    monkeypatch.setattr(cgroup, "pids_in", lambda name: list(parents))
    monkeypatch.setattr(cgroup, "pea_of", lambda pid, name: "app")
    monkeypatch.setattr(procfs, "ppid", lambda pid: parents[pid])
    daemon = SimpleNamespace(name="t-trees", init_pid=1000, keeper=None,
                             services=SimpleNamespace(states=[]))
    assert checkpoint.find_trees(daemon) == [{"root": 10, "pids": [10, 11], "service": None}]
    parents[12] = 4242                         # a live process under another parent
    with pytest.raises(checkpoint.CheckpointError, match="pod exec"):
        checkpoint.find_trees(daemon)


# The service forks true and becomes the worker (exec), which never waits:
# true stays a zombie, and the pod's highest pid. cgroup.procs does not list
# a zombie (Documentation/admin-guide/cgroup-v2.rst), but criu dumps it with
# its parent and forks it again at restore, with its pid.
ZOMBIE_SERVICE = ('[[pod.service]]\nname = "reaperless"\npea = "app"\n'
                  'exec = ["/bin/sh", "-c", "/usr/bin/true & exec /srv/bin/worker 100000"]\n')


def zombies_of(pid: int) -> list[int]:
    """Host pids of the zombie children of ``pid`` (its main thread's)."""
    return [k for k in procfs.children(pid, pid)
            if (procfs.status(k) or {}).get("State", "").startswith("Z")]


def test_a_zombie_with_the_highest_pid_is_restored_with_its_pid(pod_factory, tmp_path,
                                                                 criu_built):
    # The restore sets the new pod's next pid above every pid of the image,
    # so that nothing criu forks first (its cgroup daemon) takes one of
    # them. A zombie counted out of that highest pid made the restore
    # fail: "Can't fork for N: File exists" (tests/e2e/test_mail_move.py,
    # once: a delivery's zombie).
    pod = start_services(pod_factory, ZOMBIE_SERVICE)
    name = pod.name

    def the_zombie():
        for pid, (pea, cmd) in processes(name).items():
            if cmd.startswith("/srv/bin/worker") and zombies_of(pid):
                return pid, zombies_of(pid)[0]
    worker, zombie = wait_for(the_zombie, what="the worker and its zombie")
    vpids = (procfs.vpid(worker), procfs.vpid(zombie))
    # The tree is the worker alone: the zombie is above it, and unlisted.
    assert vpids[1] > vpids[0] and zombie not in cgroup.pids_in(name), (vpids, zombie)

    img = tmp_path / "img"
    r = pod.cli("checkpoint", name, img, timeout=300)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: not (pod_factory.run / "pods" / name).exists(), what="the pod to stop")
    r = pod.cli("restore", img, timeout=300)
    assert r.returncode == 0, r.stderr
    worker, zombie = wait_for(the_zombie, what="the restored worker and its zombie")
    assert (procfs.vpid(worker), procfs.vpid(zombie)) == vpids
    assert processes(name)[worker][0] == "work"
