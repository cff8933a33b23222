"""What a pod process sees: only the pod (pids, host name, users, IPC, files)."""

from __future__ import annotations

import json
import os
import subprocess

from kernel import cgroup


def test_start_prints_name_and_list_shows_it(pods, shared_pod):
    r = shared_pod.cli("list", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    me = rows[shared_pod.name]
    assert me["state"] == "running"
    assert me["peas"] == ["main", "other"]
    assert me["processes"] >= 1
    table = shared_pod.cli("list")
    assert shared_pod.name in table.stdout and "running" in table.stdout


def test_pid1_is_our_init_and_proc_shows_only_the_pod(shared_pod):
    r = shared_pod.exec("/bin/sh", "-c",
                        "echo $$; tr '\\0' ' ' < /proc/1/cmdline; echo; ls /proc | grep -E '^[0-9]+$'")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "pods.init" in lines[1]
    visible = {int(x) for x in lines[2:]}
    assert 1 in visible
    # Only pid 1, the shell and its ls/grep: nothing of the host (the host
    # has dozens of processes, among them the pod's daemon).
    assert len(visible) <= 5, visible
    assert shared_pod.state()["daemon_pid"] not in visible or shared_pod.state()["daemon_pid"] < 10
    # The host pid of the daemon does not exist in the pod's /proc.
    daemon = shared_pod.state()["daemon_pid"]
    r = shared_pod.exec("/bin/sh", "-c", f"test -e /proc/{daemon}/status && echo seen || echo absent")
    assert r.stdout.strip() == "absent"


def test_ps_lists_vpid_pea_uid_command(shared_pod):
    r = shared_pod.cli("ps", shared_pod.name, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    first = rows[0]
    assert first["vpid"] == 1 and first["pea"] == "main" and first["uid"] == 0
    assert "pods.init" in first["command"]
    assert isinstance(first["pid"], int) and first["pid"] > 1
    text = shared_pod.cli("ps", shared_pod.name)
    assert text.stdout.split()[:5] == ["VPID", "PID", "PEA", "UID", "COMMAND"]


def test_hostname_is_the_policy_s(shared_pod):
    r = shared_pod.exec("hostname")
    assert r.stdout.strip() == f"{shared_pod.name}-host"
    assert os.uname().nodename != r.stdout.strip()


def test_pod_root_is_uid_0_with_the_policy_s_map(shared_pod):
    r = shared_pod.exec("/bin/sh", "-c", "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map")
    assert r.returncode == 0, r.stderr
    lines = [ln.split() for ln in r.stdout.splitlines()]
    assert lines[0] == ["0"] and lines[1] == ["0"]
    assert lines[2] == ["0", str(shared_pod.base), "65536"]
    assert lines[3] == ["0", str(shared_pod.base), "65536"]


def test_user_option_runs_as_pod_user(shared_pod):
    r = shared_pod.exec("/bin/sh", "-c", "id -u; id -g; id -G", user=1000)
    assert r.stdout.split() == ["1000", "1000", "1000"]


def test_files_of_pod_root_and_pod_user_on_disk(shared_pod):
    r = shared_pod.exec("/bin/sh", "-c", "echo a > /tmp/by-root; stat -c %u:%g /tmp/by-root")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0:0"
    st = os.stat(shared_pod.root / "tmp" / "by-root")
    assert (st.st_uid, st.st_gid) == (0, 0)  # virtual ids on disk (SECURITY.md, "User and group ids")
    r = shared_pod.exec("/bin/sh", "-c", "echo b > /tmp/by-user; stat -c %u:%g /tmp/by-user",
                        user=1000)
    assert r.stdout.strip() == "1000:1000", r.stderr
    st = os.stat(shared_pod.root / "tmp" / "by-user")
    assert (st.st_uid, st.st_gid) == (1000, 1000)


def test_only_the_pod_s_filesystem_is_visible(shared_pod):
    r = shared_pod.exec("/bin/sh", "-c", "ls /; ls /dev")
    names = r.stdout.split()
    assert "work" not in names and "home" not in names and "sys" not in names
    for dev in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm"):
        assert dev in names
    r = shared_pod.py("import os; print(sorted(os.listdir('/dev')))")
    assert json.loads(r.stdout.replace("'", '"')) == sorted(
        ["fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
         "tty", "urandom", "zero"])
    # The devices work (read from /dev/zero, write to /dev/null).
    r = shared_pod.exec("/bin/sh", "-c", "head -c 4 /dev/zero | od -An -tx1; echo x > /dev/null")
    assert r.stdout.split() == ["00", "00", "00", "00"]


def test_readonly_host_directory_gives_erofs(shared_pod):
    r = shared_pod.py(
        "import os, errno\n"
        "try:\n    os.open('/usr/pod-was-here', os.O_CREAT | os.O_WRONLY, 0o644)\n"
        "except OSError as e:\n    print(errno.errorcode[e.errno])\n")
    assert r.stdout.strip() == "EROFS", r.stderr
    assert not os.path.exists("/usr/pod-was-here")


def test_sysv_ipc_is_per_pod(pods, shared_pod):
    other = pods.start()
    try:
        r = shared_pod.exec("/bin/sh", "-c", "ipcmk -M 4096 >/dev/null; ipcmk -S 1 >/dev/null;"
                                             " ipcs -m | grep -c '^0x'; ipcs -s | grep -c '^0x'")
        assert r.stdout.split() == ["1", "1"], r.stdout + r.stderr
        # Invisible to another pod ...
        r = other.exec("/bin/sh", "-c", "ipcs -m | grep -c '^0x'; ipcs -s | grep -c '^0x'")
        assert r.stdout.split() == ["0", "0"]
        # ... and to the host: the pod's keys are not in the host's tables.
        r = shared_pod.exec("/bin/sh", "-c", "ipcs -m | grep '^0x' | cut -d' ' -f1")
        key = r.stdout.split()[0]
        host = subprocess.run(["ipcs", "-m"], capture_output=True, text=True, timeout=30)
        assert key not in host.stdout
    finally:
        assert other.stop().returncode == 0


def test_cgroup_namespace_shows_the_pea_only(shared_pod):
    r = shared_pod.exec("cat", "/proc/self/cgroup", pea="other")
    assert "0::/other" in r.stdout.splitlines()
    host_view = cgroup.pea_cgroup(shared_pod.name, "other")
    assert str(host_view) not in r.stdout


def test_loopback_only_without_net(shared_pod):
    # /proc/net/dev lists the interfaces of the reader's network namespace.
    r = shared_pod.exec("cat", "/proc/net/dev")
    names = [ln.split(":")[0].strip() for ln in r.stdout.splitlines()[2:]]
    assert names == ["lo"], r.stdout + r.stderr
