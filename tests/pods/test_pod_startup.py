"""The start-up sequence (pods/startup.py) and its handshakes, attacked.

- Every handshake message is checked: an end of stream, bytes that are not
  a JSON object, another step or a reported error stop the start with an
  error that names the step (in-process, on socketpairs and pipes).
- A keeper or pid 1 that dies or fails at a step (strace kills it, or fails
  its system call) makes `pod start` fail with that step's name and leaves
  nothing behind: no process, cgroup, mount or runtime directory.
- A monitor's child that dies or fails before its command runs makes `pod
  exec` fail (126) with the step's name and leaves no process in the pea.
- $PEAPOD_RUN is read at the command's entry only: library calls take the
  run directory, the daemon gets it as an argument, and its children are
  found without PYTHONPATH.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from kernel import cgroup, jsonline, mountinfo, rundir
from peafs import runtime as peafs_runtime
from pods import control, lifecycle_cmd, limits, runtime
from pod_support import POD, REPO, Pod

# -- the handshake protocol, in-process ----------------------------------------------


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a, b
    a.close()
    b.close()


def test_a_step_message_is_accepted_with_its_fds(pair):
    a, b = pair
    r, w = os.pipe()
    control.send_msg(a, control.step_msg("pty", extra=1), [r])
    msg, fds = control.recv_step(b, "pty")
    assert msg == {"step": "pty", "extra": 1} and len(fds) == 1
    for fd in (r, w, *fds):
        os.close(fd)


@pytest.mark.parametrize("payload,words", [
    (b"\xff\xfe garbage", "not a message of the handshake"),
    (b"[1, 2]", "not a message of the handshake"),
    (b'"unshared"', "not a message of the handshake"),
    (b"unshared", "not a message of the handshake"),      # the old text protocol
    (json.dumps({"step": "ready"}).encode(), "unexpected message"),
    (json.dumps({"stp": "unshared"}).encode(), "unexpected message"),
])
def test_a_bad_message_names_the_step_and_closes_its_fds(pair, payload, words):
    a, b = pair
    r, w = os.pipe()
    a.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, r.to_bytes(4, "little"))])
    os.close(r)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(control.ProtocolError) as e:
        control.recv_step(b, "unshared")
    assert e.value.step == "unshared" and words in str(e.value), str(e.value)
    assert str(e.value).startswith("unshared: ")
    # The descriptor that came with the bad message was closed, not leaked.
    assert set(os.listdir("/proc/self/fd")) <= before
    os.close(w)


def test_an_end_of_stream_names_the_step_and_why(pair):
    a, b = pair
    a.close()
    with pytest.raises(control.ProtocolError) as e:
        control.recv_step(b, "init", lambda: "the keeper ended (killed by SIGKILL)")
    assert str(e.value) == "init: ended before this step: the keeper ended (killed by SIGKILL)"


def test_a_reported_error_keeps_its_step_and_errno(pair):
    a, b = pair
    control.send_msg(a, control.error_msg("hostname", OSError(errno.EPERM, "Operation not permitted")))
    with pytest.raises(control.ProtocolError) as e:
        control.recv_step(b, "unshared")
    assert (e.value.step, e.value.errno, str(e.value)) == (
        "hostname", errno.EPERM, "hostname: Operation not permitted")


def test_pipe_messages_are_json_lines_and_a_short_one_is_none():
    r, w = os.pipe()
    jsonline.write_line(w, {"error": "two\nlines"})
    assert jsonline.read_line(r, timeout=5)[0] == {"error": "two\nlines"}
    os.write(w, b'{"ok": tr')             # cut short: the writer died mid-message
    os.close(w)
    msg, raw = jsonline.read_line(r, timeout=5)
    assert msg is None and raw == b'{"ok": tr'
    os.close(r)
    r, w = os.pipe()
    t = time.monotonic()
    assert jsonline.read_line(r, timeout=0.2) == (None, b"")   # nothing: the time runs out
    assert time.monotonic() - t < 5
    os.close(r)
    os.close(w)


# -- faults at each step of a pod's start ---------------------------------------------

def _nothing_left(pod) -> None:
    name = pod.name
    assert not cgroup.pids_in(name) and not limits.v1_pids(name)
    assert not cgroup.pod_cgroup(name).exists()
    assert not any(d.exists() for d in limits.v1_dirs(name))
    assert not (pod.run_dir / "pods" / name).exists()
    mnt = str(pod.run_dir / "pods" / name)
    assert not [m.point for m in mountinfo.mounts() if m.point.startswith(mnt)]
    # No daemon, keeper or pid 1 of this pod anywhere (their command lines
    # name the policy or the pod's mount point).
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes()
            except OSError:
                continue
            assert str(pod.policy).encode() not in cmd and mnt.encode() not in cmd, cmd


def _start_with_fault(pod_factory, syscall: str, fault: str):
    policy, name, root, base = pod_factory.write_policy()
    pod = Pod(pod_factory, name, policy, root, base, None)
    pod_factory.pods.append(pod)
    # strace follows `pod start`, the daemon and the keeper and pid 1 (-f);
    # only the keeper calls sethostname and setresuid, only pid 1
    # pivot_root (no services, no network: nothing else of this pod does).
    r = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
                        "-e", f"inject={syscall}:{fault}", *POD, "start", str(policy)],
                       env=pod_factory.env(), capture_output=True, text=True, timeout=180,
                       stdin=subprocess.DEVNULL)
    return pod, r


@pytest.mark.parametrize("syscall,fault,expected", [
    # The keeper dies before its first message.
    ("sethostname", "signal=KILL",
     "pod setup: unshared: ended before this step: the keeper ended (killed by SIGKILL)"),
    # The keeper fails its last step before "unshared".
    ("sethostname", "error=EPERM", "pod setup: hostname: Operation not permitted"),
    # The keeper dies after "go", before it names pid 1.
    ("setresuid", "signal=KILL",
     "pod setup: init: ended before this step: the keeper ended (killed by SIGKILL)"),
    # pid 1 fails its pivot.
    ("pivot_root", "error=EINVAL", "pod setup: pid 1: pivot: Invalid argument"),
    # pid 1 dies at its pivot: the keeper, waiting for it, ends with it.
    ("pivot_root", "signal=KILL", "pod setup: ready: ended before this step: the keeper ended"),
])
def test_a_failed_step_of_the_keeper_or_pid1_is_named_and_leaves_nothing(
        pod_factory, syscall, fault, expected):
    pod, r = _start_with_fault(pod_factory, syscall, fault)
    assert r.returncode == 2, r
    assert f"cannot start pod {pod.name}: {expected}" in r.stderr, r.stderr
    _nothing_left(pod)


# -- faults at each step of a pod process's start -------------------------------------

def _exec_with_fault(pod, syscall: str, fault: str):
    # The tagger (the pod's fork server) forks every monitor: strace -f on
    # it follows the monitor and its child.
    tagger = pod.state()["tagger_pid"]
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
                               "-e", f"inject={syscall}:{fault}", "-p", str(tagger)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            if f"TracerPid:\t{tracer.pid}\n" in Path(f"/proc/{tagger}/status").read_text():
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"strace did not attach: {tracer.stderr.read1(4096)!r}")
        return pod.exec("/bin/true", timeout=120)
    finally:
        tracer.terminate()
        tracer.wait(timeout=30)


@pytest.mark.parametrize("syscall,fault,expected", [
    # The child dies at setsid (B5), before its first message.
    ("setsid", "signal=KILL",
     "seccomp: ended before this step: the pod process ended (killed by SIGKILL)"),
    # The child fails setsid: the step is named, with the system's words.
    ("setsid", "error=EPERM", "pty: Operation not permitted"),
])
def test_a_failed_step_of_a_pod_process_is_named_and_leaves_no_process(
        pods, syscall, fault, expected):
    pod = pods.start()
    before = set(cgroup.pids_in(pod.name))
    r = _exec_with_fault(pod, syscall, fault)
    assert r.returncode == 126, r
    assert expected in r.stderr, r.stderr
    assert set(cgroup.pids_in(pod.name)) == before     # the keeper and pid 1 only
    ok = pod.exec("/bin/true")                          # and the pod still works
    assert ok.returncode == 0, ok.stderr


# -- the run directory, given at the entry only ------------------------------------------

def test_library_calls_use_the_run_dir_they_are_given(shared_pod, monkeypatch, tmp_path):
    monkeypatch.setenv("PEAPOD_RUN", str(tmp_path / "wrong"))
    run = runtime.RunDir(shared_pod.run_dir)
    assert run.is_alive(shared_pod.name)
    assert shared_pod.name in run.pod_names()
    assert run.read_state(shared_pod.name)["name"] == shared_pod.name
    assert run.read_state(shared_pod.name)["version"] == runtime.STATE_VERSION
    assert any(p["vpid"] == 1 for p in lifecycle_cmd.pod_processes(run, shared_pod.name))
    assert not (tmp_path / "wrong").exists()
    # The environment's directory is not consulted either way.
    assert not runtime.RunDir(tmp_path / "wrong").is_alive(shared_pod.name)
    assert rundir.run_dir_from({}) == Path("/run/peapod")
    assert rundir.run_dir_from({"PEAPOD_RUN": "/x"}) == Path("/x")
    assert peafs_runtime.find_state(tmp_path / "none", "/mnt") is None
    assert peafs_runtime.pod_dir(Path("/x"), "p") == Path("/x/peafs/p")


def test_only_the_command_entries_read_peapod_run():
    """The one reader, run_dir_from, is called by the entries alone, and
    nothing else looks PEAPOD_RUN up in an environment."""
    entries = {"pods/cli.py", "pods/demo.py", "peafs/cli.py"}
    callers, readers = set(), set()
    for pkg in ("kernel", "rules", "peafs", "pods"):
        for f in sorted((REPO / pkg).glob("*.py")):
            rel = str(f.relative_to(REPO))
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Call):
                    fn = node.func
                    name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                    if name == "run_dir_from":
                        callers.add(rel)
                    args = [a.value for a in node.args if isinstance(a, ast.Constant)]
                    if name in ("get", "getenv", "__getitem__") and "PEAPOD_RUN" in args:
                        readers.add(rel)
                if (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
                        and node.slice.value == "PEAPOD_RUN"):
                    readers.add(rel)
    assert callers == entries
    assert readers == {"kernel/rundir.py"}


def test_the_daemon_and_its_children_get_the_run_dir_as_an_argument_not_the_environment(
        shared_pod):
    st = shared_pod.state()
    for pid in (st["daemon_pid"], st["keeper_pid"]):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        keys = {e.split(b"=", 1)[0] for e in env if e}
        assert keys == {b"PATH"}, keys              # no PEAPOD_RUN, no PYTHONPATH
    cmd = Path(f"/proc/{st['daemon_pid']}/cmdline").read_bytes().split(b"\0")
    assert cmd[cmd.index(b"--run-dir") + 1] == str(shared_pod.run_dir).encode()
    # The code the children run is this checkout's, put on their path on
    # purpose (-I: no environment variable, no user site).
    assert str(REPO).encode() in cmd and b"-I" in cmd
