"""Mount, unmount, daemon death, the session API and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from peafs_support import peafs_cmd, run_in_pea
from helpers_peafs import in_subprocess_as_host, run_snippet

POLICY = '[pea.all.files]\n"/" = "rwx"\n'


def _mountinfo_line(mp) -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if line.split()[4] == str(mp):
                return line
    return None


def _wait_dead(pid, timeout=20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_mount_is_live_on_return_with_its_options(peafs_mount):
    m = peafs_mount(POLICY)
    (m.root / "x").write_text("x")
    line = _mountinfo_line(m.mountpoint)
    assert line is not None
    fstype, source, opts = line.split(" - ")[1].split()[:3]
    assert fstype == "fuse.peafs" and source == f"peafs:{m.pod}"
    assert {"nosuid", "nodev"} <= set(line.split()[5].split(","))
    assert {"default_permissions", "allow_other"} <= set(opts.split(","))
    assert run_snippet(m, "all", 'out = os.listdir(".")') == ["x"]
    state = json.loads((m.state_dir / "mount.json").read_text())
    assert state["pod"] == m.pod and state["mountpoint"] == str(m.mountpoint)


def test_umount_stops_the_daemon_and_clears_state(peafs_mount):
    m = peafs_mount(POLICY)
    pid = m.daemon_pid()
    r = subprocess.run(peafs_cmd("umount", m.mountpoint), capture_output=True, text=True,
                       timeout=60, env=m.env())
    assert r.returncode == 0, r.stderr
    m.mounted = False
    assert _mountinfo_line(m.mountpoint) is None
    assert _wait_dead(pid)
    assert not (m.state_dir / "mount.json").exists()
    assert (m.state_dir / "audit.log").exists()        # kept across mounts
    # The same pod mounts again.
    m2 = peafs_mount(POLICY, root=m.root)
    assert m2.pod == m.pod
    assert run_snippet(m2, "all", 'out = E(os.listdir, ".")') == "OK"


def test_killed_daemon_gives_enotconn_never_host_files(peafs_mount):
    m = peafs_mount(POLICY)
    (m.root / "f").write_text("f")
    # Acknowledged by fsync before the crash: must be on disk afterwards.
    run_snippet(m, "all", r'''
fd = os.open("durable", os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"acknowledged"); os.fsync(fd); os.close(fd)
out = None
''')
    pid = m.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    assert _wait_dead(pid)
    assert (m.root / "durable").read_text() == "acknowledged"
    mp = str(m.mountpoint)
    got = in_subprocess_as_host(rf'''
mp = {mp!r}
out = {{"list": E(listdir, mp), "stat": E(os.stat, mp + "/f"), "read": E(read, mp + "/f"),
       "create": E(opens, mp + "/new", os.O_WRONLY | os.O_CREAT)}}
''', preexec=run_in_pea(m.pod, "all"))
    assert got == {"list": "ENOTCONN", "stat": "ENOTCONN", "read": "ENOTCONN",
                   "create": "ENOTCONN"}
    assert not (m.root / "new").exists()
    r = subprocess.run(peafs_cmd("umount", m.mountpoint), capture_output=True, text=True,
                       timeout=60, env=m.env())
    assert r.returncode == 0, r.stderr
    m.mounted = False
    assert _mountinfo_line(m.mountpoint) is None
    assert not (m.state_dir / "mount.json").exists()
    assert os.listdir(m.mountpoint) == []          # the bare host directory again


def test_foreground_mount_ends_on_sigterm(tmp_path, monkeypatch):
    from peafs_support import _fill_policy, kill_pod
    pod = f"t{os.urandom(5).hex()}"
    root = tmp_path / "root"
    root.mkdir()
    mp = tmp_path / "mnt"
    mp.mkdir()
    pol = tmp_path / "p.toml"
    pol.write_text(_fill_policy(POLICY, pod, root))
    env = {**os.environ, "PEAPOD_RUN": str(tmp_path / "run")}
    p = subprocess.Popen(peafs_cmd("mount", root, mp, "--policy", pol, "--foreground"), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while _mountinfo_line(mp) is None and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert _mountinfo_line(mp) is not None, p.stderr.read() if p.poll() is not None else ""
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
        assert _mountinfo_line(mp) is None
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        if _mountinfo_line(mp) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], timeout=30)
        kill_pod(pod)


SESSION_SCRIPT = r'''
import sys, trio, rules
from pathlib import Path
from peafs.session import PeaFSSession
policy = rules.load(sys.argv[1])
s = PeaFSSession(Path(sys.argv[2]), Path(sys.argv[3]), policy, Path(sys.argv[4]))
s.mount()
print("mounted", flush=True)
async def main():
    async with trio.open_nursery() as n:
        async def closer():
            await trio.to_thread.run_sync(sys.stdin.readline)
            s.close()
            s.close()          # idempotent
        n.start_soon(closer)
        await s.serve()
trio.run(main)
s.close()
print("served", flush=True)
'''


def test_session_api(tmp_path):
    from peafs_support import _fill_policy, kill_pod
    pod = f"t{os.urandom(5).hex()}"
    root, mp, state = tmp_path / "root", tmp_path / "mnt", tmp_path / "state"
    root.mkdir()
    mp.mkdir()
    pol = tmp_path / "p.toml"
    pol.write_text(_fill_policy(POLICY, pod, root))
    p = subprocess.Popen([sys.executable, "-c", SESSION_SCRIPT, pol, root, mp, state],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "mounted"
        assert _mountinfo_line(mp) is not None
        (root / "seen").write_text("s")
        got = in_subprocess_as_host(f'out = os.listdir({str(mp)!r})',
                                    preexec=run_in_pea(pod, "all"))
        assert got == ["seen"]
        p.stdin.write("close\n")
        p.stdin.flush()
        assert p.wait(timeout=30) == 0, p.stderr.read()
        assert p.stdout.read().strip() == "served"
        assert _mountinfo_line(mp) is None
        assert (state / "audit.log").exists()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        if _mountinfo_line(mp) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(mp)], timeout=30)
        kill_pod(pod)


def test_bad_input_is_one_line_no_traceback(tmp_path):
    env = {**os.environ, "PEAPOD_RUN": str(tmp_path / "run")}
    bad = tmp_path / "bad.toml"
    bad.write_text('[pod]\nname = "BAD NAME"\nroot = "."\n')
    cases = [
        (peafs_cmd("mount", tmp_path, tmp_path, "--policy", bad), 2),
        (peafs_cmd("mount", tmp_path / "nope", tmp_path, "--policy", bad), 2),
        (peafs_cmd("run", tmp_path, "--pea", "x", "--", "true"), 1),
        (peafs_cmd("umount", tmp_path), 1),
        (peafs_cmd("audit", tmp_path), 1),
    ]
    for cmd, status in cases:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
        assert r.returncode == status, (cmd, r.returncode, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.strip(), (cmd, r.stderr)
    r = subprocess.run(peafs_cmd("mount", tmp_path, tmp_path, "--policy", bad),
                       capture_output=True, text=True, timeout=30, env=env)
    assert f"{bad}:2: pod name" in r.stderr, r.stderr


def test_run_refuses_unknown_pea_and_unmapped_user(peafs_mount):
    m = peafs_mount(POLICY)
    r = m.run(["true"], "nosuchpea")
    assert r.returncode == 2 and "no pea" in r.stderr
    r = m.run(["true"], "all", user=70000)
    assert r.returncode == 2 and "not mapped" in r.stderr
    r = m.run(["sh", "-c", "exit 7"], "all")
    assert r.returncode == 7
    r = m.run(["sh", "-c", "kill -TERM $$"], "all")
    assert r.returncode == 128 + signal.SIGTERM


def test_a_name_made_outside_the_mount_appears(peafs_mount):
    """Absent names are cached by the kernel (peafs.fs.NEGATIVE_TIMEOUT): a
    file put into the staging directory from the host, not through the
    mount, after a pod process found it missing, becomes visible once that
    short timeout has passed (the loop is bounded at 20 s)."""
    m = peafs_mount(POLICY)
    code = """
import os, sys, time
p = os.path.join(sys.argv[1], "late")
print(os.path.exists(p), flush=True)
sys.stdin.readline()                # the host creates the file now
deadline = time.monotonic() + 20
while not os.path.exists(p) and time.monotonic() < deadline:
    time.sleep(0.1)
print(os.path.exists(p), open(p).read() if os.path.exists(p) else "")
"""
    p = subprocess.Popen(peafs_cmd("run", m.mountpoint, "--pea", "all", "--", "/usr/bin/python3",
                                   "-I", "-S", "-c", code, m.mountpoint),
                         env=m.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().split() == ["False"]
        (m.root / "late").write_text("made on the host")
        p.stdin.write("\n")
        p.stdin.flush()
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert out.split() == ["True", "made", "on", "the", "host"]


def test_peafs_run_gives_cmd_no_descriptor_but_its_stdio(peafs_mount, tmp_path):
    # A directory descriptor of the host inherited by CMD would reach files
    # beside the mount without any rule being asked (openat on it).
    m = peafs_mount('[pea.a.files]\n"/" = "rwx"\n')
    (tmp_path / "beside").write_text("host file beside the mount")
    host_dir = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        proc = m.py("import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))",
                    "a", pass_fds=(host_dir,))
    finally:
        os.close(host_dir)
    assert proc.returncode == 0, proc.stderr
    # 0-2, and the descriptor listdir itself opened.
    assert json.loads(proc.stdout)[:3] == [0, 1, 2]
    assert len(json.loads(proc.stdout)) == 4
