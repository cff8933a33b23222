"""A recycled pid never inherits a dead process's pea.

PeaFS maps a request to a pea by the caller's pid. If it cached "pid P is in
pea A" and P exited, the next process to get P (in pea B, or in no pea at
all) would get A's rights. The pid is recycled on purpose: the test writes
P - 1 to /proc/sys/kernel/ns_last_pid of the host pid namespace (the one
FUSE reports pids in) just before the next fork; another process on the host
may take P first, so it retries, a bounded number of times.
"""

from __future__ import annotations

import json
import select
import subprocess

from helpers_attack import MARK, policy, popen_in_pea, py_cmd, results, run_py

POLICY = policy('''
[pea.a.files]
"/secret" = "r"

[pea.b.files]
"/other" = "r"
''')

FIRST = r'''
report({"pid": os.getpid(), "secret": try_read(MNT + "/secret")})
'''

# A long-lived process in pea b that forks one child per "go" line; the child
# reports its pid and what it can read.
SPAWNER = r'''
print("ready", flush=True)
while True:
    line = sys.stdin.readline()
    if line.strip() != "go":
        break
    pid = os.fork()
    if pid == 0:
        report({"pid": os.getpid(), "secret": try_read(MNT + "/secret"),
                "other": try_read(MNT + "/other")})
        os._exit(0)
    os.waitpid(pid, 0)
'''

TRIES = 200


def _next_pid_will_be(pid: int) -> None:
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(f"{pid - 1}\n")


def _readline(stream, timeout: float = 30) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "the spawner did not answer in time"
    return stream.readline()


def _stage(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "secret").write_text("SECRET-A")
    (root / "other").write_text("OTHER-B")
    return root


def _dead_pea_a_pid(m) -> int:
    first = run_py(m, "a", FIRST, enter=False)
    assert first["secret"] == "SECRET-A", first
    return first["pid"]


def test_recycled_pid_in_another_pea_gets_that_peas_rights(peafs_mount, tmp_path):
    m = peafs_mount(POLICY, root=_stage(tmp_path))
    pid = _dead_pea_a_pid(m)
    spawner = popen_in_pea(m, "b", py_cmd(m.mountpoint, SPAWNER, enter=False),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        assert _readline(spawner.stdout) == "ready\n"
        got = None
        for _ in range(TRIES):
            _next_pid_will_be(pid)
            spawner.stdin.write("go\n")
            spawner.stdin.flush()
            line = _readline(spawner.stdout)
            assert line.startswith(MARK), line
            got = json.loads(line[len(MARK):])
            if got["pid"] == pid:
                break
        assert got and got["pid"] == pid, f"pid {pid} was not recycled in {TRIES} tries"
        assert got == {"pid": pid, "secret": "EACCES", "other": "OTHER-B"}
    finally:
        spawner.stdin.close()
        try:
            spawner.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spawner.kill()
            spawner.wait(timeout=10)


def test_recycled_pid_outside_any_pea_gets_nothing(peafs_mount, tmp_path):
    m = peafs_mount(POLICY, root=_stage(tmp_path))
    pid = _dead_pea_a_pid(m)
    got = None
    for _ in range(TRIES):
        _next_pid_will_be(pid)
        proc = subprocess.run(py_cmd(m.mountpoint, FIRST, enter=False),
                              capture_output=True, text=True, timeout=60)
        got = results(proc)[0]
        if got["pid"] == pid:
            break
    assert got and got["pid"] == pid, f"pid {pid} was not recycled in {TRIES} tries"
    assert got == {"pid": pid, "secret": "EACCES"}
