"""The `pod` command's manners (issue #14, item 6): a non-root user, a
closed pipe, a bad name each get one line and exit 2, never a traceback;
`pod exec NAME CMD ARGS...` needs no `--`; `--user NAME` is looked up in the
pod's /etc/passwd without letting pod root steer that host-root read; what
a pod chose (command lines, argv[0]) reaches the terminal escaped."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from pod_support import POD, POD_PYTHON, PY, REPO

NOBODY = 65534
NEEDS_ROOT = "needs root (pods use namespaces, cgroups and mounts)"
NAME_RULE = ("a pod name is a lowercase letter, then at most 30 lowercase letters, digits "
             "and '-'")
CLOSED = "output closed before it was complete (broken pipe)"


@pytest.fixture(scope="module")
def pod(pods):
    """One pod for the module, with a user whose gid differs from its uid
    and a rule that makes PeaFS refuse (for `pod audit`)."""
    p = pods.start(peas='[pea.main.files]\n"/" = "rwx"\n"/etc/motd" = "r"\n\n'
                        '[pea.other.files]\n"/" = "rwx"\n')
    with open(p.root / "etc" / "passwd", "a") as f:
        f.write("www-data:x:33:34:www-data:/var/www:/bin/sh\nbroken:x:notanumber:1::/:\n")
    (p.root / "etc" / "motd").write_text("hello\n")
    return p


def _as_nobody(pod, *args, **kw) -> subprocess.CompletedProcess:
    """`pod ARGS` run by a real unprivileged user (uid and gid 65534, no
    supplementary groups), with the pod's $PEAPOD_RUN."""
    env = pod.factory.env()
    env["HOME"] = "/"
    return subprocess.run(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY),
                           "--clear-groups", *POD_PYTHON, *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, cwd="/", **kw)


def _closed_stdout(pod, *args, timeout=60) -> subprocess.CompletedProcess:
    """`pod ARGS` whose standard output is a pipe nobody reads any more:
    the read end is closed before the command starts, so its first write
    fails, every time (`pod list | true` only loses the race now and then)."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run(POD + [str(a) for a in args], env=pod.factory.env(),
                              stdin=subprocess.DEVNULL, stdout=w, stderr=subprocess.PIPE,
                              text=True, timeout=timeout)
    finally:
        os.close(w)


# ------------------------------------------------------------------ not root
#
# These run the Python command, which the front (pods/pod_front.c) hands
# every non-root use to. Not the front itself: setpriv keeps its
# capabilities until its exec, so it reaches an interpreter under /root
# (here, pyenv's), but the front's own exec of that interpreter is made as
# nobody and is refused (test_pod_front.py checks what the front hands on).

def test_the_interpreter_and_the_checkout_are_open_to_nobody():
    """The premise of the non-root tests: nobody can run this `pod` at all,
    so what they see is the command's answer, not an import error."""
    r = subprocess.run(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY),
                        "--clear-groups", *POD_PYTHON, "--help"],
                       env={"PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]},
                       capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: pod ")


def test_a_user_other_than_root_gets_one_line_and_exit_2(pod):
    # The pod runs and its runtime directory is root's: before, `pod ps`
    # said "is not running" and `pod list` raised a PermissionError.
    cases = [("list",), ("list", "--json"), ("ps", pod.name), ("stop", pod.name),
             ("start", pod.policy), ("exec", pod.name, "true"), ("audit", pod.name),
             ("audit", pod.policy)]
    for args in cases:
        r = _as_nobody(pod, *args)
        assert (r.returncode, r.stdout, r.stderr) == (2, "", f"pod: {args[0]} {NEEDS_ROOT}\n"), \
            args
    assert pod.exec("true").returncode == 0          # `pod stop` did nothing


def test_the_policy_tools_need_no_root(pod):
    policy = REPO / "examples" / "mail" / "pod.toml"    # readable by all, unlike tmp_path
    r = _as_nobody(pod, "rules", "check", policy)
    assert (r.returncode, r.stdout) == (0, f"{policy}: ok (pod mail; peas smtpd, delivery)\n"), \
        r.stderr


# ------------------------------------------------------------------ closed pipe

def test_a_closed_output_is_one_line_and_exit_2(pod):
    # Something to print in the audit log: a refused write.
    r = pod.exec("/bin/sh", "-c", "echo x > /etc/motd")
    assert r.returncode != 0
    deadline = time.monotonic() + 20
    while not pod.cli("audit", pod.name).stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    for args in [("list",), ("list", "--json"), ("ps", pod.name), ("ps", pod.name, "--json"),
                 ("audit", pod.name), ("audit", pod.name, "--follow"),
                 ("audit", pod.policy)]:
        r = _closed_stdout(pod, *args)
        assert (r.returncode, r.stderr) == (2, f"pod: {args[0]}: {CLOSED}\n"), args


# ------------------------------------------------------------------ names

BAD_NAMES = ["../x", "A B", "", "a" * 32, "1pod", "a/b", "x\x1b[2Jy\nz"]


def _shown(name: str) -> str:
    return '"' + name.replace("\x1b", "\\x1b").replace("\n", "\\n") + '"'


def test_a_bad_name_states_the_rule(pods):
    # No pod needed: a bad name is refused before anything is looked up.
    for name in BAD_NAMES:
        for args in [("ps", name), ("ps", name, "--json"), ("stop", name),
                     ("exec", name, "true"), ("exec", "--pea", "main", name, "--", "true")]:
            r = pods.cli(*args)
            assert (r.returncode, r.stdout, r.stderr) == (
                2, "", f"pod: {args[0]}: invalid pod name {_shown(name)}: {NAME_RULE}\n"), args
    # audit takes a name or a policy file: a word that is neither is refused
    # with the rule too (a word with "/" is a file name).
    r = pods.cli("audit", "A B")
    assert (r.returncode, r.stderr) == (
        2, f'pod: "A B" is neither a pod name nor a policy file (.toml): {NAME_RULE}\n')


def test_a_good_name_of_no_pod_is_not_running(pods):
    for args in [("ps", "nosuchpod"), ("stop", "nosuchpod"), ("exec", "nosuchpod", "true")]:
        r = pods.cli(*args)
        assert (r.returncode, r.stderr) == (2, "pod: pod nosuchpod is not running\n"), args


# ------------------------------------------------------------------ exec's argv

def test_everything_after_name_is_the_command(pod):
    r = pod.cli("exec", pod.name, "ls", "-ld", "/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("dr") and r.stdout.rstrip().endswith(" /")
    assert pod.cli("exec", pod.name, "--", "ls", "-ld", "/").stdout == r.stdout
    # exec's options before NAME or right after it; CMD's own after CMD.
    r = pod.cli("exec", "--pea", "other", pod.name, "sh", "-c",
                'echo $0 "$@"; tail -n1 /proc/self/cgroup', "x", "--pea", "y")
    assert (r.returncode, r.stdout) == (0, "x --pea y\n0::/other\n"), r.stderr
    r = pod.cli("exec", pod.name, "--pea", "other", "--user", "1000", "id", "-u")
    assert (r.returncode, r.stdout) == (0, "1000\n"), r.stderr
    r = pod.cli("exec", pod.name, "--user=1000", "--", "--version")
    assert (r.returncode, r.stderr) == (127, "pod: exec --version: No such file or directory\n")


def test_exec_usage_errors(pod):
    r = pod.cli("exec", pod.name)
    assert (r.returncode, r.stderr) == (2, "pod: exec: no command given\n")
    r = pod.cli("exec", pod.name, "--")
    assert (r.returncode, r.stderr) == (2, "pod: exec: no command given\n")
    # A mistyped option is an error, not the command (nor an abbreviation).
    for typo in ("--pe", "--peas", "-u"):
        r = pod.cli("exec", pod.name, typo, "main", "true")
        assert r.returncode == 2 and r.stderr.endswith(
            f"pod: error: unrecognized arguments: {typo}\n"), (typo, r.stderr)


# ------------------------------------------------------------------ --user NAME

def test_user_by_name_from_the_pod_s_passwd(pod):
    r = pod.exec("/bin/sh", "-c", "id -u; id -g; id -G", user="www-data")
    assert (r.returncode, r.stdout) == (0, "33\n34\n34\n"), r.stderr
    r = pod.exec("/bin/sh", "-c", "id -u; id -g", user="user")
    assert (r.returncode, r.stdout) == (0, "1000\n1000\n"), r.stderr
    # Numbers as before: the group is the uid's when mapped.
    r = pod.exec("/bin/sh", "-c", "id -u; id -g", user=33)
    assert (r.returncode, r.stdout) == (0, "33\n33\n"), r.stderr
    for name in ("www-dat", "broken", "root:x", "x\x1b[2J"):
        r = pod.exec("true", user=name)
        assert (r.returncode, r.stderr) == (
            2, f"pod: exec: no user {_shown(name)} in the pod's /etc/passwd\n"), name


def test_passwd_is_read_inside_the_pod_s_root_only(pod_factory, tmp_path):
    """Pod root owns /etc/passwd and points it at a host file of crafted
    lines; host root, resolving --user, must not read it: the link is
    resolved as if the pod's root were /, where that file does not exist.
    Before the fix --user took numbers only (no name was looked up)."""
    pod = pod_factory.start()
    evil = tmp_path / "evil-passwd"     # on the host, outside the pod's root
    evil.write_text("evil:x:4242:4242::/:/bin/sh\n")
    assert not str(evil).startswith(str(pod.root) + "/")
    deep = "../" * 40 + str(evil).lstrip("/")
    for target in (str(evil), deep, f"/proc/self/root{evil}", f"/proc/1/root{evil}"):
        r = pod.exec("/bin/sh", "-c", 'rm -f /etc/passwd && ln -s "$1" /etc/passwd', "x", target)
        assert r.returncode == 0, r.stderr
        # On the host the link leads to the crafted file: a plain open
        # by host root would read it.
        link = pod.root / "etc" / "passwd"
        assert os.readlink(link) == target
        if not target.startswith("/proc/"):
            assert os.path.realpath(link) == str(evil)
        r = pod.exec("id", "-u", user="evil")
        assert (r.returncode, r.stdout, r.stderr) == (
            2, "", "pod: exec: no user \"evil\" in the pod's /etc/passwd\n"), target
    # A link that stays inside the root is followed, as in the pod.
    r = pod.exec("/bin/sh", "-c", "printf 'inner:x:1000:1000::/:/bin/sh\\n' > /etc/passwd.real"
                 " && rm /etc/passwd && ln -s /etc/passwd.real /etc/passwd")
    assert r.returncode == 0, r.stderr
    r = pod.exec("id", "-u", user="inner")
    assert (r.returncode, r.stdout) == (0, "1000\n"), r.stderr


def test_a_fifo_or_a_directory_at_etc_passwd_does_not_hang_the_cli(pod_factory):
    pod = pod_factory.start()
    link = pod.root / "etc" / "passwd"
    # Made by pod root; nobody ever writes to it: an open for reading blocks.
    r = pod.exec("/bin/sh", "-c", "rm /etc/passwd && mkfifo /etc/passwd")
    assert r.returncode == 0, r.stderr
    assert stat.S_ISFIFO(os.lstat(link).st_mode)
    t0 = time.monotonic()
    r = pod.exec("true", user="www-data", timeout=30)
    assert (r.returncode, r.stderr) == (2, "pod: exec: the pod's /etc/passwd is not a regular "
                                           "file\n")
    assert time.monotonic() - t0 < 20
    os.unlink(link)
    os.mkdir(link)
    r = pod.exec("true", user="www-data", timeout=30)
    assert (r.returncode, r.stderr) == (2, "pod: exec: the pod's /etc/passwd is not a regular "
                                           "file\n")
    os.rmdir(link)
    r = pod.exec("true", user="www-data", timeout=30)   # no passwd at all
    assert (r.returncode, r.stderr) == (2, "pod: exec: no user \"www-data\" in the pod's "
                                           "/etc/passwd\n")


# ------------------------------------------------------------------ messages

def test_exec_failures_speak_the_system_s_words(pod):
    r = pod.exec("/bin/sh", "-c", "printf '#!/bin/sh\\n' > /tmp/noexec; chmod 644 /tmp/noexec")
    assert r.returncode == 0, r.stderr
    r = pod.exec("/tmp/noexec")
    assert (r.returncode, r.stderr) == (126, "pod: exec /tmp/noexec: Permission denied\n")
    r = pod.exec("/no/such/program")
    assert (r.returncode, r.stderr) == (127, "pod: exec /no/such/program: No such file or "
                                             "directory\n")
    # argv[0] is echoed escaped: no terminal sequence, no second line.
    r = pod.exec("/no/\x1b[2Jx\ny")
    assert (r.returncode, r.stderr) == (127, "pod: exec /no/\\x1b[2Jx\\ny: No such file or "
                                             "directory\n")


def test_an_unforeseen_os_error_is_one_line(pods, tmp_path):
    # The audit log of a stopped pod (by its policy file) is a directory:
    # no command checks for that, main's last resort reports it.
    policy, _, root, _ = pods.write_policy()
    log = root.parent / f"{root.name}.peapod" / "audit.log"
    log.mkdir(parents=True)
    r = pods.cli("audit", policy)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"pod: audit: {log}: Is a directory\n")


# ------------------------------------------------------------------ ps and list

def _wait_for(pod, pred, what):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = json.loads(pod.cli("ps", pod.name, "--json").stdout)
        found = [r for r in rows if pred(r)]
        if found:
            return found[0]
        time.sleep(0.05)
    pytest.fail(f"{what} never appeared in pod ps")


def test_ps_table_escapes_and_fits_the_screen(pod):
    nasty = "a\x1b[2Jb\nc\x07"
    long_arg = "z" * 300
    # The nasty string is argv[0], where the cut at 60 columns keeps it.
    sleeper = ("import os, sys; os.execv(sys.executable, "
               "[sys.argv[1], '-c', 'import time; time.sleep(60)', sys.argv[2]])")
    p = subprocess.Popen(POD + ["exec", pod.name, PY, "-c", sleeper, nasty, long_arg],
                         env=pod.factory.env(), stdin=subprocess.DEVNULL)
    try:
        row = _wait_for(pod, lambda r: r["command"].startswith(nasty), "the sleeper")
        assert row["command"].endswith(long_arg)       # --json: the whole command line
        for columns, env_cols in ((80, None), (60, "60"), (200, "200")):
            env = pod.factory.env()
            env.pop("COLUMNS", None)
            if env_cols:
                env["COLUMNS"] = env_cols
            r = subprocess.run(POD + ["ps", pod.name], env=env, capture_output=True, text=True,
                               timeout=60, stdin=subprocess.DEVNULL)
            assert r.returncode == 0, r.stderr
            lines = r.stdout.splitlines()
            assert "\x1b" not in r.stdout and "\x07" not in r.stdout
            assert all(len(line) <= columns for line in lines), (columns, lines)
            assert lines[0].split() == ["VPID", "PID", "PEA", "UID", "COMMAND"]
            assert lines[1].split()[0] == "1" and lines[1].endswith("  [pod init]")
            mine = [line for line in lines if "a\\x1b[2Jb\\nc\\x07" in line]
            assert len(mine) == 1, lines          # one row: the newline is escaped
            assert mine[0].endswith("...")
            assert len(lines) == 1 + len(json.loads(pod.cli("ps", pod.name, "--json").stdout))
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)


def test_list_escapes_the_reason_of_a_failed_pod(pod_factory):
    pod = pod_factory.start()
    state = pod.state()
    # The daemon's last words may quote the pod (a path in a traceback).
    with open(pod.run_dir / "pods" / pod.name / "daemon.log", "a") as f:
        f.write("OSError: /srv/\x1b]52;c;aGk=\x07x\n")
    os.kill(state["daemon_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = {r["name"]: r for r in json.loads(pod.cli("list", "--json").stdout)}
        if rows[pod.name]["state"] == "failed":
            break
        time.sleep(0.05)
    assert rows[pod.name]["reason"].startswith("the daemon died; its log ends: OSError: /srv/\x1b")
    r = pod.cli("list")
    assert r.returncode == 0 and "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "its log ends: OSError: /srv/\\x1b]52;c;aGk=\\x07x (" in r.stdout


def test_the_pod_command_does_not_import_the_daemons_modules():
    """`pod` starts for every command (a `pod exec` of one program, a shell
    completion): trio alone costs ~110 ms to import, which pods/services.py
    needs and `pod logs` once pulled in through it."""
    r = subprocess.run([sys.executable, "-c",
                        "import sys, pods.cli\n"
                        "pods.cli.build_parser()\n"
                        "print(sorted(m for m in ('trio', 'pyfuse3', 'pods.daemon', "
                        "'pods.services', 'pods.supervisor') if m in sys.modules))"],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, "[]\n", "")


def test_pod_exec_imports_only_what_it_needs_before_it_connects(tmp_path):
    """`pod exec` is on the path of every command run in a pod: up to its
    connect it imports the exec client's parser, the control protocol and
    the run directory, not the other commands' modules, PeaFS, the rule
    engine or the heavier standard modules (python -X importtime -m
    pods.cli exec ...). -S: the interpreter's own site imports aside.
    (shutil is argparse's: it imports it for every parser with arguments.)"""
    code = ("import sys\n"
            f"sys.path.insert(0, {str(REPO)!r})\n"
            "import pods.cli\n"
            "status = pods.cli.main(['exec', 'nopod', 'true'])\n"
            "bad = ('pods.rules_cmd', 'pods.service_cmd', 'pods.limits', 'peafs', 'rules', "
            "'trio', 'subprocess', 'ctypes', 'typing', 'difflib', 'datetime', "
            "'threading', 'termios', 'tty')\n"
            "print(status, sorted(m for m in bad if m in sys.modules))\n")
    env = {"PATH": os.environ["PATH"], "PEAPOD_RUN": str(tmp_path)}
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                       timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert (r.stdout, r.stderr) == ("2 []\n", "pod: pod nopod is not running\n"), r
