"""Named sockets and FIFOs follow the file rules, for pod root too.

connect() to a socket path needs w on it; opening a FIFO needs r for the
read end and w for the write end (SECURITY.md, "FIFOs and sockets"). Neither reaches FUSE's open:
the kernel connects to the socket inode, or opens the pipe, after the
lookup, so PeaFS must refuse at lookup time for a pea lacking the right. Pod
root's CAP_DAC_OVERRIDE bypasses mode bits, never pea rules.
"""

from __future__ import annotations

import os
import threading
import time

from helpers_attack import policy, run_py

POLICY = policy('''
[pea.srv.files]
"/" = "rw"

[pea.ro.files]
"/" = "r"

[pea.rw.files]
"/" = "r"
"/s.sock" = "rw"

[pea.fifo-r.files]
"/fifo" = "r"

[pea.fifo-w.files]
"/fifo" = "w"

[pea.nothing.files]
"/other" = "r"
''')

SERVER = r'''
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("/s.sock")
os.chmod("/s.sock", 0o777)
s.listen(4)
s.settimeout(20)
os.close(os.open("/srv-ready", os.O_WRONLY | os.O_CREAT, 0o644))
accepted = []
while True:
    try:
        c, _ = s.accept()
    except socket.timeout:
        break
    c.settimeout(10)
    data = c.recv(16)
    accepted.append(data.decode())
    c.sendall(b"hi")
    c.close()
    if data == b"last":
        break
report({"accepted": accepted})
'''

CLIENT = r'''
def talk(msg):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(10)
    try:
        c.connect("/s.sock")
        c.sendall(msg.encode())
        return c.recv(16).decode()
    finally:
        c.close()
try:
    got = talk(ARGS[0])
except OSError as e:
    got = errno.errorcode[e.errno]
report(got)
'''


def test_socket_connect_needs_w(peafs_mount, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    m = peafs_mount(POLICY, root=root)
    server: dict = {}
    errors: list = []

    def serve():
        try:
            server["report"] = run_py(m, "srv", SERVER, timeout=60)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    t = threading.Thread(target=serve)
    t.start()
    try:
        for _ in range(300):
            if (root / "srv-ready").exists() or errors:
                break
            time.sleep(0.05)
        assert (root / "srv-ready").exists(), f"the server never started: {errors}"
        refused = run_py(m, "ro", CLIENT, "sneak")
        refused_none = run_py(m, "nothing", CLIENT, "sneak")
        allowed = run_py(m, "rw", CLIENT, "last")
    finally:
        t.join(60)
    if errors:
        raise errors[0]
    assert (refused, refused_none, allowed) == ("EACCES", "EACCES", "hi")
    assert server["report"] == {"accepted": ["last"]}


FIFO = r'''
report({
    "read_end": attempt(lambda: os.close(os.open("/fifo", os.O_RDONLY | os.O_NONBLOCK))),
    # With no reader, a write end that got past the pea check fails ENXIO.
    "write_end": attempt(lambda: os.close(os.open("/fifo", os.O_WRONLY | os.O_NONBLOCK))),
})
'''


def test_fifo_read_end_needs_r_write_end_needs_w(peafs_mount, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "fifo", 0o666)
    m = peafs_mount(POLICY, root=root)
    assert run_py(m, "fifo-w", FIFO) == {"read_end": "EACCES", "write_end": "ENXIO"}
    assert run_py(m, "fifo-r", FIFO) == {"read_end": "OK", "write_end": "EACCES"}
    assert run_py(m, "nothing", FIFO) == {"read_end": "EACCES", "write_end": "EACCES"}
