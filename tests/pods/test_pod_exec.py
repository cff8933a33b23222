"""`pod exec`: the tagger puts CMD in the pod, in its pea, as its user; status,
signals, stdin and terminals behave like a local command."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time

from pod_support import POD


def test_exit_status_is_cmd_s(shared_pod):
    assert shared_pod.exec("/bin/sh", "-c", "exit 7").returncode == 7
    assert shared_pod.exec("true").returncode == 0


def test_death_by_signal_is_128_plus_signal(shared_pod):
    # A fault, not kill(): signals sent from inside are the supervisor's
    # business (tests/pods/test_seccomp*).
    r = shared_pod.py("import ctypes; ctypes.string_at(0)")
    assert r.returncode == 128 + signal.SIGSEGV


def test_stdin_stdout_stderr_are_the_caller_s(shared_pod):
    r = shared_pod.exec("/bin/sh", "-c", "cat; echo err >&2", input="hello\n")
    assert r.stdout == "hello\n" and r.stderr == "err\n"


def test_command_not_found_is_127(shared_pod):
    r = shared_pod.exec("/no/such/program")
    assert r.returncode == 127
    assert "No such file or directory" in r.stderr


def test_default_pea_and_pea_option(shared_pod):
    assert shared_pod.exec("cat", "/proc/self/cgroup").stdout.splitlines()[-1] == "0::/main"
    assert shared_pod.exec("cat", "/proc/self/cgroup", pea="other").stdout.splitlines()[-1] \
        == "0::/other"


def test_cmd_is_in_its_pea_from_its_first_instruction(shared_pod):
    # The host's view of the process while it runs: pea cgroup, pod pid ns.
    p = subprocess.Popen(POD + ["exec", shared_pod.name, "--pea", "other", "--", "sleep", "30"],
                         env=shared_pod.factory.env(), stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        rows = []
        while time.monotonic() < deadline:
            rows = [r for r in _ps(shared_pod) if r["command"] == "sleep 30"]
            if rows:
                break
            time.sleep(0.05)
        assert rows, "sleep never appeared in pod ps"
        assert rows[0]["pea"] == "other" and rows[0]["uid"] == 0 and rows[0]["vpid"] > 1
    finally:
        p.send_signal(signal.SIGTERM)  # forwarded to the command
        assert p.wait(timeout=30) == 128 + signal.SIGTERM


def _ps(pod):
    import json

    return json.loads(pod.cli("ps", pod.name, "--json").stdout)


def test_unknown_pea_user_or_pod_is_refused(shared_pod):
    r = shared_pod.exec("true", pea="nosuchpea")
    assert r.returncode == 2 and "no pea 'nosuchpea'" in r.stderr
    r = shared_pod.exec("true", user=70000)
    assert r.returncode == 2 and "not mapped" in r.stderr
    r = shared_pod.cli("exec", "nosuchpod", "--", "true")
    assert r.returncode == 2 and "not running" in r.stderr


def test_signals_to_pod_exec_reach_the_command(shared_pod):
    p = subprocess.Popen(POD + ["exec", shared_pod.name, "--", "/bin/sh", "-c",
                                "trap 'echo got-usr1; exit 3' USR1; echo ready; "
                                "while :; do sleep 0.05; done"],
                         env=shared_pod.factory.env(), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGUSR1)
        assert p.wait(timeout=30) == 3
        assert p.stdout.read().strip() == "got-usr1"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_terminal_gets_a_pod_pty(shared_pod):
    master, slave = os.openpty()
    try:
        p = subprocess.Popen(POD + ["exec", shared_pod.name, "--", "/bin/sh", "-c",
                                    "tty; test -t 0 && echo is-a-tty; exit 5"],
                             env=shared_pod.factory.env(), stdin=slave, stdout=slave,
                             stderr=slave, start_new_session=True)
        os.close(slave)
        slave = -1
        out = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.5)
            if r:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            elif p.poll() is not None:
                break
        assert p.wait(timeout=30) == 5
        text = out.decode(errors="replace")
        # The pod's own devpts instance: its first pty, not the host's.
        assert "/dev/pts/0" in text and "is-a-tty" in text, text
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
