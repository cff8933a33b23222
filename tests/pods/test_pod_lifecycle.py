"""Lifecycle safety: refused starts leave nothing; `pod stop` leaves nothing;
a killed daemon takes its pod down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from kernel import cgroup
from pods import limits, netns
from pods.runtime import audit_log

from pod_support import POD


def _host_pids_alive(pids) -> list[int]:
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[-1].split()[0] != "Z":
                    alive.append(pid)
        except OSError:
            pass
    return alive


def _nothing_left(pod) -> None:
    """No process, mount, cgroup, veth or file of the pod remains."""
    assert not cgroup.pids_in(pod.name) and not limits.v1_pids(pod.name)
    assert not cgroup.pod_cgroup(pod.name).exists()
    for d in limits.v1_dirs(pod.name):
        assert not d.exists(), d
    assert not netns.veth_exists(pod.name)
    assert not (pod.run_dir / "pods" / pod.name).exists()
    # No mount anywhere mentions the pod (the daemon's namespace is gone too:
    # its processes are).
    for mi in Path("/proc").glob("[0-9]*/mountinfo"):
        try:
            text = mi.read_text()
        except OSError:
            continue
        assert f"peafs:{pod.name} " not in text, mi
        assert str(pod.run_dir / "pods" / pod.name) not in text, mi
    r = pod.cli("list", "--json")
    assert pod.name not in [row["name"] for row in json.loads(r.stdout)]


def _pod_host_pids(pod) -> list[int]:
    st = pod.state()
    return sorted(set(cgroup.pids_in(pod.name)) | {st["daemon_pid"], st["keeper_pid"],
                                                   st["tagger_pid"], st["init_pid"]})


def _sleeps(pids: list[int]) -> int:
    count = 0
    for pid in pids:
        try:
            count += Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x001000\x00"
        except OSError:
            pass
    return count


def test_stop_leaves_no_process_mount_cgroup_veth_or_file(pod_factory):
    pod = pod_factory.start(net="10.231.%d.2/24" % (os.getpid() % 250), limits_={"pids": 100})
    host_if = netns.host_ifname(pod.name)
    assert netns.veth_exists(pod.name)
    # Processes that ignore TERM must be KILLed after the timeout.
    p = subprocess.Popen([*POD, "exec", pod.name, "--", "/bin/sh", "-c",
                          "trap '' TERM; echo up; sleep 1000 & sleep 1000"],
                         env=pod_factory.env(), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "up"
    # "up" is printed before sh forks the two sleeps: wait (bounded) until
    # both run, so the stop below has TERM-ignoring processes to KILL.
    deadline = time.monotonic() + 20
    while _sleeps(pids := _pod_host_pids(pod)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sleeps(pids) == 2 and len(pids) >= 5, pids
    r = pod.stop()
    assert r.returncode == 0, r.stderr
    p.wait(timeout=30)
    assert _host_pids_alive(pids) == []
    _nothing_left(pod)
    assert subprocess.run(["ip", "link", "show", host_if], capture_output=True,
                          timeout=30).returncode != 0


def test_killed_daemon_takes_its_pod_down(pod_factory):
    pod = pod_factory.start()
    p = subprocess.Popen([*POD, "exec", pod.name, "--", "sleep", "1000"],
                         env=pod_factory.env(), stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while len(cgroup.pids_in(pod.name)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = _pod_host_pids(pod)
    os.kill(pod.state()["daemon_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while _host_pids_alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _host_pids_alive(pids) == []
    assert p.wait(timeout=30) != 0
    # The pod shows as failed, with the reason (SIGKILL: the daemon said
    # nothing), and `pod stop` clears what it left.
    rows = json.loads(pod.cli("list", "--json").stdout)
    row = [r for r in rows if r["name"] == pod.name][0]
    assert {"name": pod.name, "state": "failed", "processes": 0}.items() <= row.items()
    assert row["reason"].startswith("the daemon died"), row
    r = pod.cli("list")
    assert "failed" in r.stdout and "REASON" in r.stdout, r.stdout
    assert pod.stop().returncode == 0
    _nothing_left(pod)


def test_term_to_the_daemon_stops_the_pod_cleanly(pod_factory):
    pod = pod_factory.start()
    daemon = pod.state()["daemon_pid"]
    os.kill(daemon, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _host_pids_alive([daemon]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _host_pids_alive([daemon]) == []
    _nothing_left(pod)


def test_a_name_already_running_is_refused(pod_factory):
    pod = pod_factory.start()
    before = pod.state()
    r = pod.cli("start", pod.policy)
    assert r.returncode == 2
    assert r.stderr.strip() == f"pod: pod {pod.name} is already running"
    assert pod.state() == before
    assert pod.exec("true").returncode == 0


def test_a_missing_root_is_refused_and_leaves_nothing(pod_factory, tmp_path):
    policy, name, root, base = pod_factory.write_policy(root=tmp_path / "no-such-root")
    r = pod_factory.cli("start", policy)
    assert r.returncode == 2
    assert r.stderr.strip() == f"pod: root {tmp_path / 'no-such-root'} does not exist or is " \
                               "not a directory"
    assert not (pod_factory.run / "pods" / name).exists()
    assert not cgroup.pod_cgroup(name).exists()


def test_a_directory_under_two_names_is_refused(pod_factory, tmp_path):
    """/usr and /lib both mounted on a usr-merged host put /usr/lib into the
    pod twice (ESTALE at random under load, found with Postfix); a mount of
    a directory inside another, or overlapping the root, likewise."""
    assert Path("/lib").resolve() == Path("/usr/lib")   # Debian 12 is usr-merged
    cases = {
        "usr+lib": [("/usr", "/usr", False), ("/lib", "/lib", False)],
        "inside": [("/usr", "/usr", False), ("/usr/share", "/share", False)],
        "twice": [("/usr", "/usr", False), ("/usr", "/usr2", False)],
    }
    for what, mounts in cases.items():
        policy, name, root, _ = pod_factory.write_policy(mounts=mounts)
        r = pod_factory.cli("start", policy)
        assert r.returncode == 2, what
        host, path = mounts[1][0], mounts[1][1]
        assert r.stderr.startswith(f"pod: [[pod.mount]] {path}: host directory {host} "
                                   f"({Path(host).resolve()}) overlaps the one mounted at /usr "
                                   "(/usr): a directory may be in a pod under one name only"), \
            (what, r.stderr)
        assert not (pod_factory.run / "pods" / name).exists()
        assert not cgroup.pod_cgroup(name).exists()
    # A host directory holding the pod's root.
    policy, name, root, _ = pod_factory.write_policy(mounts=[(tmp_path, "/host", False)])
    r = pod_factory.cli("start", policy)
    assert r.returncode == 2
    assert "overlaps the pod's root" in r.stderr


def test_overlapping_id_ranges_are_refused(pod_factory):
    first = pod_factory.start()
    policy, name, _, _ = pod_factory.write_policy(base=first.base + 1000)
    r = pod_factory.cli("start", policy)
    assert r.returncode == 2
    assert f"overlap those of running pod {first.name}" in r.stderr
    assert not (pod_factory.run / "pods" / name).exists()
    assert not cgroup.pod_cgroup(name).exists()


def test_several_peas_start_only_with_the_known_gaps_accepted(pod_factory):
    # SECURITY.md "Known gaps": a multi-pea pod must not promise a
    # separation the kernel does not give. Every gap not accepted is named.
    policy, name, _, _ = pod_factory.write_policy(
        accept_gaps=False,
        extra_pod='accept_gaps = ["ipc-after-transition"]')
    r = pod_factory.cli("start", policy)
    assert r.returncode == 2, r.stdout
    assert f"pod {name} has 2 peas, and they are not separated" in r.stderr
    assert "\n  proc-read: a process may read /proc/PID/mem" in r.stderr
    assert "\n  ipc-after-transition:" not in r.stderr
    assert 'accept_gaps = ["proc-read", "ipc-after-transition"]' in r.stderr
    assert "Traceback" not in r.stderr
    assert not (pod_factory.run / "pods" / name).exists()
    assert not cgroup.pod_cgroup(name).exists()
    # One pea has nothing to separate: no acceptance needed.
    single = pod_factory.start(accept_gaps=False, peas='[pea.main.files]\n"/" = "rwx"\n')
    assert single.start_result.returncode == 0


def test_a_policy_with_errors_is_refused_with_file_line(pod_factory, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[pod]\nname = "Bad Name"\nroot = "."\nuid_map = [[0, 0, 1]]\n')
    r = pod_factory.cli("start", bad)
    assert r.returncode == 2
    assert r.stderr.startswith(f"{bad}:")
    assert "Traceback" not in r.stderr
    assert not (pod_factory.run / "pods").exists() or not os.listdir(pod_factory.run / "pods")


def test_a_symlink_in_the_staging_tree_cannot_steer_a_host_mount(pod_factory, tmp_path):
    # The staging tree (writable by pods) holds usr -> a host directory; the
    # daemon must not bind /usr onto the link's target.
    policy, name, root, _ = pod_factory.write_policy()
    target = tmp_path / "victim"
    target.mkdir()
    (target / "keep").write_text("x")
    os.symlink(target, root / "usr")
    r = pod_factory.cli("start", policy)
    assert r.returncode == 2
    assert "Too many levels of symbolic links" in r.stderr or "Not a directory" in r.stderr
    assert sorted(os.listdir(target)) == ["keep"]
    assert not (pod_factory.run / "pods" / name).exists()


def test_every_command_has_help(pod_factory):
    for cmd in ("start", "exec", "ps", "list", "stop"):
        r = pod_factory.cli(cmd, "--help")
        assert r.returncode == 0 and "usage: pod " + cmd in r.stdout


def test_stop_of_an_unknown_pod(pod_factory):
    r = pod_factory.cli("stop", "nosuchpod")
    assert r.returncode == 2 and r.stderr.strip() == "pod: pod nosuchpod is not running"
    r = pod_factory.cli("ps", "../etc")
    assert r.returncode == 2 and "invalid pod name" in r.stderr


def test_link_rules_and_audit_log_outlive_the_pod(pod_factory):
    """A pea may read /srv/motd and write /srv/data/: it links the file into
    the directory it may write. The link keeps the original's rule (r), in
    this run and, after `pod stop` and a new `pod start` of the same root,
    in the next: the write through the link is EACCES both times, and the
    audit log holds the refusals of both runs. `pod audit` prints it, by
    name while the pod runs, by policy file once it is stopped."""
    peas = ('[pea.main.files]\n"/" = "rx"\n"/srv/motd" = "r"\n"/srv/data" = "rw"\n'
            '"/srv/data/" = "rw"\n')
    pod = pod_factory.start(peas=peas, name=None)
    (pod.root / "srv" / "data").mkdir(parents=True)
    (pod.root / "srv" / "motd").write_text("hello\n")
    os.chmod(pod.root / "srv" / "data", 0o777)
    write = ("import errno\ntry:\n    open('/srv/data/l', 'a').write('x')\n    print('ok')\n"
             "except OSError as e:\n    print(errno.errorcode[e.errno])\n")
    r = pod.exec("ln", "/srv/motd", "/srv/data/l")
    assert r.returncode == 0, r.stderr
    assert pod.py(write).stdout.split() == ["EACCES"]
    audit = audit_log(pod.root)
    r = pod.cli("audit", pod.name)                 # a running pod, by name
    assert r.returncode == 0 and r.stdout == audit.read_text() and "/srv/" in r.stdout
    assert pod.stop().returncode == 0
    _nothing_left(pod)
    r = pod.cli("audit", pod.name)                 # stopped: the name is no longer known ...
    assert r.returncode == 2 and r.stderr.startswith(f"pod: pod {pod.name} is not running")
    r = pod.cli("audit", pod.policy)               # ... but its policy file leads to the log
    assert r.returncode == 0 and r.stdout == audit.read_text()
    r = pod.cli("start", pod.policy, timeout=120)
    assert r.returncode == 0, r.stderr
    assert pod.py(write).stdout.split() == ["EACCES"]
    assert (pod.root / "srv" / "motd").read_text() == "hello\n"
    refused = [json.loads(line) for line in audit.read_text().splitlines()]
    # The object has two names, each with the rule r (the link's is the
    # original's); the line names the one checked first.
    lines = [(e["operation"], e["need"], e["kind"], e["path"] == e["rule"]) for e in refused
             if e["path"] in ("/srv/data/l", "/srv/motd")]
    assert lines == [("open", "w", "path", True)] * 2, refused


def test_the_daemon_keeps_its_umask_only_peafs_s_thread_has_0(pod_factory):
    """PeaFS needs umask 0 (the modes the kernel hands it already carry the
    caller's umask). It used to set it for the whole daemon, so every child
    had to undo it; now only its serving thread has it, in a file-system
    context of its own (unshare(CLONE_FS))."""
    mask = os.umask(0o022)
    os.umask(mask)
    pod = pod_factory.start()
    pid = pod.state()["daemon_pid"]

    def umask_of(path):
        for line in Path(path).read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
        raise AssertionError(f"no Umask in {path}")

    assert umask_of(f"/proc/{pid}/status") == mask
    per_thread = {int(t): umask_of(f"/proc/{pid}/task/{t}/status")
                  for t in os.listdir(f"/proc/{pid}/task")}
    assert 0 in per_thread.values(), per_thread          # PeaFS's thread
    assert per_thread[pid] == mask
