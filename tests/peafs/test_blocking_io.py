"""A staging file system that blocks one pea's I/O must not stop the other peas.

The PeaFS daemon serves every FUSE request of a pod from one trio loop. If a
handler makes a blocking system call there (fsync, a read or write of a slow
file, a directory listing) on a staging file system that takes its time (a
network file system, a disk that stalls, a FUSE file system below us), every
other request of every pea waits behind it: one pea can freeze the whole pod.

Here the staging directory has a slow file system mounted at /slow
(tests/peafs/slowfs.py, its own process): its fsync, read, write and listing
of /slow/dir wait while a gate file exists. Pea ``writer`` starts one of those
operations through PeaFS and is held; pea ``reader`` then stats, opens, reads
and lists ordinary staging files, and must finish while the writer is still
held. The gate is then opened and the writer's operation must succeed.
No timing is asserted: only "done while the other was still blocked".
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from helpers_attack import PY, popen_in_pea
from slowfs import DATA

SLOWFS = Path(__file__).with_name("slowfs.py")
POLICY = '[pea.writer.files]\n"/" = "rwx"\n\n[pea.reader.files]\n"/" = "rwx"\n'
WAIT = 20            # seconds: for slowfs to start, the op to reach it, the reader
READ_SIZE = 128 * 1024
WRITE_SIZE = 64 * 1024

# What pea writer does, through PeaFS, to the slow file system (cwd: the mount).
WRITERS = {
    "fsync": 'fd = os.open("slow/small", os.O_WRONLY)\n'
             'out = os.fsync(fd)\n',
    "read": f'fd = os.open("slow/data", os.O_RDONLY)\n'
            f'buf = b""\n'
            f'while len(buf) < {READ_SIZE}:\n'
            f'    chunk = os.pread(fd, {READ_SIZE} - len(buf), len(buf))\n'
            f'    if not chunk: break\n'
            f'    buf += chunk\n'
            f'out = [len(buf), zlib.crc32(buf)]\n',
    "write": f'fd = os.open("slow/data", os.O_WRONLY)\n'
             f'out = os.pwrite(fd, b"w" * {WRITE_SIZE}, 0)\n',
    "readdir": 'out = sorted(os.listdir("slow/dir"))\n',
}


def expected_writer(op: str):
    if op == "read":
        data = DATA[:READ_SIZE]
        return [len(data), zlib.crc32(data)]
    return {"fsync": None, "write": WRITE_SIZE, "readdir": ["a", "b"]}[op]


READER = '''
st = os.stat("plain/hello.txt")
fd = os.open("plain/hello.txt", os.O_RDONLY)
data = os.read(fd, 4096).decode()
os.close(fd)
out = {"size": st.st_size, "data": data, "list": sorted(os.listdir("plain"))}
'''
HELLO = "hello from the ordinary staging directory\n"


def snippet(body: str) -> list[str]:
    code = "import os, sys, json, zlib\n" + body + "print('@@' + json.dumps(out))\n"
    return [PY, "-I", "-S", "-c", code]


def result(path: Path):
    lines = [x for x in path.read_text().splitlines() if x.startswith("@@")]
    return json.loads(lines[0][2:]) if len(lines) == 1 else None


def mounted(point: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(point) for line in f)


def wait_for(path: Path, proc: subprocess.Popen, what: str, log: Path) -> None:
    """Bounded polling for a file slowfs makes (the only waiting by sleep here)."""
    deadline = time.monotonic() + WAIT
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what}: {path.name} never appeared "
                                 f"(process exit status {proc.poll()}):\n"
                                 f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.02)


@pytest.fixture
def slow_staging(tmp_path):
    """A staging root with slowfs mounted at <root>/slow and ordinary files in
    <root>/plain. Requested before peafs_mount, so torn down after PeaFS."""
    root, gates = tmp_path / "staging", tmp_path / "gates"
    for d in (root, root / "slow", root / "plain", gates):
        d.mkdir()
        d.chmod(0o755)
    (root / "plain" / "hello.txt").write_text(HELLO)
    (root / "plain" / "other.txt").write_text("other\n")
    log = open(tmp_path / "slowfs.log", "wb")
    proc = subprocess.Popen([sys.executable, str(SLOWFS), str(root / "slow"), str(gates)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(gates / "ready", proc, "slowfs mount", tmp_path / "slowfs.log")
        yield root, gates
    finally:
        for gate in gates.glob("hold-*"):
            gate.unlink()
        subprocess.run(["fusermount3", "-u", "-z", str(root / "slow")],
                       capture_output=True, timeout=30)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        assert not mounted(root / "slow"), "slowfs is still mounted"


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize("op", ["fsync", "read", "write", "readdir"])
def test_blocked_op_does_not_stop_another_pea(slow_staging, peafs_mount, tmp_path, op):
    root, gates = slow_staging
    m = peafs_mount(POLICY, root=root)
    hold, started = gates / f"hold-{op}", gates / f"started-{op}"
    writer_out, reader_out = tmp_path / "writer.out", tmp_path / "reader.out"
    writer = reader = None
    hold.touch()
    try:
        with open(writer_out, "w") as w:
            writer = popen_in_pea(m, "writer", snippet(WRITERS[op]), stdout=w,
                                  stderr=subprocess.STDOUT)
        wait_for(started, writer, f"writer's {op} on /slow", writer_out)

        with open(reader_out, "w") as r:
            reader = popen_in_pea(m, "reader", snippet(READER), stdout=r,
                                  stderr=subprocess.STDOUT)
        try:
            reader.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            pass
        if reader.returncode is None:
            pytest.fail(f"pea reader's stat/open/read/listdir of ordinary staging files "
                        f"did not finish within {WAIT} s while pea writer's {op} was held "
                        f"on the staging file system: the daemon serves nothing while one "
                        f"request blocks")
        # The reader finished *while* the writer was still held.
        assert started.exists() and hold.exists()
        assert writer.poll() is None, (f"writer ended before its {op} was released: "
                                       f"{writer_out.read_text()[-2000:]}")
        assert reader.returncode == 0, reader_out.read_text()[-3000:]
        assert result(reader_out) == {"size": len(HELLO), "data": HELLO,
                                      "list": ["hello.txt", "other.txt"]}

        hold.unlink()
        writer.wait(timeout=WAIT + 10)
        assert writer.returncode == 0, writer_out.read_text()[-3000:]
        assert result(writer_out) == expected_writer(op), writer_out.read_text()[-3000:]
    finally:
        if hold.exists():
            hold.unlink()
        stop(reader)
        stop(writer)


def _thread_names(pid: int) -> list[str]:
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except FileNotFoundError:
            pass                      # the thread ended meanwhile
    return names


def test_fsync_waits_in_a_thread_of_its_own_not_in_python(slow_staging, peafs_mount, tmp_path):
    """An fsync is answered by a C thread of PeaFS (peafs/fuse_fsync.c), not
    by a Python worker: a Python worker waited for the GIL before and after
    the call, ~2 ms per fsync of Postfix's queue files. While pea writer's
    fsync is held on the slow file system, the call is in a "peafs-fsync"
    thread and no Python worker ("fsync from pyfuse-...") exists, and pea
    reader's fsync of an ordinary file is answered meanwhile."""
    root, gates = slow_staging
    m = peafs_mount(POLICY, root=root)
    hold, started = gates / "hold-fsync", gates / "started-fsync"
    writer_out, reader_out = tmp_path / "writer.out", tmp_path / "reader.out"
    writer = reader = None
    hold.touch()
    try:
        with open(writer_out, "w") as w:
            writer = popen_in_pea(m, "writer", snippet(WRITERS["fsync"]), stdout=w,
                                  stderr=subprocess.STDOUT)
        wait_for(started, writer, "writer's fsync on /slow", writer_out)
        names = _thread_names(m.daemon_pid())
        assert "peafs-fsync" in names, names
        assert not [n for n in names if n.startswith("fsync from")], names
        # Another pea's fsync is not queued behind the held one: it gets a
        # thread of its own and is answered while the first still waits.
        with open(reader_out, "w") as r:
            reader = popen_in_pea(m, "reader", snippet(
                'fd = os.open("plain/other.txt", os.O_WRONLY)\n'
                'out = os.fsync(fd)\n'), stdout=r, stderr=subprocess.STDOUT)
        try:
            reader.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pea reader's fsync of an ordinary file did not finish within "
                        f"{WAIT} s while pea writer's fsync was held: fsyncs queue "
                        f"behind one another")
        assert writer.poll() is None and hold.exists()
        assert reader.returncode == 0, reader_out.read_text()[-3000:]
        assert _thread_names(m.daemon_pid()).count("peafs-fsync") >= 2
        hold.unlink()
        writer.wait(timeout=WAIT + 10)
        assert writer.returncode == 0, writer_out.read_text()[-3000:]
        assert result(writer_out) == expected_writer("fsync")
    finally:
        if hold.exists():
            hold.unlink()
        stop(reader)
        stop(writer)
