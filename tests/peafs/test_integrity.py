"""Random-operation integrity: 100 000 operations through PeaFS, no difference.

One long-lived pod process (a script run through ``.run`` in a pea granted
"/" = "rw") drives a seeded random sequence of reads and writes at random
offsets (holes included), truncates, renames across a handful of files
(replacing existing ones), re-opens by name and stats by name, and checks
every result against an in-memory model (one bytearray per name). It stops at
the first divergence and reports it. Every few hundred operations it fsyncs
and drops the files' page cache (POSIX_FADV_DONTNEED), so reads go back to
the daemon instead of being served by the kernel from what it wrote.

The same script runs on a plain directory too: the final contents (SHA-256
per name) must agree between the two and with what the staging directory
holds on disk.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

PY = "/usr/bin/python3"
OPS = 100_000
SEED = 20261128
POLICY = '[pea.all.files]\n"/" = "rw"\n'

DRIVER = r'''
import hashlib, json, os, random, sys

top, seed, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
NAMES = [f"f{i}" for i in range(8)]
MAX_SIZE = 192 * 1024
rng = random.Random(seed)
model = {}          # name -> bytearray: what the file must hold
fds = {}            # name -> O_RDWR descriptor of the file now at that name

def path(n):
    return os.path.join(top, n)

def fail(i, kind, **detail):
    print(json.dumps({"diverged": True, "op": i, "kind": kind, **detail}), flush=True)
    sys.exit(0)

def create(n):
    fds[n] = os.open(path(n), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    model[n] = bytearray()

def drop_cache():
    for n, fd in fds.items():
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

def full_read(fd):
    out, off = bytearray(), 0
    while True:
        b = os.pread(fd, 1 << 16, off)
        if not b:
            return bytes(out)
        out += b
        off += len(b)

for n in NAMES[:5]:
    create(n)

counts = {}
for i in range(total):
    r = rng.random()
    existing = sorted(fds)
    n = rng.choice(existing)
    fd, m = fds[n], model[n]
    if r < 0.30:
        kind = "write"
        off = rng.randint(0, min(len(m) + 4096, MAX_SIZE))
        data = rng.randbytes(rng.randint(1, 8192))
        if os.pwrite(fd, data, off) != len(data):
            fail(i, kind, name=n, off=off, short=True)
        if off > len(m):
            m.extend(bytes(off - len(m)))
        m[off:off + len(data)] = data
    elif r < 0.60:
        kind = "read"
        off = rng.randint(0, len(m) + 100)
        size = rng.randint(1, 16384)
        got = os.pread(fd, size, off)
        if got != bytes(m[off:off + size]):
            fail(i, kind, name=n, off=off, size=size, got_len=len(got),
                 want_len=len(m[off:off + size]))
    elif r < 0.70:
        kind = "truncate"
        size = rng.randint(0, min(2 * len(m) + 1000, MAX_SIZE))
        os.ftruncate(fd, size)
        if size < len(m):
            del m[size:]
        else:
            m.extend(bytes(size - len(m)))
    elif r < 0.78:
        kind = "fstat"
        if os.fstat(fd).st_size != len(m):
            fail(i, kind, name=n, got=os.fstat(fd).st_size, want=len(m))
    elif r < 0.83:
        kind = "stat"
        if os.stat(path(n)).st_size != len(m):
            fail(i, kind, name=n, got=os.stat(path(n)).st_size, want=len(m))
    elif r < 0.93:
        kind = "rename"
        dst = rng.choice([x for x in NAMES if x != n])
        os.rename(path(n), path(dst))
        if dst in fds:                      # replaced: the old object is gone
            os.close(fds.pop(dst))
        fds[dst], model[dst] = fds.pop(n), model.pop(n)
        if len(fds) < 3:
            create(rng.choice([x for x in NAMES if x not in fds]))
    elif r < 0.96:
        kind = "create"
        free = [x for x in NAMES if x not in fds]
        if free:
            create(rng.choice(free))
    else:
        kind = "reopen"
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        fds[n] = fd = os.open(path(n), os.O_RDWR)
        got = full_read(fd)
        if got != bytes(m):
            fail(i, kind, name=n, got_len=len(got), want_len=len(m))
    counts[kind] = counts.get(kind, 0) + 1
    if i % 500 == 499:
        drop_cache()

drop_cache()
for n, fd in fds.items():
    if full_read(fd) != bytes(model[n]):
        fail(total, "final", name=n)
    os.close(fd)
listing = sorted(x for x in os.listdir(top))
if listing != sorted(model):
    fail(total, "listing", got=listing, want=sorted(model))
print(json.dumps({"diverged": False, "ops": total, "counts": counts,
                  "digests": {n: hashlib.sha256(bytes(m)).hexdigest()
                              for n, m in sorted(model.items())}}), flush=True)
'''


def _report(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _on_disk(top: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(top.iterdir())}


def _check(report: dict, top: Path) -> None:
    assert not report["diverged"], f"divergence from the model: {report}"
    assert report["ops"] == OPS
    assert sum(report["counts"].values()) == OPS
    assert report["digests"] == _on_disk(top)


def _native(tmp_path: Path) -> dict:
    top = tmp_path / "native"
    top.mkdir()
    proc = subprocess.run([PY, "-I", "-S", "-c", DRIVER, str(top), str(SEED), str(OPS)],
                          capture_output=True, text=True, timeout=300)
    report = _report(proc)
    _check(report, top)
    return report


@pytest.mark.parametrize("where", ["native", "peafs"])
def test_random_operations_match_the_model(where, peafs_mount, tmp_path):
    if where == "native":
        _native(tmp_path)
        return
    root = tmp_path / "root"
    (root / "work").mkdir(parents=True)
    m = peafs_mount(POLICY, root=root)
    proc = m.run([PY, "-I", "-S", "-c", DRIVER, f"{m.mountpoint}/work", str(SEED), str(OPS)],
                 "all", timeout=600)
    report = _report(proc)
    _check(report, root / "work")
    # Same seed, same operations: PeaFS ends where a plain directory ends.
    assert report["digests"] == _native(tmp_path)["digests"]
