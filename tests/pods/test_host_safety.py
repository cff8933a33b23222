"""From pod to host (SECURITY.md "From pod to host"): each way
out that pod root had, attacked.

- Start-up fails closed: a pod process never runs without its seccomp
  filter, a pod never without its supervisor (the first wave fell back to
  running unfiltered on ImportError).
- The `pod exec` child is never at once host root and reachable from the
  pod (ptrace, /proc/PID/mem by pod root).
- Nothing a pod writes carries set-id bits or file capabilities to disk.
- /dev is read-only (but /dev/pts and /dev/shm): no pea replaces a device
  or /dev/stdout under another.
- A running pod pins no host mount that others made.
- `pod ps` and `pod audit` print what a pod controls with controls escaped.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pod_support import POD as POD_CMD

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("starter,needed,flags", [
    ("pods.tagger", "pods.seccomp", ["-S"]),   # the child that installs the filter
    ("pods.daemon", "pods.supervisor", []),    # the daemon that answers it
])
def test_a_broken_filter_or_supervisor_module_stops_the_start(starter, needed, flags):
    # The tagger runs with ``python -S`` (startup.python_command); a module
    # that cannot be imported is simulated the way the import system itself
    # spells it: a None entry in sys.modules raises ImportError on import.
    code = (f"import sys; sys.modules[{needed!r}] = None\n"
            f"import {starter}\n"
            "print('started without', " + repr(needed) + ")\n")
    r = subprocess.run([sys.executable, *flags, "-c", code], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0, f"{starter} imported without {needed}: {r.stdout}"
    assert f"import of {needed} halted" in r.stderr, r.stderr


# -- the privileged start of a pod process is never reachable from the pod ----

# Pod root in the pod watches for a process whose uid it cannot map (host
# root shows as the overflow id 65534) and tries to reach its memory with
# process_vm_readv: the kernel's check is ptrace_may_access (the call a
# debugger, or an attacker writing code in, needs), with no file mode in
# the way as there is for /proc/PID/mem. Granted, a read of an unmapped
# address fails EFAULT; refused, EPERM. (The supervisor lets it through to
# the kernel once the child is in the watcher's pea; before, ESRCH.)
WATCHER = r'''
import ctypes, errno, json, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(8)
local = iovec(ctypes.cast(buf, ctypes.c_void_p), 8)
remote = iovec(0x10000, 8)
deadline = time.monotonic() + float(sys.argv[1])
me = os.getpid()

def host_root(d):
    try:
        with open(f"/proc/{d}/status") as f:
            st = dict(l.split(":", 1) for l in f if ":" in l)
    except OSError:
        return False
    return st.get("Uid", "").split()[:1] == ["65534"]

print("ready", flush=True)
target, results = None, set()
while time.monotonic() < deadline and target is None:
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != me and host_root(d):
            target = int(d)
            break
    else:
        time.sleep(0.005)
# Try it for as long as it is host root: through its every step, the 3 s
# held by strace among them.
while target is not None and time.monotonic() < deadline and host_root(target):
    r = libc.process_vm_readv(target, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    results.add("OK" if r >= 0 else errno.errorcode[ctypes.get_errno()])
    time.sleep(0.01)
print(json.dumps({"target": target, "results": sorted(results)}))
'''


def _tagger_pid(pod) -> int:
    """The pod's fork server, which forks every monitor (strace -f on it
    follows the monitors and their children)."""
    return pod.state()["tagger_pid"]


@pytest.mark.parametrize("tty", [False, True], ids=["no-tty", "tty"])
def test_pod_exec_child_is_never_host_root_and_reachable_from_the_pod(pods, tty):
    # The window (host root, already in the pod's user namespace, before it
    # becomes the pod user) is held open for 3 s by strace delaying the
    # child's setsid, the call right after its setns (the later setresgid
    # would make it non-dumpable anyway: a change of egid does that):
    # deterministic, not a race the test may lose.
    pod = pods.start()
    watcher = subprocess.Popen(
        POD_CMD + ["exec", pod.name, "--", "/usr/bin/python3", "-c", WATCHER, "90"],
        env=pods.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL)
    # The watcher must be scanning before the window opens (its own start
    # goes through PeaFS, which the traced daemon serves slowly).
    assert watcher.stdout.readline().strip() == "ready", watcher.stderr.read()
    tracer = subprocess.Popen(
        ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=setsid",
         "-e", "inject=setsid:delay_enter=3000000", "-p", str(_tagger_pid(pod))],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # Until strace has attached to the tagger (bounded): only then is
        # the monitor it forks followed.
        for _ in range(200):
            with open(f"/proc/{_tagger_pid(pod)}/status") as f:
                if f"TracerPid:\t{tracer.pid}\n" in f.read():
                    break
            time.sleep(0.05)
        else:
            pytest.fail(f"strace did not attach: {tracer.stderr.read1(4096)!r}")
        if tty:
            master, slave = os.openpty()
            try:
                target = subprocess.Popen(POD_CMD + ["exec", pod.name, "--", "/bin/true"],
                                          env=pods.env(), stdin=slave, stdout=slave,
                                          stderr=slave)
            finally:
                os.close(slave)
        else:
            target = subprocess.Popen(POD_CMD + ["exec", pod.name, "--", "/bin/true"],
                                      env=pods.env(), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Everything the traced tagger and monitor do is slow (strace stops
        # each of their system calls), hence the generous bounds; the watcher
        # returns as soon as it has tried the child.
        assert target.wait(timeout=120) == 0
        out, err = watcher.communicate(timeout=120)
    finally:
        tracer.terminate()
        tracer.wait(timeout=30)
        if tty:
            os.close(master)
        for p in (watcher,):
            if p.poll() is None:
                p.kill()
                p.wait()
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["target"], f"the watcher never saw the monitor's child: {err}"
    # EFAULT (or OK) would mean the kernel let pod root into a host-root
    # process; ESRCH: not yet a pod process (before its cgroup join).
    assert set(seen["results"]) - {"ESRCH"} == {"EPERM"}, seen


# -- nothing a pod writes carries privilege to the host ------------------------

# The prelude of the snippets below: E(fn, *args) -> "OK" or the errno name.
ATTEMPT = r'''
import errno, json, os
def E(fn, *a):
    try:
        fn(*a); return "OK"
    except OSError as e:
        return errno.errorcode[e.errno]
'''

SETID = ATTEMPT + r'''
import stat
os.chdir("/srv")
open("f", "w").close()
os.chmod("f", 0o4755)
g = os.open("g", os.O_CREAT | os.O_WRONLY, 0o6755); os.close(g)
os.mkdir("d", 0o2775); os.chmod("d", 0o2775)
os.mkdir("u", 0o4775); os.chmod("u", 0o4775)
res = {n: oct(stat.S_IMODE(os.stat(n).st_mode)) for n in ("f", "g", "d", "u")}
res["chmod_g"] = E(os.chmod, "g", 0o2755)
res["g_after"] = oct(stat.S_IMODE(os.stat("g").st_mode))
res["setcap"] = E(os.setxattr, "f", "security.capability", b"\x01\x00\x00\x02" + b"\x00" * 16)
print(json.dumps(res))
'''


def test_set_id_bits_and_capabilities_never_reach_the_disk(pods):
    pod = pods.start()
    (pod.root / "srv").mkdir(mode=0o755)
    r = pod.py(SETID)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    # In the pod: the bits are gone (a directory keeps set-gid: inheritance
    # of its group, no privilege), and the file capability is refused.
    assert got == {"f": "0o755", "g": "0o755", "d": "0o2775", "u": "0o775",
                   "chmod_g": "OK", "g_after": "0o755", "setcap": "EPERM"}, got
    # On disk, where a host user would run them.
    for name, mode in (("f", 0o755), ("g", 0o755), ("d", 0o2775), ("u", 0o775)):
        st = os.lstat(pod.root / "srv" / name)
        assert stat.S_IMODE(st.st_mode) == mode, (name, oct(st.st_mode))
    assert os.listxattr(pod.root / "srv" / "f") == []


# -- /dev is read-only but for /dev/pts and /dev/shm ----------------------------

DEV = ATTEMPT + r'''
res = {
    "replace_stdout": E(lambda: (os.unlink("/dev/stdout"), os.symlink("/tmp/x", "/dev/stdout"))),
    "new_link": E(os.symlink, "/tmp/x", "/dev/evil"),
    "rename_ptmx": E(os.rename, "/dev/ptmx", "/dev/ptmx2"),
    "unlink_null": E(os.unlink, "/dev/null"),
    "create": E(lambda: open("/dev/newfile", "w").close()),
    "write_null": E(lambda: open("/dev/null", "w").write("x")),
    "shm": E(lambda: open("/dev/shm/ok", "w").write("x")),
    "stdout_is_link": os.readlink("/dev/stdout"),
}
print(json.dumps(res))
'''


def test_dev_is_read_only_except_pts_and_shm(pods):
    pod = pods.start()
    r = pod.py(DEV)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "replace_stdout": "EROFS", "new_link": "EROFS", "rename_ptmx": "EROFS",
        "unlink_null": "EROFS", "create": "EROFS", "write_null": "OK", "shm": "OK",
        "stdout_is_link": "/proc/self/fd/1"}
    # a pty still works (/dev/pts is writable: its own mount)
    r = pod.py("import os; m, s = os.openpty(); print(os.ttyname(s))")
    assert r.returncode == 0 and r.stdout.startswith("/dev/pts/"), r.stderr


# -- a running pod pins no host mount made by others ---------------------------

def test_a_host_fuse_mount_is_not_pinned_by_a_running_pod(pods, tmp_path):
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_text("x")
    fs = subprocess.Popen(["bindfs", "-f", str(src), str(mnt)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            if os.path.ismount(mnt):
                break
            time.sleep(0.05)
        assert os.path.ismount(mnt), "bindfs did not mount"
        pod = pods.start()            # its daemon's namespace is made now
        assert pod.exec("/bin/true").returncode == 0
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True, timeout=30)
        # The file system is gone only when no namespace holds it: then the
        # FUSE daemon sees its connection end and exits.
        try:
            fs.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("bindfs is still serving: the pod daemon pins the host mount")
    finally:
        if fs.poll() is None:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, timeout=30)
            fs.kill()
            fs.wait(timeout=30)


# -- strings a pod controls reach the administrator's terminal escaped ---------

def test_ps_and_audit_print_pod_controlled_strings_escaped(pods):
    peas = ('[pea.main.files]\n"/" = "rwx"\n\n[pea.ro.files]\n"/" = "rx"\n"/tmp/" = ""\n')
    pod = pods.start(peas=peas)
    evil = "\x1b]52;c;cHduZWQ=\x07\x1b[2J"
    sleeper = subprocess.Popen(
        POD_CMD + ["exec", pod.name, "--", "/usr/bin/python3", "-c",
                   f"import os; os.execv('/bin/sleep', [{evil!r}, '20'])"],
        env=pods.env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        r = None
        for _ in range(100):         # until python has exec'd the sleep
            r = pod.cli("ps", pod.name)
            if "\\x1b]52;c;cHduZWQ=\\x07\\x1b[2J 20" in r.stdout:
                break
            time.sleep(0.1)
        assert r.returncode == 0, r.stderr
        assert "\x1b" not in r.stdout and "\x07" not in r.stdout, repr(r.stdout)
        assert "\\x1b]52;c;cHduZWQ=\\x07\\x1b[2J 20" in r.stdout, r.stdout
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)
    # A refused open of a name holding escape sequences: its audit line.
    assert pod.py(f"open('/tmp/' + {evil!r}, 'w').close()").returncode == 0
    r = pod.py(f"import os\ntry:\n    open('/tmp/' + {evil!r})\nexcept OSError as e:\n"
               "    print(e.errno)\n", pea="ro")
    assert r.stdout.strip() == "13", r
    r = pod.cli("audit", pod.name)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout, repr(r.stdout)
    assert "\\x1b]52" in r.stdout or "\\u001b]52" in r.stdout, r.stdout
