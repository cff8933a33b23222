"""One pea must not exhaust the PeaFS daemon's descriptors for every pea.

The daemon's RLIMIT_NOFILE is a hard 20000. It used to hold one O_PATH
descriptor per object the kernel had looked up, and one real descriptor per
open file and directory, with no per-pea account. So a pea that may write
one directory could create (and stat, keeping them in the kernel's cache)
20 000 files, or hold thousands of files open, and from then on every
request that needs a descriptor failed with EMFILE, for the victim pea as
much as for the attacker, until the daemon restarted.

The contract checked here:
- objects the kernel knows do not pin a descriptor each (a kernel file
  handle per object, a bounded cache of O_PATH descriptors): 20 500 files
  created and stat-ed by one pea all succeed, and the daemon's descriptor
  count stays far below its limit;
- open files and directories are budgeted per pea: past its share (several
  thousand, less than 20000 with two peas) a pea's open() fails with ENFILE,
  the other pea keeps working, and the share comes back on release.
"""

from __future__ import annotations

import errno
import json
import os
import select
import subprocess

from helpers_attack import MARK, policy, popen_in_pea, py_cmd, run_py
from peafs_support import kill_pea

POLICY = policy('''
[pea.attacker.files]
"/" = "r"
"/spool" = "rw"
"/spool/" = "rw"

[pea.victim.files]
"/" = "r"
"/home" = "rw"
"/home/" = "rw"
''')

# Attack snippets run with enter=False (the pivot would hide lib-dynload,
# where `resource` lives) and with the mount point as cwd: relative paths.

CREATE_MANY = r'''
os.chdir(MNT)
n, made, first = int(ARGS[0]), 0, None
for i in range(n):
    try:
        os.close(os.open(f"spool/c{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        made += 1
    except OSError as e:
        first = first or errno.errorcode.get(e.errno, str(e.errno))
stat_ok = sum(attempt(os.stat, f"spool/c{i}") == "OK" for i in range(n))
report({"made": made, "first_error": first, "stat_ok": stat_ok})
'''

VICTIM = r'''
os.chdir(MNT)
out = {"read": try_read("home/letter"),
       "create": attempt(lambda: os.close(os.open("home/new", os.O_WRONLY | os.O_CREAT, 0o644)))}
try:
    out["list"] = sorted(os.listdir("home"))
except OSError as e:
    out["list"] = errno.errorcode.get(e.errno, str(e.errno))
out["opens"] = {}
for i in range(int(ARGS[0])):
    r = attempt(lambda: os.close(os.open(f"home/h{i}", os.O_RDONLY)))
    out["opens"][r] = out["opens"].get(r, 0) + 1
report(out)
'''

# Opens up to ARGS[0] descriptors (or its own hard limit, less a margin) on
# spool/f0..f999, round robin, keeps them and waits for a line on stdin.
HOLD_OPEN = r'''
import resource
os.chdir(MNT)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
want = min(int(ARGS[0]), hard - 64)
fds, err = [], None
while len(fds) < want:
    try:
        fds.append(os.open(f"spool/f{len(fds) % 1000}", os.O_RDONLY))
    except OSError as e:
        err = errno.errorcode.get(e.errno, str(e.errno))
        break
report({"count": len(fds), "errno": err, "hard": hard})
sys.stdin.readline()
'''

# A fresh attacker process after the others are gone. Releases of a dead
# process's files reach the daemon as background requests and may trail a new
# open; retry for a bounded while instead of asserting on timing.
OPEN_AGAIN = r'''
os.chdir(MNT)
first = last = attempt(lambda: os.close(os.open("spool/f0", os.O_RDONLY)))
deadline = time.monotonic() + 30
while last != "OK" and time.monotonic() < deadline:
    time.sleep(0.2)
    last = attempt(lambda: os.close(os.open("spool/f0", os.O_RDONLY)))
report({"first": first, "last": last})
'''

HOLD_TARGET = 19500


def _staging(tmp_path, spool_files: int = 0, home_files: int = 0):
    root = tmp_path / "root"
    (root / "spool").mkdir(parents=True)
    (root / "home").mkdir()
    (root / "home" / "letter").write_text("dear victim")
    for i in range(spool_files):
        (root / "spool" / f"f{i}").write_text("s")
    for i in range(home_files):
        (root / "home" / f"h{i}").write_text("h")
    return root


def _daemon_fds(m) -> int:
    return len(os.listdir(f"/proc/{m.daemon_pid()}/fd"))


def test_twenty_thousand_files_in_one_pea_leave_another_pea_working(peafs_mount, tmp_path):
    m = peafs_mount(POLICY, root=_staging(tmp_path))
    attack = run_py(m, "attacker", CREATE_MANY, 20500, enter=False, timeout=150)
    # The attacker's 20 500 entries are still in the kernel's cache now.
    fds_after_attack = _daemon_fds(m)
    victim = run_py(m, "victim", VICTIM, 0, enter=False, timeout=60)
    assert {"attack": attack, "victim": victim} == {
        "attack": {"made": 20500, "first_error": None, "stat_ok": 20500},
        "victim": {"read": "dear victim", "create": "OK",
                   "list": ["letter", "new"], "opens": {}},
    }
    assert fds_after_attack < 12000, f"daemon holds {fds_after_attack} descriptors"
    assert len(os.listdir(m.root / "spool")) == 20500


def _read_report(proc: subprocess.Popen, timeout: float = 120) -> dict | None:
    """The attacker's report line (None if it died or stayed silent)."""
    buf = b""
    fd = proc.stdout.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        buf += chunk
        for line in buf.decode(errors="replace").splitlines():
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])


def test_a_pea_holding_files_open_cannot_starve_another(peafs_mount, tmp_path):
    m = peafs_mount(POLICY, root=_staging(tmp_path, spool_files=1000, home_files=200))
    holders: list[subprocess.Popen] = []
    try:
        total, failure, reports = 0, None, []
        # One process suffices when the pea's hard NOFILE limit is high; if
        # it is low, several in the same pea, each holding up to its limit.
        while total < HOLD_TARGET and failure is None and len(holders) < 64:
            p = popen_in_pea(m, "attacker",
                             py_cmd(m.mountpoint, HOLD_OPEN, HOLD_TARGET - total, enter=False),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            holders.append(p)
            got = _read_report(p)
            assert got is not None, f"attacker {len(holders)} gave no report"
            reports.append(got)
            total += got["count"]
            failure = got["errno"]
        # Every holder is still alive and holding its descriptors here.
        victim = run_py(m, "victim", VICTIM, 200, enter=False, timeout=60)
        fds_while_held = _daemon_fds(m)
        assert {"failure": failure, "victim": victim} == {
            "failure": errno.errorcode[errno.ENFILE],
            "victim": {"read": "dear victim", "create": "OK",
                       "list": sorted(["letter", "new"] + [f"h{i}" for i in range(200)]),
                       "opens": {"OK": 200}},
        }, f"attacker processes reported {reports}, {total} opens in all"
        # The share: thousands (normal services never meet it), not everything.
        assert 2000 <= total < 20000, (total, reports)
        assert fds_while_held < 20000

        for p in holders:                    # let the attackers exit normally
            p.stdin.close()
        for p in holders:
            p.wait(timeout=60)
        again = run_py(m, "attacker", OPEN_AGAIN, enter=False, timeout=60)
        assert again["last"] == "OK", again
    finally:
        kill_pea(m.pod, "attacker")             # the pod processes themselves ...
        for p in holders:                    # ... and their `peafs run` parents
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
