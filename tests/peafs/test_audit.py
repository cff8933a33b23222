"""Audit log and complain mode: every refusal is one JSON line; a pea with
complain = true is logged and let through."""

from __future__ import annotations

import json
import select
import subprocess
import time

from peafs_support import peafs_cmd
from helpers_peafs import in_subprocess_as_host, run_snippet

POLICY = r'''
[pea.strict.files]
"/" = "r"
"/ro/" = "r"

[pea.learn]
complain = true

[pea.learn.files]
"/" = "r"
"/ro/" = "r"
'''

FIELDS = {"time", "pod", "pea", "pid", "uid", "operation", "path", "need", "rule", "kind",
          "complain"}


def _mount(peafs_mount):
    m = peafs_mount(POLICY)
    (m.root / "ro").mkdir()
    (m.root / "ro" / "f").write_text("orig")
    (m.root / "ro" / "f").chmod(0o666)     # Unix bits let anyone write: the pea decides
    return m


def test_refusal_is_one_json_line(peafs_mount):
    m = _mount(peafs_mount)
    got = run_snippet(m, "strict", r'''
out = {"pid": os.getpid(), "write": E(opens, "ro/f", os.O_WRONLY), "read": E(read, "ro/f")}
''', 1234)
    assert got["write"] == "EACCES" and got["read"] == "OK"
    entries = m.audit()
    assert len(entries) == 1, entries
    e = entries[0]
    assert set(e) == FIELDS
    assert {k: e[k] for k in FIELDS - {"time"}} == {
        "pod": m.pod, "pea": "strict", "pid": got["pid"], "uid": 1234, "operation": "open",
        "path": "/ro/f", "need": "w", "rule": "/ro/", "kind": "directory", "complain": False}
    assert e["time"].endswith("+00:00")
    # `peafs audit` prints the same lines.
    r = subprocess.run(peafs_cmd("audit", m.mountpoint), capture_output=True, text=True,
                       timeout=30, env=m.env())
    assert r.returncode == 0
    assert [json.loads(line) for line in r.stdout.splitlines()] == entries


def test_each_refused_operation_is_logged(peafs_mount):
    m = _mount(peafs_mount)
    run_snippet(m, "strict", r'''
out = [E(os.unlink, "ro/f"), E(os.mkdir, "ro/d"), E(os.chmod, "ro/f", 0o600)]
''')
    ops = [(e["operation"], e["path"], e["need"]) for e in m.audit()]
    assert ops == [("unlink", "/ro", "w"), ("mkdir", "/ro", "w"), ("setattr", "/ro/f", "w")]


def test_complain_mode_logs_and_allows(peafs_mount):
    m = _mount(peafs_mount)
    got = run_snippet(m, "learn", r'''
write("ro/f", b"changed")
out = {"read": read("ro/f"), "mkdir": E(os.mkdir, "ro/d")}
''')
    assert got == {"read": "changed", "mkdir": "OK"}
    assert (m.root / "ro" / "f").read_text() == "changed"
    entries = m.audit()
    assert entries and all(e["complain"] is True and e["pea"] == "learn" for e in entries)
    assert ("open", "/ro/f", "w") in [(e["operation"], e["path"], e["need"]) for e in entries]
    assert ("mkdir", "/ro", "w") in [(e["operation"], e["path"], e["need"]) for e in entries]


def test_complain_mode_lets_fifos_and_sockets_be_used(peafs_mount):
    """FIFOs and sockets are opened by the kernel from the attributes PeaFS
    answers per pea; in complain mode those were the refusing ones, so a
    FIFO made by a complain pea was unusable (EACCES): Postfix's master
    exited at once under a learning policy. Now the pea gets the true
    attributes and the log gets what it would have been refused."""
    m = _mount(peafs_mount)
    (m.root / "spool").mkdir(mode=0o777)
    got = run_snippet(m, "learn", r'''
import socket
os.mkfifo("spool/fifo", 0o600)
fd = os.open("spool/fifo", os.O_RDWR | os.O_NONBLOCK)
os.write(fd, b"x"); os.close(fd)
srv = socket.socket(socket.AF_UNIX); srv.bind("spool/sock"); srv.listen(1)
c = socket.socket(socket.AF_UNIX)
out = {"connect": E(c.connect, "spool/sock")}
''')
    assert got == {"connect": "OK"}
    seen = {(e["operation"], e["path"], e["need"], e["complain"]) for e in m.audit()}
    assert ("open", "/spool/fifo", "w", True) in seen, seen
    assert ("connect", "/spool/sock", "w", True) in seen, seen


def test_barrier_refusals_are_logged(peafs_mount):
    m = _mount(peafs_mount)
    mp = str(m.mountpoint)
    got = in_subprocess_as_host(f'out = E(listdir, {mp!r})')
    assert got == "EACCES"
    e = m.audit()[-1]
    assert e["pea"] is None and e["kind"] == "barrier" and e["uid"] is None


def test_audit_follow(peafs_mount):
    m = _mount(peafs_mount)
    p = subprocess.Popen(peafs_cmd("audit", m.mountpoint, "--follow"), stdout=subprocess.PIPE,
                         text=True, env=m.env())
    try:
        run_snippet(m, "strict", 'out = E(opens, "ro/f", os.O_WRONLY)')
        deadline = time.monotonic() + 20
        line = ""
        while time.monotonic() < deadline and not line:
            ready, _, _ = select.select([p.stdout], [], [], 0.5)
            if ready:
                line = p.stdout.readline()
        assert json.loads(line)["path"] == "/ro/f"
    finally:
        p.kill()
        p.wait(timeout=10)


def test_an_audit_flood_is_bounded_and_every_refusal_is_accounted(peafs_mount):
    # 20 000 identical refusals and 2 000 distinct ones, as fast as a pea can
    # make them: a few hundred lines, and the counts add up exactly
    # (first line + "repeated", and "dropped" for what the rate limit left out).
    m = _mount(peafs_mount)
    for i in range(2000):
        (m.root / "ro" / f"g{i}").write_text("")
        (m.root / "ro" / f"g{i}").chmod(0o666)
    got = run_snippet(m, "strict", r'''
n = 0
for i in range(20000):
    n += E(opens, "ro/f", os.O_WRONLY) == "EACCES"
for i in range(2000):
    n += E(opens, f"ro/g{i}", os.O_WRONLY) == "EACCES"
out = n
''')
    assert got == 22000
    m.umount()                      # closing the log writes the pending counts
    lines = m.audit()
    assert 0 < len(lines) < 600, len(lines)
    assert (m.state_dir / "audit.log").stat().st_size < 200_000
    total = sum(e["dropped"] if "dropped" in e else e.get("repeated", 1) for e in lines)
    assert total == 22000
    # The 20 000 identical ones: a first line and a "repeated" count per
    # 10 s window (how many windows the flood spans depends on the machine).
    first = [e for e in lines if e.get("path") == "/ro/f"]
    assert first[0].get("repeated") is None and any(e.get("repeated") for e in first), first
    assert len(first) <= 20, first
    assert any("dropped" in e and e["pea"] == "strict" for e in lines)
