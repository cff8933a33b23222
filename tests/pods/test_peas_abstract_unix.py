"""Abstract Unix socket names between peas (issue #11, "Why": vault's
abstract Unix socket was read by jail; SECURITY.md's gap `abstract-unix`).

Abstract names are not files (PeaFS never sees them) and live in the
network namespace all peas share. The supervisor now performs every bind
of an abstract name (or an autobind) itself and records the binder's pea
in a BPF map; the kernel's connect_unix and sendmsg_unix programs on each
pea's cgroup let only that pea reach the name (pods/netbpf.py
``_unix_program``, pods/supervisor.py ``_do_bind``). The attacker is pod
root in pea "main"; the victim a server in pea "vault".
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time

from pod_support import POD, PY
from test_peas_kernel import PEAS, run_json, wait_for_audit_line

SERVER = r'''
import os, socket, sys, threading
tag = sys.argv[1]
st = socket.socket(socket.AF_UNIX)
st.bind("\0" + tag + "-stream"); st.listen(16)
dg = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
dg.bind("\0" + tag + "-dgram")
auto = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
auto.bind("")                                   # autobind: the kernel picks a name
print("ready " + auto.getsockname().hex(), flush=True)
def serve():
    while True:
        c, _ = st.accept(); c.sendall(b"the secret"); c.close()
threading.Thread(target=serve, daemon=True).start()
while True:
    dg.recv(100)
'''

CLIENT = r'''
tag, auto = sys.argv[1], bytes.fromhex(sys.argv[2])
out = {}
c = socket.socket(socket.AF_UNIX)
try:
    c.connect("\0" + tag + "-stream"); out["stream"] = c.recv(100).decode()
except OSError as e:
    out["stream"] = errno.errorcode[e.errno]
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
out["dgram"] = E(d.sendto, b"x", "\0" + tag + "-dgram")
out["autobind"] = E(d.sendto, b"x", auto)
out["nobody"] = E(socket.socket(socket.AF_UNIX).connect, "\0" + tag + "-nobody")
print(json.dumps(out))
'''


class Server:
    def __init__(self, pod, tag, pea="vault"):
        self.proc = subprocess.Popen(
            POD + ["exec", pod.name, "--pea", pea, "--", PY, "-c", SERVER,
                   tag], env=pod.factory.env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        line = b""
        deadline = time.monotonic() + 30
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            assert left > 0 and self.proc.poll() is None, f"the server never said ready: {line!r}"
            if select.select([self.proc.stdout], [], [], left)[0]:
                line += os.read(self.proc.stdout.fileno(), 4096)
        assert line.startswith(b"ready "), line
        self.auto = line.split()[1].decode()

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


def test_abstract_names_are_reachable_only_from_the_pea_that_bound_them(pods):
    """Before: main connected to vault's abstract stream socket and read
    "the secret", and sent datagrams to its names."""
    pod = pods.start(peas=PEAS)
    server = Server(pod, "vault")
    try:
        got = run_json(pod, CLIENT, "vault", server.auto, pea="main")
        assert got == {"stream": "EACCES", "dgram": "EACCES", "autobind": "EACCES",
                       "nobody": "ECONNREFUSED"}, got
        wait_for_audit_line(pod, {"pea": "main", "operation": "connect",
                                  "path": "@vault-stream", "kind": "net",
                                  "rule": "abstract Unix name of another pea",
                                  "complain": False})
        wait_for_audit_line(pod, {"pea": "main", "operation": "sendmsg",
                                  "path": "@vault-dgram", "kind": "net"})
        # The pea's own processes reach them, as before.
        got = run_json(pod, CLIENT, "vault", server.auto, pea="vault")
        assert got == {"stream": "the secret", "dgram": "OK", "autobind": "OK",
                       "nobody": "ECONNREFUSED"}, got
        assert server.proc.poll() is None
    finally:
        server.stop()


SQUAT = r'''
s = socket.socket(socket.AF_UNIX)
s.bind("\0" + sys.argv[1] + "-stream"); s.listen(4)
print(json.dumps("bound"), flush=True)
import time; time.sleep(600)
'''


def test_a_name_squatted_by_another_pea_is_not_reached(pods):
    """main binds the name vault's clients will use before vault's server
    starts: vault's server cannot bind it (the kernel's EADDRINUSE), and
    vault's clients are refused main's socket instead of talking to it."""
    pod = pods.start(peas=PEAS)
    squatter = subprocess.Popen(
        POD + ["exec", pod.name, "--pea", "main", "--", PY, "-c",
               "import json, socket, sys\n" + SQUAT, "late"],
        env=pod.factory.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        assert squatter.stdout.readline() == b'"bound"\n'
        got = run_json(pod, 'out = {"bind": E(socket.socket(socket.AF_UNIX).bind, '
                            '"\\0late-stream")}\n'
                            'c = socket.socket(socket.AF_UNIX)\n'
                            'out["connect"] = E(c.connect, "\\0late-stream")\n'
                            'print(json.dumps(out))', pea="vault")
        assert got == {"bind": "EADDRINUSE", "connect": "EACCES"}, got
    finally:
        squatter.kill()
        squatter.wait(timeout=30)
        squatter.stdout.close()


FLIP_BIND = r'''
import threading
libc = ctypes.CDLL(None, use_errno=True)
# An address whose first two bytes a thread keeps switching between AF_INET
# and AF_UNIX, the rest an abstract name: the supervisor reads one family,
# the kernel may read the other.
LEN = 20
buf = ctypes.create_string_buffer(b"\1\0" + b"\0flipped-" + b"%09d" % 0, 110)
stop = threading.Event()
def flip():
    while not stop.is_set():
        buf[0] = 2
        buf[0] = 1
sys.setswitchinterval(1e-5)
t = threading.Thread(target=flip); t.start()
names, errs = [], {}
for i in range(int(sys.argv[1])):
    name = b"\0flipped-" + b"%09d" % i
    ctypes.memmove(ctypes.addressof(buf) + 2, name, len(name))
    s = socket.socket(socket.AF_UNIX)
    if libc.bind(s.fileno(), buf, LEN) == 0:
        names.append(name.hex()); s.listen(1); s.detach()
    else:
        n = errno.errorcode[ctypes.get_errno()]; errs[n] = errs.get(n, 0) + 1
        s.close()
stop.set(); t.join()
print(json.dumps({"names": names, "errs": errs}), flush=True)
import time; time.sleep(600)            # the sockets stay bound while vault tries
'''

TRY_NAMES = r'''
out = {}
for h in sys.argv[1:]:
    c = socket.socket(socket.AF_UNIX)
    r = E(c.connect, bytes.fromhex(h))
    out[r] = out.get(r, 0) + 1
    c.close()
print(json.dumps(out))
'''


def test_a_family_swapped_under_bind_binds_nothing_another_pea_reaches(pods):
    """main's thread flips the address family under bind(): when the
    supervisor reads AF_INET it lets the call continue, and the kernel may
    then bind the abstract name it reads afterwards, unrecorded. Such a name
    is nobody's: vault's connects get ECONNREFUSED, never main's socket;
    names the supervisor bound are main's (EACCES for vault)."""
    pod = pods.start(peas=PEAS)
    from test_peas_kernel import PRELUDE

    binder = subprocess.Popen(
        POD + ["exec", pod.name, "--pea", "main", "--", PY, "-c", PRELUDE + FLIP_BIND, "300"],
        env=pod.factory.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        got = json.loads(binder.stdout.readline())
        assert got["names"], f"no bind succeeded at all: {got}"
        assert set(got["errs"]) <= {"EINVAL", "EAFNOSUPPORT"}, got
        tried = run_json(pod, TRY_NAMES, *got["names"], pea="vault")
        assert "OK" not in tried, tried
        assert set(tried) <= {"EACCES", "ECONNREFUSED"}, tried
    finally:
        binder.kill()
        binder.wait(timeout=30)
        binder.stdout.close()


def test_complain_mode_logs_and_allows_abstract_names(pods):
    pod = pods.start(peas=PEAS.replace("[pea.main.net]", "[pea.main]\ncomplain = true\n\n"
                                                         "[pea.main.net]"))
    server = Server(pod, "vault")
    try:
        got = run_json(pod, CLIENT, "vault", server.auto, pea="main")
        assert got["stream"] == "the secret" and got["dgram"] == "OK", got
        wait_for_audit_line(pod, {"pea": "main", "operation": "connect",
                                  "path": "@vault-stream", "complain": True})
    finally:
        server.stop()
