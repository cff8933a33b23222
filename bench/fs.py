"""File-system workloads: a plain directory, bindfs (the C peer) and PeaFS, side by side.

``python -m bench fs [--quick]``. The same workloads run on three legs,
alternated inside one run (native, bindfs, peafs, native, ...), and each
figure is the median of the repetitions:

- stat of a tree of ~5 000 small files (warm: the tree was walked just before),
- read of the whole tree, cold (page cache, dentries and inodes dropped with
  ``echo 3 > /proc/sys/vm/drop_caches``) and warm (right after the cold read),
  each file opened, read and closed; and warm through descriptors opened
  beforehand (``read_open_warm``: the page cache alone, no open or close),
- untar of a tar of that tree into a fresh directory,
- create then delete of 10 000 small files,
- 10 000 appends of a 120-byte record to one file, then an fsync (a log),
- 1 GiB sequential write (with fsync) and cold sequential read,
- the latency of small warm reads (stat, open, read 4 KiB, close) alone and
  while two other processes write and fsync in a loop (``read_p99_idle``,
  ``read_p99_fsync``, the 99th percentile of one read, and the medians
  ``read_p50_*``). On the PeaFS leg the writers run in another pea: the
  figure says whether one pea's fsyncs hold up another pea's requests.

``--quick``: 1 000 files, 64 MiB, one repetition.

Each workload runs in a fresh worker process (this file run as a script) that
times itself, so process start-up and ``peafs run`` (user namespace, cgroup)
are not part of the figures. The PeaFS leg mounts a policy whose only pea has
``"/" = "rwx"`` and runs the worker in that pea as pod root, which is how a pod
process reaches its files; the other legs run the worker as host root. The
worker uses /usr/bin/python3 with -I -S on every leg: a pod user cannot
traverse /root, where the venv's interpreter lives, and the same interpreter
on every leg keeps the comparison fair.

Targets: metadata and small-file workloads within 2x of bindfs, warm reads
within 1.1x of native. A FUSE file system sees every open and release (that
is where PeaFS checks the pea), so ``read_tree_warm`` of small files is
dominated by two round trips a file, for bindfs as for PeaFS;
``read_open_warm`` is the warm read the kernel serves from its page cache,
which PeaFS keeps across opens (keep_cache).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

WORKER_PYTHON = "/usr/bin/python3"
POD_UID_BASE = 200000
CHUNK = 1 << 20  # 1 MiB per read()/write() for the sequential workloads
SMALL_FILE = b"x" * 100


# --------------------------------------------------------------------------
# The worker: runs one workload in the directory it is given, prints seconds.
# --------------------------------------------------------------------------

def _tree_files(top: str) -> list[str]:
    out = []
    stack = [top]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    out.append(e.path)
    return out


def _stat_tree(top: str) -> None:
    stack = [top]
    while stack:
        d = stack.pop()
        for name in os.listdir(d):
            p = os.path.join(d, name)
            st = os.lstat(p)
            if (st.st_mode & 0o170000) == 0o040000:
                stack.append(p)


def _read_all(paths: list[str]) -> int:
    total = 0
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            while True:
                b = os.read(fd, CHUNK)
                if not b:
                    break
                total += len(b)
        finally:
            os.close(fd)
    return total


def _read_held_open(paths: list[str]) -> float:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    try:
        t0 = time.perf_counter()
        for fd in fds:
            off = 0
            while True:
                b = os.pread(fd, CHUNK, off)
                if not b:
                    break
                off += len(b)
        return time.perf_counter() - t0
    finally:
        for fd in fds:
            os.close(fd)


def worker(workload: str, target: str, extra: list[str]) -> dict:
    """Run one workload on ``target``; return {"name": seconds, ...}."""
    t = time.perf_counter
    if workload == "stat":
        _stat_tree(target)  # warm-up: dentries and attributes cached
        t0 = t()
        _stat_tree(target)
        return {"stat_tree_warm": t() - t0}
    if workload == "read":
        # The parent dropped the caches just before starting this worker.
        t0 = t()
        paths = _tree_files(target)
        _read_all(paths)
        cold = t() - t0
        t0 = t()
        _read_all(paths)
        warm = t() - t0
        # The same data through descriptors opened beforehand (untimed): what
        # the kernel serves from its page cache without asking the file
        # system. "read_tree_warm" includes an open and a close per file,
        # each a round trip to any FUSE daemon.
        return {"read_tree_cold": cold, "read_tree_warm": warm,
                "read_open_warm": _read_held_open(paths)}
    if workload == "untar":
        tar, dest = extra
        os.mkdir(dest)
        t0 = t()
        subprocess.run(["tar", "-xf", tar, "-C", dest, "--no-same-owner"], check=True)
        took = t() - t0
        shutil.rmtree(dest)
        return {"untar": took}
    if workload == "create_delete":
        count = int(extra[0])
        d = os.path.join(target, "cd")
        os.mkdir(d)
        t0 = t()
        for i in range(count):
            fd = os.open(os.path.join(d, f"f{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, SMALL_FILE)
            os.close(fd)
        created = t() - t0
        t0 = t()
        for i in range(count):
            os.unlink(os.path.join(d, f"f{i}"))
        deleted = t() - t0
        os.rmdir(d)
        return {"create_small": created, "delete_small": deleted}
    if workload == "log_append":
        # A service's log: records of 120 bytes appended one write each (as
        # Postfix's postlogd writes its log), then one fsync.
        count = int(extra[0])
        record = b"x" * 119 + b"\n"
        fd = os.open(os.path.join(target, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            t0 = t()
            for _ in range(count):
                os.write(fd, record)
            os.fsync(fd)
            took = t() - t0
        finally:
            os.close(fd)
        os.unlink(os.path.join(target, "log"))
        return {"log_append": took}
    if workload == "seq_write":
        size = int(extra[0])
        buf = os.urandom(CHUNK)
        t0 = t()
        fd = os.open(os.path.join(target, "big"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(size // CHUNK):
                os.write(fd, buf)
            os.fsync(fd)
        finally:
            os.close(fd)
        return {"seq_write": t() - t0}
    if workload == "fsync_writer":
        # Until killed: 64 KiB written and fsync'ed, over an 8 MiB file.
        fd = os.open(os.path.join(target, f"sync{os.getpid()}"),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        buf = os.urandom(64 << 10)
        print("writing", flush=True)
        off = 0
        while True:
            os.pwrite(fd, buf, off)
            os.fsync(fd)
            off = (off + len(buf)) % (8 << 20)
    if workload == "latency":
        count, tag = int(extra[0]), extra[1]
        paths = _tree_files(target)[:200]
        _read_all(paths)  # warm
        lat = []
        for i in range(count):
            p = paths[i % len(paths)]
            t0 = t()
            os.stat(p)
            fd = os.open(p, os.O_RDONLY)
            os.read(fd, 4096)
            os.close(fd)
            lat.append(t() - t0)
        lat.sort()
        return {f"read_p50_{tag}": lat[len(lat) // 2],
                f"read_p99_{tag}": lat[min(len(lat) - 1, len(lat) * 99 // 100)]}
    if workload == "seq_read":
        t0 = t()
        n = _read_all([os.path.join(target, "big")])
        took = t() - t0
        os.unlink(os.path.join(target, "big"))
        if n != int(extra[0]):
            raise RuntimeError(f"read {n} bytes, expected {extra[0]}")
        return {"seq_read_cold": took}
    raise ValueError(f"unknown workload {workload}")


# --------------------------------------------------------------------------
# The driver.
# --------------------------------------------------------------------------

def _drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def _make_tree(top: Path, files: int) -> None:
    """~``files`` files of 1-16 KiB in directories of 100, two levels deep."""
    rng = __import__("random").Random(1234)
    per_dir = 100
    for i in range(files):
        d = top / f"d{i // (per_dir * 10)}" / f"s{(i // per_dir) % 10}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(rng.randbytes(rng.randint(1, 16) * 1024))


def _peafs_cli() -> list[str]:
    script = Path(sys.executable).parent / "peafs"
    if script.exists():
        return [str(script)]
    found = shutil.which("peafs")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from peafs.cli import main; sys.exit(main())"]


def _common():
    # Imported when the driver needs it: the worker runs this file as a
    # script (python3 -I -S), where the bench package is not importable.
    from bench import common  # noqa: PLC0415

    return common


def _unmount(path: Path, proc: subprocess.Popen | None, peafs: bool) -> None:
    _common().unmount(path, proc, _peafs_cli() + ["umount"] if peafs else None)


class Legs:
    """The three places the workloads run, set up and torn down together."""

    def __init__(self, base: Path, files: int, legs: tuple[str, ...]):
        self.base = base
        self.legs = legs
        self.pod = f"benchfs-{os.getpid()}"
        self.dirs = {
            "native": base / "native",
            "bindfs": base / "bindfs-mnt",
            "peafs": base / "peafs-mnt",
        }
        self.bindfs_src = base / "bindfs-src"
        self.staging = base / "peafs-root"
        self.policy = base / "policy.toml"
        self.procs: dict[str, subprocess.Popen] = {}
        self.files = files

    def __enter__(self):
        for p in (self.dirs["native"], self.bindfs_src, self.staging,
                  self.dirs["bindfs"], self.dirs["peafs"]):
            p.mkdir()
        for p in (self.dirs["native"], self.bindfs_src, self.staging):
            _make_tree(p / "tree", self.files)
        with tarfile.open(self.base / "tree.tar", "w") as tar:
            tar.add(self.dirs["native"] / "tree", arcname="tree")
        os.chmod(self.base / "tree.tar", 0o644)
        self.policy.write_text(
            f'[pod]\nname = "{self.pod}"\nroot = "{self.staging}"\n'
            f"uid_map = [[0, {POD_UID_BASE}, 65536]]\ngid_map = [[0, {POD_UID_BASE}, 65536]]\n"
            'default_pea = "bench"\n\n[pea.bench.files]\n"/" = "rwx"\n'
            '\n[pea.writer.files]\n"/" = "rwx"\n'
        )
        try:
            self.procs["bindfs"] = _common().bindfs(self.bindfs_src, self.dirs["bindfs"])
            if "peafs" in self.legs:
                self.procs["peafs"] = subprocess.Popen(
                    _peafs_cli() + ["mount", str(self.staging), str(self.dirs["peafs"]),
                                    "--policy", str(self.policy), "--foreground"])
                _common().wait_mounted(self.dirs["peafs"], self.procs["peafs"])
        except BaseException:
            self.__exit__(None, None, None)   # what did mount is unmounted
            raise
        return self

    def __exit__(self, *exc):
        for leg in ("bindfs", "peafs"):
            _unmount(self.dirs[leg], self.procs.get(leg), peafs=(leg == "peafs"))
        return False

    def _cmd(self, leg: str, workload: str, target: str, extra: list[str],
             pea: str = "bench") -> list[str]:
        cmd = [WORKER_PYTHON, "-I", "-S", str(Path(__file__).resolve()),
               "--worker", workload, target, *extra]
        if leg == "peafs":
            cmd = _peafs_cli() + ["run", str(self.dirs["peafs"]), "--pea", pea, "--"] + cmd
        return cmd

    def run_beside_writers(self, leg: str, writers: int, target: str, extra: list[str]) -> dict:
        """The latency workload while ``writers`` fsync loops run (in the
        PeaFS leg: in pea "writer", the reader in pea "bench")."""
        procs = []
        try:
            for _ in range(writers):
                # A session of its own: the kill reaches the worker behind
                # `peafs run` too (its child, in the same process group).
                procs.append(subprocess.Popen(
                    self._cmd(leg, "fsync_writer", str(self.dirs[leg]), [], pea="writer"),
                    stdout=subprocess.PIPE, text=True, start_new_session=True))
            for p in procs:
                if p.stdout.readline().strip() != "writing":
                    raise RuntimeError(f"{leg} fsync writer did not start")
            return self.run(leg, "latency", target, extra)
        finally:
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for p in procs:
                p.wait(timeout=60)
                p.stdout.close()
            for f in Path(self.dirs[leg]).glob("sync*"):
                f.unlink()

    def run(self, leg: str, workload: str, target: str, extra: list[str]) -> dict:
        cmd = self._cmd(leg, workload, target, extra)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"{leg} {workload} failed ({r.returncode}): {r.stderr.strip()}")
        return json.loads(r.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    quick = getattr(args, "quick", False)
    files = 1000 if quick else 5000
    small = 1000 if quick else 10000
    size = (64 if quick else 1024) << 20
    reps = 1 if quick else 3
    latency_reads = 1000 if quick else 5000
    # PEAPOD_BENCH_FS_LEGS=native,bindfs: run without PeaFS (to check the harness itself).
    legs_order = tuple(os.environ.get("PEAPOD_BENCH_FS_LEGS", "native,bindfs,peafs").split(","))
    times: dict[str, dict[str, list[float]]] = {}

    base = Path(tempfile.mkdtemp(prefix="bench-fs-", dir="/var/tmp"))
    # Pod users (host uid 200000+) must traverse it and read the tar.
    os.chmod(base, 0o755)
    try:
        with Legs(base, files, legs_order) as legs:
            for leg in ("native", "bindfs"):
                os.chmod(legs.dirs[leg] if leg == "native" else legs.bindfs_src, 0o777)
            os.chmod(legs.staging, 0o777)
            for _ in range(reps):
                for workload in ("stat", "read", "untar", "create_delete", "log_append",
                                 "seq_write", "seq_read"):
                    for leg in legs_order:
                        d = str(legs.dirs[leg])
                        extra: list[str] = []
                        target = os.path.join(d, "tree")
                        if workload == "untar":
                            extra = [str(base / "tree.tar"), os.path.join(d, "untarred")]
                        elif workload in ("create_delete", "log_append"):
                            target, extra = d, [str(small)]
                        elif workload in ("seq_write", "seq_read"):
                            target, extra = d, [str(size)]
                        if workload in ("read", "seq_read"):
                            _drop_caches()
                        for name, secs in legs.run(leg, workload, target, extra).items():
                            times.setdefault(name, {}).setdefault(leg, []).append(secs)
                for leg in legs_order:
                    target = os.path.join(str(legs.dirs[leg]), "tree")
                    got = legs.run(leg, "latency", target, [str(latency_reads), "idle"])
                    got.update(legs.run_beside_writers(leg, 2, target,
                                                       [str(latency_reads), "fsync"]))
                    for name, secs in got.items():
                        times.setdefault(name, {}).setdefault(leg, []).append(secs)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    rows = []
    for name, per_leg in times.items():
        med = {leg: statistics.median(per_leg[leg]) for leg in legs_order}
        row = {"workload": name}
        row.update({f"{leg}_s": med[leg] for leg in legs_order})
        for a, b in (("peafs", "bindfs"), ("peafs", "native"), ("bindfs", "native")):
            if a in med and b in med:
                row[f"{a}/{b}"] = med[a] / med[b]
        rows.append(row)
    return {
        "rows": rows,
        "params": {"tree_files": files, "small_files": small, "seq_bytes": size,
                   "repetitions": reps},
        "raw": times,
    }


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3], sys.argv[4:])))
        sys.exit(0)
    print("usage: python -m bench fs [--quick]", file=sys.stderr)
    sys.exit(2)
